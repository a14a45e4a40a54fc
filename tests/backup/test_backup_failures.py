"""A backup that fails at any step leaves nothing behind and no restore point; earlier points still verify."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time

import pytest

from blocks.agent import Agent
from catalog.errors import PortRangeExhausted
from catalog.inventory import find_vm
from catalog.restore_points import committed_points
from clients.agent import AgentError, AgentUnreachable
from clients.qemu import QemuError
from flows.backup import backup_vm
from flows.verify import verify_restore_point
from infra.lab.agent import start_agent
from tests.copy.helpers import assert_nothing_left, our_qemu_nbd_pids, running_agent_jobs
from vmferry.repository import RepositoryError

pytestmark = pytest.mark.usefixtures("prefect_backend", "nbd_port_range")


@pytest.fixture
def two_disk_vm(make_scratch_vm):
    return make_scratch_vm(disks=2, size_mib=8)


def _assert_clean_after_failure(catalog, lab, vm_name, repository_block, previous):
    repo = repository_block.repository()
    context = find_vm(catalog, vm_name).vm_context_id
    assert [p.id for p in committed_points(catalog, context)] == [previous.id]
    assert list(repo.root.glob("**/*.partial")) == []
    assert our_qemu_nbd_pids(list(repo.root.glob("**/*.qcow2"))) == []
    assert_nothing_left(catalog, lab, vm_name, [])
    assert all(v.ok for v in verify_restore_point(previous.id, repository_block))


def test_port_range_exhausted(
    two_disk_vm, lab, agent_block, lab_vcenter_block, repository_block, configured_catalog, monkeypatch
):
    previous = backup_vm(two_disk_vm, repository_block, agent_block, lab_vcenter_block)
    monkeypatch.setenv("VMFERRY_NBD_PORT_RANGE", "21150-21150")  # one port for two disks
    with pytest.raises(PortRangeExhausted, match="21150-21150 exhausted"):
        backup_vm(two_disk_vm, repository_block, agent_block, lab_vcenter_block)
    _assert_clean_after_failure(configured_catalog, lab, two_disk_vm, repository_block, previous)


def test_qcow2_creation_fails(
    two_disk_vm, lab, agent_block, lab_vcenter_block, repository_block, configured_catalog, monkeypatch
):
    import tasks.backup

    previous = backup_vm(two_disk_vm, repository_block, agent_block, lab_vcenter_block)
    real_create = tasks.backup.create_qcow2
    calls = []

    def second_one_fails(path, size_bytes, *, backing_file=None):
        calls.append(path)
        # the real qemu-img, asked for an impossible image on the second disk
        return real_create(path, -1 if len(calls) == 2 else size_bytes, backing_file=backing_file)

    monkeypatch.setattr(tasks.backup, "create_qcow2", second_one_fails)
    with pytest.raises(QemuError, match="qemu-img create failed"):
        backup_vm(two_disk_vm, repository_block, agent_block, lab_vcenter_block)
    assert len(calls) == 2
    _assert_clean_after_failure(configured_catalog, lab, two_disk_vm, repository_block, previous)


def test_qemu_nbd_fails_to_start(
    two_disk_vm, lab, agent_block, lab_vcenter_block, repository_block, configured_catalog, monkeypatch
):
    previous = backup_vm(two_disk_vm, repository_block, agent_block, lab_vcenter_block)
    # ports no other test uses, so no TIME_WAIT of an earlier export is in the way of the squatter
    monkeypatch.setenv("VMFERRY_NBD_PORT_RANGE", "21260-21261")
    # Somebody else's socket bound to a port the catalog thinks is free, not listening yet: the allocator's probe
    # finds nothing serving it (a listener would be skipped), and qemu-nbd's own bind then fails. Without
    # SO_REUSEADDR, so qemu-nbd's bind (which sets it) cannot share the port.
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 21261))
    try:
        with pytest.raises(QemuError, match="qemu-nbd"):
            backup_vm(two_disk_vm, repository_block, agent_block, lab_vcenter_block)
    finally:
        squatter.close()
    _assert_clean_after_failure(configured_catalog, lab, two_disk_vm, repository_block, previous)


def test_agent_refuses(two_disk_vm, lab, agent_block, lab_vcenter_block, repository_block, configured_catalog):
    previous = backup_vm(two_disk_vm, repository_block, agent_block, lab_vcenter_block)
    wrong_token = Agent(url=agent_block.url, token="not-the-token")
    with pytest.raises(AgentError, match="401"):
        backup_vm(two_disk_vm, repository_block, wrong_token, lab_vcenter_block)
    _assert_clean_after_failure(configured_catalog, lab, two_disk_vm, repository_block, previous)


def test_agent_dies_mid_copy_of_disk_2(
    make_scratch_vm, lab, agent_block, lab_vcenter_block, repository_block, configured_catalog, tmp_path
):
    # several 8 MiB copy blocks per disk, so "in the middle of disk 2" is observable in the agent's progress
    two_disk_vm = make_scratch_vm(disks=2, size_mib=24)
    previous = backup_vm(two_disk_vm, repository_block, agent_block, lab_vcenter_block)
    doomed = start_agent(lab.vcenter, tmp_path / "doomed")
    block = Agent(url=doomed.url, token=doomed.token)
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            backup_vm(
                two_disk_vm,
                repository_block,
                block,
                lab_vcenter_block,
                kind="full",
                bandwidth_limit_bytes_per_second=3 * 2**20,
            )
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while True:  # wait until the second disk has bytes copied but is not finished
            with block.client() as client:
                jobs = [j for j in running_agent_jobs(client, "backup") if j.state == "running"]
            disks = sorted(jobs[0].disks, key=lambda d: d.device_key) if jobs else []
            if len(disks) == 2 and 0 < disks[1].bytes_done < disks[1].bytes_total:
                break
            assert time.monotonic() < deadline, "the copy of disk 2 never started"
            time.sleep(0.05)
        doomed.stop(signal.SIGKILL)
        thread.join(120)
    finally:
        doomed.stop(signal.SIGKILL)
    assert isinstance(outcome.get("error"), AgentUnreachable), outcome
    _assert_clean_after_failure(configured_catalog, lab, two_disk_vm, repository_block, previous)


def test_repository_not_writable(
    two_disk_vm, lab, agent_block, lab_vcenter_block, repository_block, configured_catalog
):
    previous = backup_vm(two_disk_vm, repository_block, agent_block, lab_vcenter_block)
    vm_dir = repository_block.repository().vm_dir(previous.vm_context_id)
    # root ignores permission bits; the immutable flag stops even root from creating the point's directory
    subprocess.run(["chattr", "+i", str(vm_dir)], check=True)
    try:
        with pytest.raises(RepositoryError, match="not writable"):
            backup_vm(two_disk_vm, repository_block, agent_block, lab_vcenter_block)
    finally:
        subprocess.run(["chattr", "-i", str(vm_dir)], check=True)
    _assert_clean_after_failure(configured_catalog, lab, two_disk_vm, repository_block, previous)
