"""Port leases against real copies: a copy longer than its lease keeps its ports (renewed while it runs), and a
failed copy gives back every port its job holds, even one the flow never learnt of."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest

from catalog.errors import PortRangeExhausted
from catalog.exports import exports_for_job
from catalog.jobs import create_job, list_jobs
from catalog.models import utcnow
from catalog.ports import held_leases, lease_port
from clients.agent import AgentError
from flows.copy import copy_vm_disks
from flows.discover import discover
from tasks.nbd import lease_nbd_port
from tests.copy.helpers import assert_nothing_left, qcow2_targets, source_facts, target_facts
from vmferry.settings import PortRange

pytestmark = pytest.mark.usefixtures("prefect_backend", "nbd_port_range")

LEASE_SECONDS = 2


def _copy_in_thread(*args, **kwargs) -> tuple[threading.Thread, dict[str, object]]:
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = copy_vm_disks(*args, **kwargs)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def _running_copy(catalog, thread: threading.Thread, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while True:
        jobs = [j for j in list_jobs(catalog) if j.kind == "copy" and j.state == "running"]
        if (
            jobs
            and exports_for_job(catalog, jobs[0].id)
            and all(e.state == "running" for e in exports_for_job(catalog, jobs[0].id))
            and len(held_leases(catalog, jobs[0].id)) >= 2
        ):
            return jobs[0]
        assert thread.is_alive(), "the copy ended before it was seen running"
        assert time.monotonic() < deadline, "the copy never started"
        time.sleep(0.05)


def test_a_copy_longer_than_its_lease_keeps_its_ports(
    make_scratch_vm, lab, agent_block, lab_vcenter_block, configured_catalog, nbd_port_range, tmp_path, monkeypatch
):
    name = make_scratch_vm(disks=2, size_mib=8)
    (vm,) = discover(lab_vcenter_block, [name])
    first = int(nbd_port_range.split("-")[0])
    # exactly one port per disk: any port the copy lost would be the only one a concurrent job could get
    monkeypatch.setenv("VMFERRY_NBD_PORT_RANGE", f"{first}-{first + 1}")
    monkeypatch.setenv("VMFERRY_PORT_LEASE_SECONDS", str(LEASE_SECONDS))
    targets = qcow2_targets(vm, tmp_path / "targets")
    # 16 MiB at 1 MiB/s: the copy runs several times as long as its leases
    thread, outcome = _copy_in_thread(
        name, targets, agent_block, lab_vcenter_block, bandwidth_limit_bytes_per_second=2 * 2**20
    )
    try:
        job = _running_copy(configured_catalog, thread)
        ours = {lease.port for lease in held_leases(configured_catalog, job.id)}
        assert ours == {first, first + 1}
        time.sleep(LEASE_SECONDS * 2)
        assert thread.is_alive(), "the copy was not longer than its leases"
        # renewed: still held by the copy, expiring in the future
        now = utcnow()
        assert all(lease.expires_at > now for lease in held_leases(configured_catalog, job.id))
        other = create_job(configured_catalog, "backup")
        with pytest.raises(PortRangeExhausted):
            lease_nbd_port.fn(other, targets[0])
        assert {lease.port for lease in held_leases(configured_catalog, job.id)} == ours
    finally:
        thread.join(300)
    assert "error" not in outcome, outcome.get("error")
    for target in targets:
        assert target_facts(target.file_path, tmp_path) == source_facts(lab, name, target.device_key, tmp_path)
    assert_nothing_left(configured_catalog, lab, name, [t.file_path for t in targets])


def test_a_failed_copy_releases_every_port_of_its_job(
    make_scratch_vm, lab, agent_block, lab_vcenter_block, configured_catalog, nbd_port_range, tmp_path
):
    name = make_scratch_vm(disks=2, size_mib=8)
    (vm,) = discover(lab_vcenter_block, [name])
    targets = qcow2_targets(vm, tmp_path / "targets")
    thread, outcome = _copy_in_thread(
        name, targets, agent_block, lab_vcenter_block, bandwidth_limit_bytes_per_second=2**20
    )
    try:
        job = _running_copy(configured_catalog, thread)
        # stands for a lease attempt whose answer was lost: the row is the job's, the flow never learnt its port
        stray = lease_port(
            configured_catalog, job.id, port_range=PortRange.parse(nbd_port_range), ttl=dt.timedelta(hours=1)
        )
        assert stray.port in {lease.port for lease in held_leases(configured_catalog, job.id)}
        with agent_block.client() as client:
            deadline = time.monotonic() + 60
            while True:  # the exports run before the agent has the job: cancel it once the agent knows it
                try:
                    client.cancel(job.id)  # the copy fails
                    break
                except AgentError:
                    assert time.monotonic() < deadline and thread.is_alive(), "the agent never had the job"
                    time.sleep(0.05)
    finally:
        thread.join(300)
    assert "error" in outcome
    assert held_leases(configured_catalog, job.id) == []
    assert_nothing_left(configured_catalog, lab, name, [t.file_path for t in targets])
