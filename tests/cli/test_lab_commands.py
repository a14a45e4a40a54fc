"""`vmferry lab up` (the lab's own command line, run as a process) leaves what `--lab` needs: a lab.json with
the vCenter and a long-lived agent; `vmferry lab down` stops them."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest


def agent_running(pid: int) -> bool:
    try:
        return b"agent" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False


@pytest.mark.usefixtures("prefect_backend")
def test_lab_up_gives_what_lab_uses_and_down_stops_it(vmferry, configured_catalog, tmp_path, monkeypatch):
    monkeypatch.setenv("VMFERRY_LAB_DIR", str(tmp_path / "lab"))
    monkeypatch.setenv("VMFERRY_DATA_DIR", str(tmp_path / "data"))
    up = vmferry("lab", "up", "--json")
    try:
        assert up.exit_code == 0, up.output
        assert json.loads(up.stdout)["reused"] is False
        state = json.loads((tmp_path / "lab" / "lab.json").read_text())
        agent = state["agent"]
        health = httpx.get(f"{agent['url']}/api/v1/health", headers={"Authorization": f"Bearer {agent['token']}"})
        assert health.status_code == 200

        result = vmferry("discover", "db3", "--lab", "--json")
        assert result.exit_code == 0, result.output
        (vm,) = json.loads(result.stdout)
        assert vm["name"] == "db3" and len([d for d in vm["disks"] if d["present"]]) == 3

        again = vmferry("lab", "up", "--json")
        assert again.exit_code == 0 and json.loads(again.stdout)["reused"] is True
        assert json.loads((tmp_path / "lab" / "lab.json").read_text())["agent"]["pid"] == agent["pid"]
    finally:
        down = vmferry("lab", "down")
    assert down.exit_code == 0, down.output
    assert not agent_running(agent["pid"])
    assert vmferry("discover", "db3", "--lab").exit_code == 4  # no lab any more: refused
