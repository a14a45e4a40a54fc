"""Cleanup reports only what it did: nothing to clean is a plain answer with no artifact."""

from __future__ import annotations

import pytest

from flows.cleanup import cleanup_failover
from flows.failover import failover_vm
from flows.replicate import replicate_vm

pytestmark = pytest.mark.usefixtures("prefect_backend", "nbd_port_range")


def cleanup_artifacts(vm_name: str) -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from common.names import artifact_key

    wanted = ArtifactFilter(key=ArtifactFilterKey(any_=[artifact_key("cleanup", vm_name)]))
    with get_client(sync_client=True) as client:
        return len(client.read_artifacts(artifact_filter=wanted))


def test_cleanup_reports_only_what_it_did(
    lab, cloudstack_block, agent_block, lab_vcenter_block, configured_catalog, make_scratch_vm
):
    name = make_scratch_vm(disks=2)
    replicate_vm(name, cloudstack_block, agent_block, lab_vcenter_block)
    earlier = cleanup_artifacts(name)

    never = cleanup_failover(name, cloudstack_block)  # never failed over: nothing to do, nothing claimed
    assert (never.removed_vms, never.volumes_returned, never.did_anything) == ([], [], False)
    assert cleanup_artifacts(name) == earlier

    failover = failover_vm(name, cloudstack_block)
    first = cleanup_failover(name, cloudstack_block)
    assert first.removed_vms == [failover.destination_vm_id]
    assert sorted(first.volumes_returned) == sorted(d.volume_id for d in failover.devices)
    assert cleanup_artifacts(name) == earlier + 1

    again = cleanup_failover(name, cloudstack_block)  # twice: the second run did nothing and says so
    assert (again.removed_vms, again.volumes_returned) == ([], [])
    assert sorted(again.volumes_detached) == sorted(first.volumes_detached)
    assert cleanup_artifacts(name) == earlier + 1
