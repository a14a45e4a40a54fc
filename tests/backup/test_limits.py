"""Backups hold the global concurrency limits: one slot of their repository's, one of their vCenter's snapshots."""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound

from blocks.repository import BackupRepository
from catalog.jobs import running_jobs
from catalog.ports import held_leases
from catalog.restore_points import PointView
from common.names import repository_limit_name, vcenter_limit_name
from flows.backup import backup_vm
from infra.lab.mutate import read_disk_bytes
from tests.copy.helpers import assert_nothing_left

pytestmark = pytest.mark.usefixtures("prefect_backend", "nbd_port_range")


def limit_of(name: str) -> int | None:
    with get_client(sync_client=True) as client:
        try:
            return client.read_global_concurrency_limit_by_name(name).limit
        except ObjectNotFound:
            return None


def set_limit(name: str, limit: int) -> None:
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, limit)


def wait_for(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_limit_names_are_safe_for_prefect():
    assert vcenter_limit_name("VC01.Example.test") == "vcenter-snapshots-vc01.example.test"
    assert vcenter_limit_name("fe80::1%eth0", 8443) == "vcenter-snapshots-fe80-1-eth0-8443"
    assert repository_limit_name("main") == "repo-backup-main"


def test_missing_limits_are_created_with_the_defaults(
    make_scratch_vm, lab, agent_block, lab_vcenter_block, configured_catalog, tmp_path, monkeypatch
):
    repository = BackupRepository(name=f"fresh-{uuid.uuid4().hex[:8]}", path=str(tmp_path / "repository"))
    monkeypatch.setenv("VMFERRY_REPOSITORY_BACKUP_LIMIT", "5")
    assert limit_of(repository_limit_name(repository.name)) is None

    point = backup_vm(make_scratch_vm(), repository, agent_block, lab_vcenter_block)

    assert point.state == "committed"
    assert limit_of(repository_limit_name(repository.name)) == 5
    assert limit_of(vcenter_limit_name(lab_vcenter_block.host, lab_vcenter_block.port)) is not None


def test_a_backup_waits_for_its_repository_slot_then_for_a_vcenter_slot(
    make_scratch_vm, lab, agent_block, lab_vcenter_block, configured_catalog, tmp_path: Path
):
    vm_name = make_scratch_vm()
    repository = BackupRepository(name=f"busy-{uuid.uuid4().hex[:8]}", path=str(tmp_path / "repository"))
    repository_limit = repository_limit_name(repository.name)
    vcenter_limit = vcenter_limit_name(lab_vcenter_block.host, lab_vcenter_block.port)
    vcenter_slots = limit_of(vcenter_limit)
    set_limit(repository_limit, 1)
    set_limit(vcenter_limit, 1)
    results: list[PointView] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(backup_vm(vm_name, repository, agent_block, lab_vcenter_block))
        except BaseException as exc:
            errors.append(exc)

    backup = threading.Thread(target=run)
    try:
        # Another backup into the same repository and another snapshot on the same vCenter hold the only slots.
        with concurrency(vcenter_limit, strict=True):
            with concurrency(repository_limit, strict=True):
                backup.start()
                time.sleep(3)
                assert backup.is_alive() and not errors
                assert running_jobs(configured_catalog) == [], "the backup started while its repository was full"
            wait_for(lambda: len(running_jobs(configured_catalog)) == 1 or bool(errors))
            (job,) = running_jobs(configured_catalog)
            time.sleep(3)
            assert backup.is_alive() and not errors
            assert held_leases(configured_catalog, job.id) == [], "ports were taken while vCenter was full"
        backup.join(180)
    finally:
        set_limit(vcenter_limit, vcenter_slots or 4)

    assert errors == [] and not backup.is_alive()
    (point,) = results
    assert point.state == "committed" and point.job_id == job.id
    for disk in point.disks:
        expected = hashlib.sha256(read_disk_bytes(lab.vcenter, vm_name, disk.device_key)).hexdigest()
        assert disk.checksum == expected
    assert_nothing_left(configured_catalog, lab, vm_name, [])
    with get_client(sync_client=True) as client:  # every slot given back
        assert client.read_global_concurrency_limit_by_name(repository_limit).active_slots == 0
        assert client.read_global_concurrency_limit_by_name(vcenter_limit).active_slots == 0
