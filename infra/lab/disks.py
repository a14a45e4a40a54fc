"""Build lab disk images without root and without mount.

Each image gets a partition table written by sfdisk into a plain file, filesystems made as separate
partition images (mke2fs -d for ext4, mtools for FAT) and copied in at their partition's offset, seeded
random regions, and zero regions, so a copy can be compared byte for byte and zero skipping can be seen.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

SECTOR = 512
MIB = 1024 * 1024
# Fixed timestamps and UUIDs keep images reproducible, so re-seeding a lab uploads the same bytes.
FAKE_TIME = 1_700_000_000

Content = Literal["ext4", "fat", "random", "zero"]


class DiskBuildError(RuntimeError):
    """A tool needed to build a lab disk failed."""


@dataclass(frozen=True)
class PartitionSpec:
    """One partition of a lab disk.

    size_mib None means "the rest of the disk". type is an sfdisk type (shortcut such as L, or a GPT GUID or
    MBR hex code). For content "random", random_mib MiB of seeded random bytes start the partition and the
    rest stays zero.
    """

    size_mib: int | None
    type: str
    content: Content
    files: Mapping[str, bytes] = field(default_factory=dict)
    random_mib: int = 0
    fs_label: str = ""
    bootable: bool = False  # the MBR "active" flag, which a BIOS boot loader's MBR code looks for


@dataclass(frozen=True)
class DiskImageSpec:
    size_bytes: int
    label: Literal["gpt", "dos"]
    label_id: str
    partitions: tuple[PartitionSpec, ...]
    seed: int


@dataclass(frozen=True)
class KnownFile:
    """A file placed on a lab disk, with where to find it again."""

    path: str
    sha256: str
    size: int
    partition: int
    partition_offset_bytes: int
    partition_size_bytes: int
    filesystem: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KnownFile:
        return cls(**data)


@dataclass(frozen=True)
class BuiltImage:
    path: Path
    size_bytes: int
    sha256: str
    sfdisk_dump: str
    sfdisk_json: dict[str, Any]
    known_files: tuple[KnownFile, ...]


def _run(argv: list[str], *, stdin: bytes | None = None, env: Mapping[str, str] | None = None) -> str:
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    try:
        proc = subprocess.run(argv, input=stdin, capture_output=True, env=full_env, check=False)
    except FileNotFoundError as exc:
        raise DiskBuildError(f"{argv[0]} not found; run infra/lab/install.sh") from exc
    if proc.returncode != 0:
        raise DiskBuildError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(4 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


def sfdisk_dump(image: Path) -> str:
    """`sfdisk -d` output with the image's path replaced by "disk", so dumps of copies compare equal."""
    return _run(["sfdisk", "-d", str(image)]).replace(str(image), "disk")


def sfdisk_json(image: Path) -> dict[str, Any]:
    """`sfdisk --json` output with the image's path replaced by "disk"."""
    result: dict[str, Any] = json.loads(_run(["sfdisk", "--json", str(image)]).replace(str(image), "disk"))
    return result


