"""A file-level and a whole-VM restore SIGKILLed mid-work: their job rows, qemu-nbd, ``.partial`` outputs and work
directories are in the ledger, and the reconciler removes every one of them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from catalog.jobs import get_job, list_jobs
from catalog.resources import live_resources, resources_of_job
from flows.reconcile import reconcile
from tests.copy.helpers import our_qemu_nbd_pids
from tests.faults.conftest import ROOT, subprocess_env

pytestmark = pytest.mark.usefixtures("prefect_backend", "nbd_port_range")


def _run_until_stalled(kind: str, arguments: dict, catalog_url: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.faults.run_restore"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=subprocess_env(catalog_url), cwd=ROOT,
    )  # fmt: skip
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(json.dumps({"kind": kind, **arguments}).encode())
    process.stdin.close()
    line = process.stdout.readline()  # blocks until the restore stalls or the process ends
    assert line.strip() == b"stalled", f"the restore ended before it stalled (exit {process.wait(30)})"
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    return process


def _restore_job(catalog):
    (job,) = [j for j in list_jobs(catalog) if j.kind == "restore"]
    return job


def test_a_killed_file_restore_leaves_nothing_after_reconcile(
    lab, committed_point, repository_block, configured_catalog, tmp_path
):
    manifest = lab.manifest.vm("pgtest1")
    record = next(d for d in manifest.disks if d.known_files)
    known = record.known_files[0]
    destination = tmp_path / "files"
    repository = {"name": repository_block.name, "path": repository_block.path}
    _run_until_stalled(
        "files",
        {
            "point_id": committed_point.id, "disk": f"disk-{record.device_key}", "partition": known.partition,
            "paths": [known.path], "destination": str(destination), "repository": repository,
        },
        configured_catalog.url,
    )  # fmt: skip
    image = repository_block.repository().absolute(committed_point.disk(f"disk-{record.device_key}").file_path)
    job = _restore_job(configured_catalog)
    ledger = {r.kind: r for r in resources_of_job(configured_catalog, job.id)}
    # the kill really left a serving qemu-nbd, its work directory and the partial output behind
    assert job.state == "running"
    assert our_qemu_nbd_pids([image]) == [ledger["qemu-nbd"].pid]
    partial = destination / (known.path.lstrip("/") + ".partial")
    assert Path(ledger["file"].path) == partial and partial.stat().st_size > 0
    assert Path(ledger["directory"].path).is_dir() and f"vmferry-{job.id}-" in ledger["directory"].path

    report = reconcile(repository_block)

    assert our_qemu_nbd_pids([image]) == []
    assert not partial.exists() and not Path(ledger["directory"].path).exists()
    assert live_resources(configured_catalog) == []
    assert get_job(configured_catalog, job.id).state == "failed"
    assert sorted(f.action for f in report.of("job-resource")) == [
        "removed directory", "removed file", "removed qemu-nbd"
    ]  # fmt: skip
    assert report.errors == []


def test_a_killed_whole_vm_restore_leaves_nothing_after_reconcile(
    committed_point, repository_block, configured_catalog, tmp_path
):
    destination = tmp_path / "vm"
    repository = {"name": repository_block.name, "path": repository_block.path}
    _run_until_stalled(
        "vm",
        {"point_id": committed_point.id, "destination": str(destination), "repository": repository},
        configured_catalog.url,
    )
    job = _restore_job(configured_catalog)
    (partial,) = destination.glob("*.partial")
    assert job.state == "running" and partial.stat().st_size > 0

    report = reconcile(repository_block)

    assert list(destination.iterdir()) == []
    assert live_resources(configured_catalog) == []
    assert get_job(configured_catalog, job.id).state == "failed"
    assert [f.action for f in report.of("job-resource")] == ["removed file"]
    assert report.errors == []
