"""Replication refusals reached through the flow against the lab: the volumes may be created, but none is attached
to a hub nor written when the run cannot be what was asked."""

from __future__ import annotations

import pytest

from catalog.inventory import find_vm
from catalog.replication import volumes_of_vm
from flows.replicate import replicate_vm
from tasks.cloudstack import ReplicationRefused
from tests.refusals.conftest import assert_refusal

pytestmark = pytest.mark.usefixtures("prefect_backend", "nbd_port_range")


def test_a_first_replication_asked_to_be_incremental(
    lab, cloudstack_sim, cloudstack_block, agent_block, lab_vcenter_block, configured_catalog
):
    attaches = cloudstack_sim.calls["attachVolume"]
    with pytest.raises(ReplicationRefused) as caught:
        replicate_vm("pgtest1", cloudstack_block, agent_block, lab_vcenter_block, kind="incremental")
    assert_refusal(caught.value, "'pgtest1'", "not complete", "run an initial (or auto) replication first")
    volumes = volumes_of_vm(configured_catalog, find_vm(configured_catalog, "pgtest1").vm_context_id)
    assert volumes and all(v.volume_id in str(caught.value) for v in volumes)
    assert all(v.content_state == "empty" and v.attached_vm_id is None for v in volumes)
    assert cloudstack_sim.calls["attachVolume"] == attaches  # refused before any volume went to the hub
