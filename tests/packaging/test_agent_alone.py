"""The agent installs on its own (`pip install "vmferry[agent]"`): no Prefect, no SQLAlchemy, and its tests pass.

The venv is built from the wheel and the pinned versions, and kept under the lab's cache directory, keyed by
pyproject.toml and constraints.txt: a warm run only reinstalls the wheel. The agent's tests run from a copy of
them outside the checkout, with no PYTHONPATH, so every module they import comes from that venv.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from infra.lab.paths import cache_dir
from tests.packaging.conftest import REPO

# The agent's own tests: tests/agent, and the data-path tests that use nothing of the hub.
AGENT_TESTS = ("tests/agent", "tests/dataplane/test_dataplane_nbd.py", "tests/dataplane/test_dataplane_sources.py")
# What those tests need beside the agent: the runner, and cryptography for their throw-away TLS certificates.
TEST_TOOLS = ("pytest", "cryptography")
SUPPORT = (
    "tests/__init__.py",
    "tests/conftest.py",
    "tests/databases.py",
    "tests/dataplane/__init__.py",
    "tests/dataplane/conftest.py",
    "pyproject.toml",
)


def run(argv: list[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=900, **kwargs)


def agent_venv(wheel: Path) -> Path:
    """A venv with the agent's dependencies (cached) and this wheel (always reinstalled); returns its python."""
    key = hashlib.sha256((REPO / "pyproject.toml").read_bytes() + (REPO / "constraints.txt").read_bytes())
    root = cache_dir() / "agent-venv" / key.hexdigest()[:16]
    python = root / "bin" / "python"
    ready = root / ".vmferry-ready"
    if not ready.exists():
        shutil.rmtree(root, ignore_errors=True)
        made = run([sys.executable, "-m", "venv", root])
        assert made.returncode == 0, made.stderr
        installed = run(
            [python, "-m", "pip", "install", "-q", "-c", REPO / "constraints.txt", f"{wheel}[agent]", *TEST_TOOLS]
        )
        assert installed.returncode == 0, installed.stdout + installed.stderr
        ready.touch()
    reinstalled = run([python, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", wheel])
    assert reinstalled.returncode == 0, reinstalled.stdout + reinstalled.stderr
    return python


def test_the_agent_installs_alone_and_passes_its_tests(built_wheel: Path, tmp_path: Path):
    lock_path = cache_dir() / "agent-venv.lock"
    # Other test runs on this machine share the cached venv: one at a time installs into it and tests from it.
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        python = agent_venv(built_wheel)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

        for hub_only in ("prefect", "sqlalchemy"):
            probe = run([python, "-c", f"import {hub_only}"], cwd=tmp_path, env=env)
            assert probe.returncode != 0 and f"No module named '{hub_only}'" in probe.stderr, probe.stderr
        where = run(
            [python, "-c", "import agent.__main__, common.nbd; print(agent.__main__.__file__)"], cwd=tmp_path, env=env
        )
        assert where.returncode == 0, where.stderr
        assert Path(where.stdout.strip()).is_relative_to(python.parent.parent), where.stdout

        copy = tmp_path / "checkout"
        for name in (*AGENT_TESTS, *SUPPORT):
            source, target = REPO / name, copy / name
            if source.is_dir():
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
        tests = run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *AGENT_TESTS], cwd=copy, env=env)

    summary = tests.stdout.strip().splitlines()[-1] if tests.stdout.strip() else ""
    assert tests.returncode == 0, tests.stdout[-4000:] + tests.stderr[-2000:]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 20, summary
    assert "skipped" not in summary, summary
