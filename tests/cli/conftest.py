"""CLI tests: the `vmferry` command in-process (typer's CliRunner) against the session's lab and Prefect server.

The fixtures of tests/conftest.py (lab, prefect_backend, configured_catalog, agent_process, nbd_port_range) are
used as they are; these add a lab directory describing the session's lab and agent, so the CLI's blocks with
--lab are the lab's, and saved blocks on the session's Prefect server for the --vcenter/--agent/--repository
options.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from tests.databases import fresh_catalog_url


@pytest.fixture(params=["sqlite"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The CLI adds nothing engine-specific: SQLite only (the catalog tests cover MariaDB)."""
    with fresh_catalog_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def vmferry():
    """Run ``vmferry ARGS...`` in-process; returns typer's Result (exit_code, stdout, stderr)."""
    # Prefect configures its console log handler on first import, bound to the sys.stderr of that moment: import
    # it here, not inside an invocation, where sys.stderr is the runner's capture that is closed afterwards.
    import prefect  # noqa: F401

    from vmferry.cli import app

    runner = CliRunner()

    def run(*args: object) -> Result:
        return runner.invoke(app, [str(a) for a in args])

    return run


@pytest.fixture
def vmferry_process(prefect_backend):
    """Run ``python -m vmferry.cli ARGS...`` as a script would, against the session's Prefect server."""
    import prefect.settings as ps

    def run(*args: object) -> subprocess.CompletedProcess[str]:
        # the harness's server URL is a temporary setting of this process: hand it over explicitly
        env = {**os.environ, "PREFECT_API_URL": str(ps.PREFECT_API_URL.value())}
        argv = [sys.executable, "-m", "vmferry.cli", *(str(a) for a in args)]
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)

    return run


@pytest.fixture
def lab_home(lab, agent_process, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """VMFERRY_LAB_DIR with a lab.json describing the session's lab and agent (as `vmferry lab up` writes it).

    Never run `vmferry lab down` with it: that would stop the session's vcsim.
    """
    root = tmp_path / "lab-home"
    root.mkdir()
    agent = {
        "pid": agent_process.process.pid,
        "url": agent_process.url,
        "token": agent_process.token,
        "config": str(agent_process.config_path),
    }
    state = {"vcenter": lab.vcenter.to_dict(), "manifest": str(lab.seed_dir / "manifest.json"), "agent": agent}
    (root / "lab.json").write_text(json.dumps(state))
    monkeypatch.setenv("VMFERRY_LAB_DIR", str(root))
    monkeypatch.setenv("VMFERRY_DATA_DIR", str(tmp_path / "data"))
    return root


@pytest.fixture
def saved_blocks(prefect_backend, lab_vcenter_block, agent_block, tmp_path: Path) -> dict[str, str]:
    """The lab's vCenter, the session agent and a fresh repository saved as blocks; returns their names."""
    from blocks import BackupRepository

    suffix = uuid.uuid4().hex[:8]
    names = {"vcenter": f"lab-{suffix}", "agent": f"lab-{suffix}", "repository": f"cli-{suffix}"}
    lab_vcenter_block.save(names["vcenter"])
    agent_block.save(names["agent"])
    BackupRepository(name=names["repository"], path=str(tmp_path / "saved-repository")).save(names["repository"])
    return names
