"""Failover and cleanup against our CloudStack simulator, from volumes replicated out of the vcsim lab."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from prefect.settings import PREFECT_API_URL

from catalog.failovers import READY_FOR_FAILOVER, context_state, failovers_of
from catalog.inventory import find_vm
from catalog.replication import volumes_of_vm
from clients.cloudstack import CloudStackError, device_path_for_volume
from flows.cleanup import cleanup_failover
from flows.failover import failover_vm
from infra.lab.mutate import read_disk_bytes
from infra.lab.seed import require_vm
from infra.lab.vcenter import session
from tests.slots import free_vm_slot

pytestmark = pytest.mark.usefixtures("prefect_backend", "nbd_port_range")


def volume_sha(sim, volume_id: str, capacity: int) -> str:
    with open(sim.volume_file(volume_id), "rb") as handle:
        return hashlib.sha256(handle.read(capacity)).hexdigest()


def source_shas(lab, vm_name: str, catalog) -> dict[int, tuple[str, int]]:
    vm = find_vm(catalog, vm_name)
    out = {}
    for disk in vm.present_disks():
        data = read_disk_bytes(lab.vcenter, vm_name, disk.device_key)
        out[disk.vm_disk_id] = (hashlib.sha256(data).hexdigest(), len(data))
    return out


def assert_left_detached(sim, cloudstack_block, catalog, vm_name: str, expected: dict[int, tuple[str, int]]) -> None:
    vm = find_vm(catalog, vm_name)
    assert context_state(catalog, vm.vm_context_id) == READY_FOR_FAILOVER
    with cloudstack_block.client() as client:
        test_vms = [v for v in client.list_vms() if v.name.startswith(f"vmferry-vm{vm.vm_context_id}-")]
        assert test_vms == []
        for volume in volumes_of_vm(catalog, vm.vm_context_id):
            answer = client.get_volume(volume.volume_id)
            # volumes rest detached (Ready) between syncs, as replication leaves them
            assert answer.virtual_machine_id is None and answer.type == "DATADISK" and answer.state == "Ready"
            assert not device_path_for_volume(sim.dev_root, volume.volume_id).exists()
            sha, capacity = expected[volume.vm_disk_id]
            assert volume_sha(sim, volume.volume_id, capacity) == sha  # data intact


@pytest.mark.parametrize(
    ("vm_name", "disks", "device_ids"), [("pgtest1", 2, [0, 1]), (None, 4, [0, 1, 2, 4]), (None, 1, [0])]
)
def test_test_failover_then_cleanup(
    vm_name, disks, device_ids, replicated, lab, cloudstack_sim, cloudstack_block, configured_catalog
):
    name = replicated(vm_name, disks)
    expected = source_shas(lab, name, configured_catalog)
    vm = find_vm(configured_catalog, name)
    result = failover_vm(name, cloudstack_block)
    assert [d.device_id for d in result.devices] == device_ids
    assert result.devices[0].role == "root (OS)" and result.devices[0].disk_id == next(
        d.disk_id for d in vm.present_disks() if d.is_boot
    )
    with cloudstack_block.client() as client:
        destination = client.get_vm(result.destination_vm_id)
        on_vm = {v.id: (v.device_id, v.type) for v in client.list_volumes(virtual_machine_id=result.destination_vm_id)}
    assert destination.state == "Running"
    assert (destination.cpu_number, destination.memory_mb) == (vm.cpu_count, vm.memory_mb)  # sized like the source
    assert on_vm == {d.volume_id: (d.device_id, "ROOT" if d.device_id == 0 else "DATADISK") for d in result.devices}
    for device in result.devices:  # each volume holds its own source disk
        sha, capacity = expected[device.vm_disk_id]
        assert volume_sha(cloudstack_sim, device.volume_id, capacity) == sha
    (record,) = failovers_of(configured_catalog, vm.vm_context_id)
    assert record.state == "active" and [v.actual_device_id for v in record.volumes] == device_ids
    assert context_state(configured_catalog, vm.vm_context_id) == "failed-over-test"

    cleanup_failover(name, cloudstack_block)
    assert_left_detached(cloudstack_sim, cloudstack_block, configured_catalog, name, expected)
    cleanup_failover(name, cloudstack_block)  # twice in a row: same clean end state
    assert_left_detached(cloudstack_sim, cloudstack_block, configured_catalog, name, expected)


STEPS = [
    ("attachVolume", 1),  # the OS volume onto a hub for guest preparation
    ("detachVolume", 1),  # ... and off it again
    ("deployVirtualMachine", 1),
    ("detachVolume", 2),  # the template's root volume
    ("attachVolume", 2),  # our OS volume as root
    ("attachVolume", 3),  # first data volume
    ("attachVolume", 4),  # second data volume
    ("startVirtualMachine", 1),
]


@pytest.mark.parametrize(("command", "nth"), STEPS, ids=[f"{c}-{n}" for c, n in STEPS])
def test_a_cloudstack_failure_at_any_step_rolls_back(
    command, nth, replicated, lab, cloudstack_sim, cloudstack_block, configured_catalog
):
    name = replicated(disks=3)
    expected = source_shas(lab, name, configured_catalog)
    for attempt in range(3):  # tasks retry twice: the fault must outlast the retries
        cloudstack_sim.inject_fault(
            command,
            nth=nth + attempt,
            kind="job-failure" if command != "deployVirtualMachine" else "error",
            errortext=f"injected failure of {command}",
        )
    with pytest.raises(CloudStackError, match=f"injected failure of {command}"):
        failover_vm(name, cloudstack_block)
    cloudstack_sim.clear_faults()
    assert_left_detached(cloudstack_sim, cloudstack_block, configured_catalog, name, expected)
    (record,) = failovers_of(configured_catalog, find_vm(configured_catalog, name).vm_context_id)
    assert record.state == "rolled-back"


def test_cleanup_after_a_failover_process_was_killed(
    replicated, lab, cloudstack_sim, cloudstack_block, configured_catalog
):
    name = replicated(disks=3)
    expected = source_shas(lab, name, configured_catalog)
    cloudstack_sim.job_delay = 1.0  # slow jobs, so the kill lands between attachments
    env = {**os.environ, "VMFERRY_CATALOG_URL": configured_catalog.url, "PREFECT_API_URL": PREFECT_API_URL.value()}
    arguments = {"vm": name, "cloudstack": json.loads(cloudstack_block.model_dump_json())}
    arguments["cloudstack"]["secret_key"] = cloudstack_block.secret_key.get_secret_value()
    process = subprocess.Popen([sys.executable, "-m", "tests.failover.run_failover", json.dumps(arguments)], env=env)
    try:
        deadline = time.monotonic() + 120
        vm = find_vm(configured_catalog, name)
        while True:
            attached = [v for v in volumes_of_vm(configured_catalog, vm.vm_context_id)]
            with cloudstack_block.client() as client:
                moved = [
                    v
                    for v in attached
                    if client.get_volume(v.volume_id).virtual_machine_id not in (None, cloudstack_block.hub_vm_id)
                ]
            if moved:
                break
            assert process.poll() is None and time.monotonic() < deadline, "the failover never moved a volume"
            time.sleep(0.1)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    cloudstack_sim.job_delay = 0.02
    # the killed failover held the VM's slots; the harness repossesses no lease
    free_vm_slot(vm.instance_uuid, vm.vm_context_id)
    cleanup_failover(name, cloudstack_block)
    assert_left_detached(cloudstack_sim, cloudstack_block, configured_catalog, name, expected)


def test_live_failover_powers_the_source_off(
    replicated, lab, cloudstack_sim, cloudstack_block, agent_block, lab_vcenter_block, configured_catalog
):
    name = replicated(disks=2)
    result = failover_vm(
        name, cloudstack_block, mode="live", vcenter=lab_vcenter_block, agent=agent_block, confirm_live=True
    )
    with session(lab.vcenter) as si:
        assert str(require_vm(si, name).runtime.powerState) == "poweredOff"
    expected = source_shas(lab, name, configured_catalog)
    with cloudstack_block.client() as client:
        assert client.get_vm(result.destination_vm_id).state == "Running"
        on_vm = client.list_volumes(virtual_machine_id=result.destination_vm_id)
    assert sorted(v.device_id for v in on_vm) == [0, 1]
    for device in result.devices:
        sha, capacity = expected[device.vm_disk_id]
        assert volume_sha(cloudstack_sim, device.volume_id, capacity) == sha
    assert context_state(configured_catalog, find_vm(configured_catalog, name).vm_context_id) == "failed-over-live"
    from flows.cleanup import CleanupRefused

    with pytest.raises(CleanupRefused, match="live"):
        cleanup_failover(name, cloudstack_block)
