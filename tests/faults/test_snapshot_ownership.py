"""Two agents, one VM: a second job never touches the first job's snapshot, and the first copy completes from its
own snapshot, byte for byte."""

from __future__ import annotations

import hashlib
import time

import pytest

from blocks.agent import Agent
from catalog.inventory import find_vm
from clients.qemu import stop_qemu_nbd
from common.contract import JobRequest
from flows.discover import discover
from infra.lab.agent import start_agent
from infra.lab.mutate import read_disk_bytes
from tests.copy.helpers import raw_of, vm_snapshot_names
from tests.copy.test_copy_vm import _served_targets

pytestmark = pytest.mark.usefixtures("prefect_backend", "nbd_port_range")


def _serve(vm, directory, ports):
    directory.mkdir(parents=True)
    return _served_targets(vm, directory, ports)


def test_a_second_agent_on_the_same_vm_leaves_the_first_jobs_snapshot_alone(
    make_scratch_vm, lab, lab_vcenter_block, agent_process, configured_catalog, test_ports, tmp_path
):
    name = make_scratch_vm(disks=1, size_mib=16)
    discover(lab_vcenter_block, [name])
    vm = find_vm(configured_catalog, name)
    second = start_agent(lab.vcenter, tmp_path / "second-agent")
    first_servers, first_targets = _serve(vm, tmp_path / "first", test_ports[:1])
    second_servers, second_targets = _serve(vm, tmp_path / "second", test_ports[1:2])
    try:
        first = Agent(url=agent_process.url, token=agent_process.token)
        slow = JobRequest(
            job_id="first-slow", vm=vm.instance_uuid, kind="full", targets=first_targets,
            bandwidth_limit_bytes_per_second=2**20,  # 16 MiB: the first copy runs for many seconds
        )  # fmt: skip
        with first.client() as client:
            client.submit(slow)
            deadline = time.monotonic() + 60
            while not (status := client.status(slow.job_id)).disks or status.disks[0].bytes_done == 0:
                assert not status.finished, status
                assert time.monotonic() < deadline, "the first copy never started"
                time.sleep(0.05)
        # The second job runs and finishes while the first still copies.
        with Agent(url=second.url, token=second.token).client() as client:
            client.submit(JobRequest(job_id="second-fast", vm=vm.instance_uuid, kind="full", targets=second_targets))
            fast = client.wait("second-fast", timeout=120)
        assert fast.snapshot_removed
        with first.client() as client:
            assert not client.status(slow.job_id).finished, "the first copy ended before the second one"
            done = client.wait(slow.job_id, timeout=180)
        assert done.state == "succeeded" and done.snapshot_removed
        # each job reported the snapshot it created: the one it removed
        assert None is not done.snapshot_moref != fast.snapshot_moref is not None
    finally:
        second.stop()
        for server in first_servers + second_servers:
            stop_qemu_nbd(server.pid, server.file_path)
    (disk,) = vm.present_disks()
    source = hashlib.sha256(read_disk_bytes(lab.vcenter, name, disk.device_key)).hexdigest()
    for copy in ("first", "second"):
        raw = raw_of(tmp_path / copy / f"{disk.disk_id}.qcow2", tmp_path / f"{copy}.raw")
        assert hashlib.sha256(raw.read_bytes()).hexdigest() == source, copy
    assert vm_snapshot_names(lab, name) == []
