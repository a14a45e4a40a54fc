"""Discovery against the real vcsim lab: ids from device keys, stable rows, added and removed disks."""

from __future__ import annotations

import uuid

import pytest
from prefect.client.orchestration import get_client

from blocks.vcenter import VCenter
from catalog.jobs import list_jobs
from common.vsphere import CertificateNotTrusted, VSphereClient, VSphereError
from flows.discover import discover
from infra.lab.mutate import add_disk, remove_disk
from infra.lab.vcenter import session

pytestmark = pytest.mark.usefixtures("prefect_backend")


def by_name(recorded):
    return {vm.name: vm for vm in recorded}


def test_disk_ids_are_the_device_keys_vcsim_reports(lab, lab_vcenter_block, configured_catalog):
    recorded = by_name(discover(lab_vcenter_block, ["pgtest1", "db3"]))
    for vm_name in ("pgtest1", "db3"):
        expected = lab.manifest.vm(vm_name)
        vm = recorded[vm_name]
        assert vm.instance_uuid == expected.instance_uuid
        assert sorted(d.disk_id for d in vm.disks) == sorted(f"disk-{d.device_key}" for d in expected.disks)
        for disk in expected.disks:
            row = next(r for r in vm.disks if r.device_key == disk.device_key)
            assert (row.controller_key, row.bus_number, row.unit_number) == (
                disk.controller_key,
                disk.bus_number,
                disk.unit_number,
            )
            assert row.capacity_bytes == disk.capacity_bytes
            assert row.bus == "scsi"
        # the OS disk comes from the VM's boot order, not from a key convention
        assert vm.boot_disk_id == f"disk-{expected.boot_disk_key}" and vm.boot_disk_source == "boot-options"
    # vcsim's keys are nothing like 2000 + n: a key convention would have mapped these wrongly
    assert all(d.device_key < 2000 for d in recorded["db3"].disks)
    # unit 0 appears on both of db3's controllers, as two disks
    db3_units = [(d.controller_key, d.unit_number) for d in recorded["db3"].disks]
    assert len(set(db3_units)) == 3 and [u for _, u in db3_units].count(0) == 2


def test_rediscovery_keeps_every_row_id(lab_vcenter_block, configured_catalog):
    first = by_name(discover(lab_vcenter_block))
    second = by_name(discover(lab_vcenter_block))
    assert set(first) >= {"pgtest1", "db3"}
    for name, vm in first.items():
        assert [(d.disk_id, d.vm_disk_id) for d in second[name].disks] == [(d.disk_id, d.vm_disk_id) for d in vm.disks]
        assert second[name].vm_context_id == vm.vm_context_id
        assert {d.change for d in second[name].disks} <= {"unchanged"}
    jobs = list_jobs(configured_catalog)
    assert [job.state for job in jobs] == ["succeeded", "succeeded"]
    assert all(job.kind == "discovery" and job.flow_run_id for job in jobs)


@pytest.fixture
def scratch_vm(make_scratch_vm):
    return make_scratch_vm()


def test_added_and_removed_disks_show_up(lab, lab_vcenter_block, configured_catalog, scratch_vm):
    before = discover(lab_vcenter_block, [scratch_vm])[0]
    (os_disk,) = before.disks
    with session(lab.vcenter) as si:
        new_key = add_disk(si, scratch_vm, 2 * 2**20)
    added = {d.disk_id: d for d in discover(lab_vcenter_block, [scratch_vm])[0].disks}
    assert added[os_disk.disk_id].vm_disk_id == os_disk.vm_disk_id
    assert added[f"disk-{new_key}"].change == "new" and added[f"disk-{new_key}"].present

    with session(lab.vcenter) as si:
        remove_disk(si, scratch_vm, new_key)
    removed = {d.disk_id: d for d in discover(lab_vcenter_block, [scratch_vm])[0].disks}
    assert removed[f"disk-{new_key}"].present is False and removed[f"disk-{new_key}"].change == "removed"
    assert removed[os_disk.disk_id].present and removed[os_disk.disk_id].vm_disk_id == os_disk.vm_disk_id

    # vcsim recycles the removed key for the next new disk: that is another disk and gets another row
    with session(lab.vcenter) as si:
        recycled_key = add_disk(si, scratch_vm, 3 * 2**20)
    assert recycled_key == new_key
    after = discover(lab_vcenter_block, [scratch_vm])[0]
    current = next(d for d in after.disks if d.disk_id == f"disk-{new_key}")
    retired = next(d for d in after.disks if d.vm_disk_id == added[f"disk-{new_key}"].vm_disk_id)
    assert current.vm_disk_id != retired.vm_disk_id and current.present and current.capacity_bytes == 3 * 2**20
    assert retired.disk_id == f"disk-{new_key}~{retired.vm_disk_id}" and not retired.present


def test_a_wrong_thumbprint_is_refused_before_login(lab):
    vc = lab.vcenter
    endpoint = VCenter(
        host=vc.host, port=vc.port, username=vc.user, password=vc.password, thumbprint="AB:" * 19 + "CD"
    ).endpoint()
    with pytest.raises(CertificateNotTrusted, match="pinned thumbprint"):
        VSphereClient(endpoint).connect()


def test_a_failed_discovery_is_recorded_as_a_failed_job(lab, configured_catalog):
    vc = lab.vcenter
    wrong = VCenter(host=vc.host, port=vc.port, username=vc.user, password="wrong", thumbprint=vc.thumbprint)
    with pytest.raises(VSphereError):
        discover.with_options(retries=0)(wrong, ["pgtest1"])
    (job,) = list_jobs(configured_catalog)
    assert job.state == "failed" and "rejected the login" in job.error and "Error" not in job.error  # words


def test_saved_block_round_trips_and_hides_the_password(lab_vcenter_block):
    name = f"lab-{uuid.uuid4().hex[:8]}"
    lab_vcenter_block.save(name)
    loaded = VCenter.load(name)
    secret = lab_vcenter_block.password.get_secret_value()
    assert loaded.password.get_secret_value() == secret
    assert secret not in repr(loaded) and secret not in loaded.model_dump_json()
    with get_client(sync_client=True) as client:
        document = client.read_block_document_by_name(name, "vmferry-vcenter", include_secrets=False)
    assert secret not in str(document.data)


def test_discover_accepts_a_saved_block_by_name(lab_vcenter_block, configured_catalog):
    name = f"lab-{uuid.uuid4().hex[:8]}"
    lab_vcenter_block.save(name)
    assert [vm.name for vm in discover(name, ["db3"])] == ["db3"]
