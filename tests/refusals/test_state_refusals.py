"""Refusals that depend on the VM's failover history in the catalog: failing over, replicating, committing,
reverting or cleaning up when the recorded state does not allow it. Nothing remote is touched before them."""

from __future__ import annotations

import pytest

from catalog.failovers import finish_failover, set_destination, start_failover
from catalog.inventory import RecordedVM, record_vm
from catalog.jobs import create_job
from catalog.replication import COMPLETE, EMPTY, UNKNOWN, record_volume, volumes_of_vm
from flows.cleanup import CleanupRefused, cleanup_failover
from flows.failover import LiveFailoverRefused, refuse_unless_ready
from flows.live_failover import LiveFailoverStateRefused, active_live_failover, revert_failover
from flows.replicate import refuse_incomplete_incremental, refuse_while_failed_over
from tasks.cloudstack import ReplicationRefused
from tests import factories
from tests.refusals.conftest import assert_refusal


@pytest.fixture
def web01(configured_catalog) -> RecordedVM:
    return record_vm(configured_catalog, factories.vm(factories.disk(2000), name="web01", uuid="u-web01"))


def _failover(catalog, vm: RecordedVM, mode: str, state: str, destination: str = "cs-vm-1") -> int:
    failover_id = start_failover(catalog, vm.vm_context_id, create_job(catalog, "failover"), mode)
    set_destination(catalog, failover_id, destination)
    finish_failover(catalog, failover_id, state, "failed-over")
    return failover_id


def test_a_live_failover_without_confirmation(web01):
    with pytest.raises(LiveFailoverRefused) as caught:
        refuse_unless_ready(web01, "live", confirm_live=False)
    assert_refusal(caught.value, "'web01'", "--mode live --yes")


@pytest.mark.parametrize(("mode", "fix"), [("test", "vmferry cleanup web01"), ("live", "vmferry revert web01 --yes")])
def test_a_failover_while_one_is_active(mode, fix, web01, configured_catalog):
    _failover(configured_catalog, web01, mode, "active")
    with pytest.raises(LiveFailoverRefused) as caught:
        refuse_unless_ready(web01, "test", confirm_live=False)
    assert_refusal(caught.value, "'web01'", "cs-vm-1", fix)


def test_a_failover_after_the_vm_was_migrated(web01, configured_catalog):
    _failover(configured_catalog, web01, "live", "committed")
    with pytest.raises(LiveFailoverRefused) as caught:
        refuse_unless_ready(web01, "test", confirm_live=False)
    assert_refusal(caught.value, "'web01'", "cs-vm-1", "nothing left to fail over")


@pytest.mark.parametrize(
    ("mode", "state", "fix"),
    [
        ("live", "committed", "its replication has stopped"),
        ("live", "active", "vmferry commit web01"),
        ("test", "active", "vmferry cleanup web01"),
    ],
)
def test_replicating_while_failed_over(mode, state, fix, web01, configured_catalog):
    _failover(configured_catalog, web01, mode, state)
    with pytest.raises(ReplicationRefused) as caught:
        refuse_while_failed_over(web01)
    assert_refusal(caught.value, "'web01'", "cs-vm-1", fix)


@pytest.mark.parametrize("state", [EMPTY, UNKNOWN])
def test_an_incremental_replication_onto_volumes_not_complete(state, configured_catalog):
    disks = [factories.disk(2000), factories.disk(2001, unit=1)]
    vm = record_vm(configured_catalog, factories.vm(*disks, name="web01", uuid="u-web01"))
    for n, disk in enumerate(vm.present_disks()):
        record_volume(
            configured_catalog, vm_disk_id=disk.vm_disk_id, volume_id=f"vol-{n}", zone_id="z", size_bytes=2**30,
            disk_generation=disk.generation, content_state=COMPLETE if n == 0 else state,
        )  # fmt: skip
    volumes = volumes_of_vm(configured_catalog, vm.vm_context_id)
    for kind in ("initial", "auto"):  # these copy in full whatever is not complete
        refuse_incomplete_incremental(vm, volumes, kind)
    refuse_incomplete_incremental(vm, [v for v in volumes if v.volume_id == "vol-0"], "incremental")
    with pytest.raises(ReplicationRefused) as caught:
        refuse_incomplete_incremental(vm, volumes, "incremental")
    assert_refusal(caught.value, "'web01'", "not complete", "vol-1", "run an initial (or auto) replication first")
    assert "vol-0" not in str(caught.value)


def test_commit_or_revert_after_a_commit(web01, configured_catalog):
    _failover(configured_catalog, web01, "live", "committed")
    with pytest.raises(LiveFailoverStateRefused) as caught:
        active_live_failover(web01, "revert")
    assert_refusal(caught.value, "'web01'", "cs-vm-1", "nothing to revert")


@pytest.mark.parametrize("history", ["never", "test"])
def test_commit_without_an_active_live_failover(history, web01, configured_catalog):
    if history == "test":
        _failover(configured_catalog, web01, "test", "active")
    with pytest.raises(LiveFailoverStateRefused) as caught:
        active_live_failover(web01, "commit")
    assert_refusal(caught.value, "'web01'", "no active live failover to commit", "--mode live --yes")


@pytest.mark.usefixtures("prefect_backend")
def test_a_revert_without_confirmation(web01, configured_catalog, cloudstack_block, lab_vcenter_block_stub):
    _failover(configured_catalog, web01, "live", "active")
    with pytest.raises(LiveFailoverStateRefused) as caught:
        revert_failover("web01", cloudstack_block, lab_vcenter_block_stub, confirm_revert=False)
    assert_refusal(caught.value, "'web01'", "cs-vm-1", "vmferry revert VM --yes")


@pytest.mark.usefixtures("prefect_backend")
@pytest.mark.parametrize(("state", "fix"), [("active", "vmferry revert web01 --yes"), ("committed", "committed")])
def test_cleanup_of_a_live_failover(state, fix, web01, configured_catalog, cloudstack_block):
    _failover(configured_catalog, web01, "live", state)
    with pytest.raises(CleanupRefused) as caught:
        cleanup_failover("web01", cloudstack_block)
    assert_refusal(caught.value, "'web01'", "cs-vm-1", "only rolls back test failovers", fix)


@pytest.fixture
def lab_vcenter_block_stub():
    """A VCenter block nobody listens at: the refusal comes before vCenter is asked anything."""
    from blocks.vcenter import VCenter

    return VCenter(host="127.0.0.1", port=9, username="nobody", password="x", thumbprint="00" * 32)
