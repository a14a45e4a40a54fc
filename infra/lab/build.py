"""Build vcsim from Debian's govmomi sources with vmferry's patches, once per input set.

Debian ships the simulator library but no vcsim binary, and this machine has no Go module proxy, so the
build runs in GOPATH mode. A patched copy of the simulator package sits in an overlay GOPATH entry listed
before /usr/share/gocode; Go picks the first entry that holds an import path, so only that package is
replaced and everything else still comes from Debian.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from infra.lab.paths import cache_dir

GOCODE = Path("/usr/share/gocode")
GOVMOMI_IMPORT = "github.com/vmware/govmomi"
VCSIM_SRC_DIR = Path(__file__).resolve().parent / "vcsim"
MAIN_GO = VCSIM_SRC_DIR / "main.go"
# Applied in name order: snapshot fixes first, then CBT, paging and real disk extents on top.
PATCHES = sorted(VCSIM_SRC_DIR.glob("*.patch"), key=lambda p: (p.name != "snapshot-fixes.patch", p.name))
BINARY_NAME = "vmferry-vcsim"


class VcsimBuildError(RuntimeError):
    """The vcsim binary could not be built (missing toolchain, patch not applying, compile error)."""


def _run(argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    try:
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise VcsimBuildError(f"{argv[0]} not found; run infra/lab/install.sh") from exc
    if proc.returncode != 0:
        raise VcsimBuildError(
            f"{' '.join(argv)} failed with exit code {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc.stdout


def _upstream_simulator_dir() -> Path:
    path = GOCODE / "src" / GOVMOMI_IMPORT / "simulator"
    if not path.is_dir():
        raise VcsimBuildError(f"{path} is missing; install golang-github-vmware-govmomi-dev (infra/lab/install.sh)")
    return path


def _tree_digest(root: Path) -> str:
    """Content hash of the Debian simulator sources, so a package upgrade invalidates the cached binary."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def build_key() -> str:
    """Hash of all the binary depends on: our main.go and patch, the Go toolchain, Debian's sources."""
    digest = hashlib.sha256()
    digest.update(MAIN_GO.read_bytes())
    for patch in PATCHES:
        digest.update(patch.name.encode())
        digest.update(patch.read_bytes())
    digest.update(_run(["go", "version"]).encode())
    digest.update(_tree_digest(_upstream_simulator_dir()).encode())
    return digest.hexdigest()[:16]


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    # Parallel test sessions or CLI calls would otherwise build the same binary twice at ~40 s each.
    with lock_path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_overlay(gopath: Path) -> Path:
    """Make a GOPATH overlay holding the patched simulator package; return our main package's dir."""
    upstream = _upstream_simulator_dir()
    govmomi = gopath / "src" / GOVMOMI_IMPORT
    govmomi.mkdir(parents=True)
    # GOPATH mode resolves an import path in the first entry where its directory exists, so an overlay
    # govmomi/ holding only simulator/ would hide Debian's root package and every sibling. Link the
    # siblings back and copy only the package we patch.
    for entry in upstream.parent.iterdir():
        if entry.name != "simulator":
            (govmomi / entry.name).symlink_to(entry)
    shutil.copytree(upstream, govmomi / "simulator", symlinks=False)
    # --forward and --batch make a patch that is already applied or does not match an error, never a prompt;
    # --fuzz=0 refuses hunks whose context changed (a newer govmomi must be looked at, not patched blindly);
    # --no-backup-if-mismatch keeps .orig files out of the package directory.
    for patch in PATCHES:
        _run(
            [
                "patch",
                "-p1",
                "--forward",
                "--batch",
                "--fuzz=0",
                "--no-backup-if-mismatch",
                "-d",
                str(govmomi),
                "-i",
                str(patch),
            ]
        )
        rejects = list(govmomi.rglob("*.rej"))
        if rejects:
            raise VcsimBuildError(f"{patch.name} left rejects: {rejects}")
    main_dir = gopath / "src" / "vmferry" / "vcsim"
    main_dir.mkdir(parents=True)
    shutil.copy2(MAIN_GO, main_dir / "main.go")
    return main_dir


def ensure_vcsim_binary() -> Path:
    """Return the path of the patched vcsim binary, building it first if no cached build matches."""
    root = cache_dir() / "vcsim"
    root.mkdir(parents=True, exist_ok=True)
    key = build_key()
    target = root / key / BINARY_NAME
    if target.is_file():
        return target
    with _locked(root / ".build.lock"):
        if target.is_file():
            return target
        with tempfile.TemporaryDirectory(prefix="build-", dir=root) as tmp:
            tmp_path = Path(tmp)
            main_dir = prepare_overlay(tmp_path / "gopath")
            out = tmp_path / BINARY_NAME
            env = dict(os.environ)
            env.update(
                GO111MODULE="off",
                GOPATH=f"{tmp_path / 'gopath'}{os.pathsep}{GOCODE}",
                # A private build cache keeps working where $HOME is read-only or unset (CI).
                GOCACHE=str(root / "go-build-cache"),
                GOFLAGS="",
                CGO_ENABLED="0",
            )
            _run(["go", "build", "-o", str(out), "."], cwd=main_dir, env=env)
            target.parent.mkdir(parents=True, exist_ok=True)
            # Rename is atomic, so a reader never sees a half-written binary.
            os.replace(out, target)
    return target