def _partition_uuid(spec: DiskImageSpec, number: int) -> str:
    digest = hashlib.sha256(f"{spec.label_id}/{number}".encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-4{digest[13:16]}-8{digest[17:20]}-{digest[20:32]}"


def _sfdisk_script(spec: DiskImageSpec) -> str:
    lines = [f"label: {spec.label}", f"label-id: {spec.label_id}", "unit: sectors"]
    start = MIB // SECTOR
    for number, part in enumerate(spec.partitions, start=1):
        fields = [f"start={start}"]
        if part.size_mib is not None:
            size = part.size_mib * MIB // SECTOR
            fields.append(f"size={size}")
            start += size
        fields.append(f"type={part.type}")
        if part.bootable:
            fields.append("bootable")
        if spec.label == "gpt":
            fields.append(f"uuid={_partition_uuid(spec, number)}")
        lines.append(", ".join(fields))
    return "\n".join(lines) + "\n"


def _make_ext4(image: Path, size: int, files: Mapping[str, bytes], root: Path, uuid: str, label: str) -> None:
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for rel, data in files.items():
        target = root / rel.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    for path in sorted(root.rglob("*"), reverse=True):
        os.utime(path, (FAKE_TIME, FAKE_TIME))
    with image.open("wb") as handle:
        handle.truncate(size)
    argv = ["mke2fs", "-q", "-F", "-t", "ext4", "-U", uuid, "-E", f"hash_seed={uuid},root_owner=0:0"]
    if label:
        argv += ["-L", label]
    _run([*argv, "-d", str(root), str(image)], env={"E2FSPROGS_FAKE_TIME": str(FAKE_TIME)})


def _make_fat(
    image: Path,
    size: int,
    files: Mapping[str, bytes],
    root: Path,
    serial: int,
    label: str,
    hidden_sectors: int,
) -> None:
    with image.open("wb") as handle:
        handle.truncate(size)
    argv = [
        "mformat",
        "-i",
        str(image),
        "-T",
        str(size // SECTOR),
        "-h",
        "64",
        "-s",
        "32",
        "-H",
        str(hidden_sectors),
        "-N",
        f"{serial:08X}",
    ]
    if label:
        argv += ["-v", label]
    _run([*argv, "::"])
    made: set[str] = set()
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for rel, data in files.items():
        parts = rel.strip("/").split("/")
        for depth in range(1, len(parts)):
            directory = "/".join(parts[:depth])
            if directory not in made:
                _run(["mmd", "-i", str(image), f"::/{directory}"])
                made.add(directory)
        local = root / rel.strip("/").replace("/", "_")
        local.write_bytes(data)
        _run(["mcopy", "-i", str(image), "-m", str(local), f"::/{rel.strip('/')}"])


def build_image(spec: DiskImageSpec, out: Path, scratch: Path) -> BuiltImage:
    """Write the raw image described by spec to out; scratch holds partition images and file trees."""
    scratch.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as handle:
        handle.truncate(spec.size_bytes)
    _run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", str(out)], stdin=_sfdisk_script(spec).encode())
    table = sfdisk_json(out)
    parts = table["partitiontable"]["partitions"]
    if len(parts) != len(spec.partitions):
        raise DiskBuildError(f"{out}: sfdisk made {len(parts)} partitions, expected {len(spec.partitions)}")
    # Test data, not secrets: a seeded generator makes every disk's random regions reproducible.
    rng = random.Random(spec.seed)  # noqa: S311
    known: list[KnownFile] = []
    for number, (part, entry) in enumerate(zip(spec.partitions, parts, strict=True), start=1):
        offset = int(entry["start"]) * SECTOR
        size = int(entry["size"]) * SECTOR
        payload: Path | None = None
        if part.content == "ext4":
            payload = scratch / f"p{number}.ext4"
            _make_ext4(
                payload,
                size,
                part.files,
                scratch / f"p{number}-root",
                _partition_uuid(spec, 100 + number),
                part.fs_label,
            )
        elif part.content == "fat":
            payload = scratch / f"p{number}.fat"
            _make_fat(
                payload,
                size,
                part.files,
                scratch / f"p{number}-root",
                rng.getrandbits(32),
                part.fs_label,
                int(entry["start"]),
            )
        if payload is not None:
            with out.open("r+b") as dst, payload.open("rb") as src:
                dst.seek(offset)
                shutil.copyfileobj(src, dst, 4 * MIB)
            for rel, data in part.files.items():
                known.append(
                    KnownFile(
                        path="/" + rel.strip("/"),
                        sha256=hashlib.sha256(data).hexdigest(),
                        size=len(data),
                        partition=number,
                        partition_offset_bytes=offset,
                        partition_size_bytes=size,
                        filesystem=part.content,
                    )
                )
        elif part.content == "random" and part.random_mib:
            length = min(part.random_mib * MIB, size)
            with out.open("r+b") as dst:
                dst.seek(offset)
                dst.write(rng.randbytes(length))
    return BuiltImage(
        path=out,
        size_bytes=spec.size_bytes,
        sha256=sha256_file(out),
        sfdisk_dump=sfdisk_dump(out),
        sfdisk_json=sfdisk_json(out),
        known_files=tuple(known),
    )


def copy_image(source: Path, out: Path) -> BuiltImage:
    """A prebuilt raw image (a lab guest's disk) copied to ``out`` and described as build_image describes its own."""
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, out)
    return BuiltImage(
        path=out,
        size_bytes=out.stat().st_size,
        sha256=sha256_file(out),
        sfdisk_dump=sfdisk_dump(out),
        sfdisk_json=sfdisk_json(out),
        known_files=(),
    )


def seeded_bytes(seed: int, size: int) -> bytes:
    """Deterministic pseudo-random file content (not for security)."""
    return random.Random(seed).randbytes(size)  # noqa: S311


def extract_partition(image: Path, offset: int, size: int, out: Path) -> Path:
    with image.open("rb") as src, out.open("wb") as dst:
        src.seek(offset)
        remaining = size
        while remaining:
            chunk = src.read(min(remaining, 4 * MIB))
            if not chunk:
                break
            dst.write(chunk)
            remaining -= len(chunk)
    return out


def read_known_file(image: Path, known: KnownFile, scratch: Path) -> bytes:
    """Read a file back out of a raw disk image at the recorded partition (debugfs or mtools, no mount)."""
    if known.filesystem == "fat":
        # mtools addresses a partition inside an image as IMAGE@@OFFSET.
        proc = subprocess.run(
            ["mtype", "-i", f"{image}@@{known.partition_offset_bytes}", f"::{known.path}"],
            capture_output=True,
            check=False,
        )
    else:
        scratch.mkdir(parents=True, exist_ok=True)
        part = extract_partition(
            image,
            known.partition_offset_bytes,
            known.partition_size_bytes,
            scratch / f"{image.name}.p{known.partition}",
        )
        proc = subprocess.run(["debugfs", "-R", f"cat {known.path}", str(part)], capture_output=True, check=False)
    if proc.returncode != 0:
        raise DiskBuildError(f"reading {known.path} from {image}: {proc.stderr.decode(errors='replace')}")
    return proc.stdout
