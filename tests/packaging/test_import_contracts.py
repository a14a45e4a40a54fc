"""The import contracts have teeth: on a copy of the code, a forbidden import fails `lint-imports`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.packaging.conftest import REPO

ROOT_PACKAGES = (
    "common",
    "agent",
    "vmferry",
    "catalog",
    "clients",
    "orchestration",
    "blocks",
    "tasks",
    "flows",
    "infra",
)
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(checkout: Path) -> subprocess.CompletedProcess[str]:
    # The copy first on the path, so the contracts are checked against it and not against the installed checkout.
    env = {**os.environ, "PYTHONPATH": str(checkout), "COLUMNS": "200"}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(checkout / "pyproject.toml")],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("contracts")
    for package in ROOT_PACKAGES:
        shutil.copytree(REPO / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "pyproject.toml", copy / "pyproject.toml")
    return copy


def test_the_code_as_it_is_keeps_every_contract(checkout: Path):
    result = lint_imports(checkout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "forbidden", "contract"),
    [
        # Hidden inside a function, as vmferry/limits.py once did: still an import of the module.
        ("vmferry/retention.py", "prefect", "The domain core"),
        ("agent/jobs.py", "catalog.jobs", "The agent imports nothing of the hub"),
        ("tasks/nbd.py", "agent.dataplane.sources", "The hub imports nothing of the agent"),
        ("flows/backup.py", "infra.lab.paths", "Product code never imports infra"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    checkout: Path, tmp_path: Path, module: str, forbidden: str, contract: str
):
    violated = tmp_path / "code"
    shutil.copytree(checkout, violated)
    source = violated / module
    source.write_text(source.read_text() + f"\n\ndef _forbidden() -> None:\n    import {forbidden}  # noqa: F401\n")

    result = lint_imports(violated)

    assert result.returncode != 0, result.stdout
    assert "1 broken" in result.stdout, result.stdout
    dotted = module.removesuffix(".py").replace("/", ".")
    assert f"{dotted} -> {forbidden}" in result.stdout, result.stdout
    broken = [line for line in result.stdout.splitlines() if " BROKEN" in line]
    assert broken and broken[0].startswith(contract), result.stdout
