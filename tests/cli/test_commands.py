"""verify, files, prune, reconcile and status on the lab, through the `vmferry` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.mark.usefixtures("prefect_backend", "nbd_port_range")
def test_verify_files_prune_reconcile_and_status(vmferry, lab, lab_home, configured_catalog):
    result = vmferry("backup", "pgtest1", "--lab", "--kind", "full", "--no-progress", "--json")
    assert result.exit_code == 0, result.output
    first = json.loads(result.stdout)

    result = vmferry("verify", first["id"], "--lab", "--json")
    assert result.exit_code == 0, result.output
    assert sorted(v["disk_id"] for v in json.loads(result.stdout) if v["ok"]) == sorted(
        d["disk_id"] for d in first["disks"]
    )

    # files: the OS disk's partitions, then directories of its root filesystem (partition 2 on pgtest1)
    result = vmferry("files", first["id"], "--lab", "--json")
    assert result.exit_code == 0, result.output
    partitions = {p["number"]: p["filesystem"] for p in json.loads(result.stdout)["partitions"]}
    assert partitions[2] == "ext"
    result = vmferry("files", first["id"], "/etc", "--lab", "--partition", 2, "--json")
    assert result.exit_code == 0, result.output
    entries = {e["path"]: e for e in json.loads(result.stdout)["entries"]}
    assert entries["/etc/hostname"]["size"] == len(b"pgtest1\n") and not entries["/etc/hostname"]["is_dir"]
    result = vmferry("files", first["id"], "/no/such/dir", "--lab", "--partition", 2)
    assert result.exit_code == 3 and "/no/such/dir" in result.stderr

    # status: per VM the newest point and its age, no sync yet, never failed over; jobs with their times
    result = vmferry("status", "pgtest1", "--json")
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    (protection,) = status["protection"]
    assert protection["newest_point_id"] == first["id"] and 0 <= protection["newest_point_age_seconds"] < 3600
    assert protection["last_sync_at"] is None and protection["failover"] is None
    assert all(job["created_at"] and job["finished_at"] for job in status["jobs"])
    result = vmferry("status", "pgtest1")
    assert "newest point" in result.stdout and "never failed over" in result.stdout and "started" in result.stdout

    # prune to the newest point: the first one goes, its files with it
    result = vmferry("backup", "pgtest1", "--lab", "--kind", "full", "--no-progress", "--json")
    assert result.exit_code == 0, result.output
    second = json.loads(result.stdout)
    result = vmferry("prune", "pgtest1", "--lab", "--keep-last", 1, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["pruned"] == [first["id"]]
    assert vmferry("prune", "pgtest1", "--lab", "--keep-last", 1).stdout.strip() == "pgtest1: nothing to prune"
    assert vmferry("verify", first["id"], "--lab").exit_code == 1  # pruned: no longer committed

    # a changed byte in the kept point: verify fails (exit 1) and names the disk
    repository = Path(lab_home.parent / "data" / "repository")
    disk = second["disks"][0]
    path = repository / disk["file_path"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    result = vmferry("verify", second["id"], "--lab")
    assert result.exit_code == 1 and disk["disk_id"] in result.stderr

    result = vmferry("reconcile", "--lab", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["dry_run"] is True
