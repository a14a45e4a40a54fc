"""A run killed while it holds a concurrency slot gives the slot back, on a real Prefect server (PostgreSQL, its
services running): the slot is a lease only a living run renews."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from infra.prefect_server import PrefectServer, prefect_env, running_prefect_server
from tests.faults.conftest import ROOT


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[PrefectServer]:
    with running_prefect_server(tmp_path) as server:
        yield server


def _active_slots(server: PrefectServer, name: str) -> int:
    response = httpx.get(f"{server.url}/v2/concurrency_limits/{name}", timeout=10)
    response.raise_for_status()
    return int(response.json()["active_slots"])


def test_a_killed_runs_slot_comes_back(prefect_server, tmp_path):
    name = "repo-backup-killed"
    env = prefect_env(prefect_server.url, tmp_path / "home")
    holder = subprocess.Popen(
        [sys.executable, "-m", "tests.faults.hold_slot", name], stdout=subprocess.PIPE, env=env, cwd=ROOT
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"holding", f"the run never took its slot ({holder.wait(60)})"
        assert _active_slots(prefect_server, name) == 1
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    killed_at = time.monotonic()
    # the lease (60 s) runs out, then the repossessor (every 15 s) revokes it
    while _active_slots(prefect_server, name) != 0:
        assert time.monotonic() - killed_at < 120, "the killed run's slot never came back"
        time.sleep(2)
