"""Guest preparation in a failover, against the simulator's KVM host (boot_vms): virt-v2v-in-place really runs on
the OS volume. The lab's busybox guest without virtio drivers is one it cannot convert (no distribution to
inspect), so preparation is skipped with that reason, and the guest, as on real KVM, does not find its disks.
tests/lab/test_guest_prep.py shows a guest virt-v2v-in-place does convert booting only after preparation."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from catalog.inventory import find_vm
from common.names import artifact_key
from flows.failover import failover_vm
from flows.replicate import replicate_vm
from infra.lab.cloudstack import CloudStackSimulator
from infra.lab.guest import seed_guest_vm
from tests.failover.test_guest_boot import wait_for_guest

pytestmark = pytest.mark.usefixtures("prefect_backend", "nbd_port_range")


@pytest.fixture
def cloudstack_sim(tmp_path: Path):
    with CloudStackSimulator(tmp_path / "cloudstack", job_delay=0.02, boot_vms=True) as sim:
        yield sim


def artifact(key: str) -> str:
    with get_client(sync_client=True) as client:
        response = client.request(
            "POST", "/artifacts/filter", json={"artifacts": {"key": {"any_": [key]}}, "sort": "ID_DESC", "limit": 1}
        )
    (found,) = response.json()
    return str(found["data"])


def test_a_guest_without_virtio_drivers_does_not_boot_and_preparation_says_why(
    lab, cloudstack_sim, cloudstack_block, agent_block, lab_vcenter_block, configured_catalog
):
    name = f"plain-{uuid.uuid4().hex[:8]}"
    seed_guest_vm(lab.vcenter, lab.workdir, name, data_disks=1, virtio=False)
    replicate_vm(name, cloudstack_block, agent_block, lab_vcenter_block)
    find_vm(configured_catalog, name)  # discovered and recorded by the replication

    result = failover_vm(name, cloudstack_block)  # preparation on (the default)

    log = artifact(artifact_key("guest-prep", name) + "-log")
    assert "skipped" in log and "found no operating system it can convert" in log
    assert "virt-v2v-in-place: error: inspection could not detect the source guest" in log  # its own words
    report = wait_for_guest(cloudstack_sim, result.destination_vm_id)
    assert not report.booted and report.disks == ()  # the boot loader ran from virtio, the kernel found no disk
    assert "Loading /vmlinuz" in cloudstack_sim.vm_console(result.destination_vm_id)
