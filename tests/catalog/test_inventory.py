"""Upserting discovered disks: row ids are stable, removals are marked, recycled keys get new rows."""

from __future__ import annotations

import multiprocessing
import threading

import pytest
from sqlalchemy import func, select

from catalog.db import open_catalog
from catalog.inventory import find_vm, record_vm, set_boot_disk
from catalog.models import VmContext, VmDisk
from tests.factories import DB3, disk, vm

PGTEST1 = vm(disk(2000, unit=0, label="OS"), disk(2001, unit=1, label="data"))


def ids_by_disk(recorded) -> dict[str, int]:
    return {d.disk_id: d.vm_disk_id for d in recorded.disks}


def test_same_disks_keep_their_ids_across_jobs(catalog):
    first = record_vm(catalog, PGTEST1)
    second = record_vm(catalog, PGTEST1)
    assert ids_by_disk(first) == ids_by_disk(second)
    assert {d.change for d in first.disks} == {"new"}
    assert {d.change for d in second.disks} == {"unchanged"}
    assert second.vm_context_id == first.vm_context_id
    with catalog.session() as session:
        assert session.scalar(select(func.count()).select_from(VmDisk)) == 2


def test_disk_ids_come_from_device_keys_not_positions(catalog):
    recorded = record_vm(catalog, DB3)
    assert sorted(d.disk_id for d in recorded.disks) == ["disk-203", "disk-204", "disk-255511522"]
    by_id = {d.disk_id: d for d in recorded.disks}
    # unit 0 repeats on both controllers and stays two disks
    assert by_id["disk-255511522"].unit_number == by_id["disk-204"].unit_number == 0
    assert by_id["disk-255511522"].controller_key != by_id["disk-204"].controller_key


def test_removed_disk_is_marked_absent_and_a_new_disk_gets_a_new_row(catalog):
    first = record_vm(catalog, PGTEST1)
    without_data = vm(disk(2000, unit=0, label="OS"), disk(2002, unit=2, label="new"))
    second = record_vm(catalog, without_data)
    by_id = {d.disk_id: d for d in second.disks}
    assert by_id["disk-2001"].present is False and by_id["disk-2001"].change == "removed"
    assert by_id["disk-2000"].vm_disk_id == ids_by_disk(first)["disk-2000"]
    assert by_id["disk-2002"].change == "new" and by_id["disk-2002"].vm_disk_id not in ids_by_disk(first).values()
    assert [d.disk_id for d in second.present_disks()] == ["disk-2000", "disk-2002"]


def test_recycled_key_on_another_disk_is_not_the_old_row(catalog):
    first = record_vm(catalog, PGTEST1)
    old_id = ids_by_disk(first)["disk-2001"]
    record_vm(catalog, vm(disk(2000, unit=0, label="OS")))
    replaced = vm(disk(2000, unit=0, label="OS"), disk(2001, unit=1, file_name="[datastore1] vm/another.vmdk"))
    third = record_vm(catalog, replaced)
    current = {d.disk_id: d for d in third.disks}
    assert current["disk-2001"].vm_disk_id != old_id
    assert current["disk-2001"].present and current["disk-2001"].change == "new"
    retired = next(d for d in third.disks if d.vm_disk_id == old_id)
    assert retired.disk_id == f"disk-2001~{old_id}" and not retired.present


def test_backing_uuid_decides_identity_when_reported(catalog):
    with_uuid = vm(disk(2000, backing_uuid="6000C29a-1"), name="real")
    first = record_vm(catalog, with_uuid)
    # a snapshot moves the backing to a delta file but the uuid stays: same disk
    moved = vm(disk(2000, backing_uuid="6000C29a-1", file_name="[datastore1] vm/disk-000001.vmdk"), name="real")
    assert ids_by_disk(record_vm(catalog, moved)) == ids_by_disk(first)
    swapped = vm(disk(2000, backing_uuid="6000C29b-2"), name="real")
    assert ids_by_disk(record_vm(catalog, swapped))["disk-2000"] != ids_by_disk(first)["disk-2000"]


def test_a_new_disk_with_the_same_key_file_name_and_size_is_told_apart_by_its_backing_uuid(catalog):
    # recorded before backing UUIDs were read: the first UUID seen is taken as the same disk's
    first = record_vm(catalog, vm(disk(2000), name="real"))
    seen = record_vm(catalog, vm(disk(2000, backing_uuid="6000C29a-0000-0000-0000-000000000001"), name="real"))
    assert ids_by_disk(seen) == ids_by_disk(first)
    # removed, and a new disk added under the same key, file name and size
    replaced = record_vm(catalog, vm(disk(2000, backing_uuid="6000C29b-0000-0000-0000-000000000002"), name="real"))
    old_id = ids_by_disk(first)["disk-2000"]
    current = {d.disk_id: d for d in replaced.disks}
    assert current["disk-2000"].vm_disk_id != old_id and current["disk-2000"].change == "new"
    assert current["disk-2000"].generation == 1 and current["disk-2000"].file_name == seen.disks[0].file_name
    retired = next(d for d in replaced.disks if d.vm_disk_id == old_id)
    assert retired.disk_id == f"disk-2000~{old_id}" and not retired.present


def test_a_returning_disk_gets_its_row_back(catalog):
    first = record_vm(catalog, PGTEST1)
    record_vm(catalog, vm(disk(2000, unit=0, label="OS")))
    back = record_vm(catalog, PGTEST1)
    assert ids_by_disk(back) == ids_by_disk(first)
    assert {d.disk_id: d.change for d in back.disks}["disk-2001"] == "returned"


def test_a_grown_disk_keeps_its_row_with_a_new_generation(catalog):
    first = record_vm(catalog, vm(disk(2000, backing_uuid="u-1"), disk(2001, unit=1, backing_uuid="u-2")))
    grown = vm(disk(2000, capacity_mib=128, backing_uuid="u-1"), disk(2001, unit=1, backing_uuid="u-2"))
    second = record_vm(catalog, grown)
    by_id = {d.disk_id: d for d in second.disks}
    assert by_id["disk-2000"].vm_disk_id == ids_by_disk(first)["disk-2000"]
    assert by_id["disk-2000"].generation == 2 and by_id["disk-2000"].change == "resized"
    assert by_id["disk-2001"].generation == 1


def test_without_a_backing_uuid_a_size_change_means_another_disk(catalog):
    first = record_vm(catalog, PGTEST1)
    regrown = vm(disk(2000, unit=0, label="OS"), disk(2001, unit=1, label="data", capacity_mib=96))
    second = record_vm(catalog, regrown)
    current = {d.disk_id: d for d in second.disks}
    assert current["disk-2001"].vm_disk_id != ids_by_disk(first)["disk-2001"]
    assert current["disk-2000"].vm_disk_id == ids_by_disk(first)["disk-2000"]


def test_boot_disk_from_boot_options_else_first_disk_else_operator(catalog):
    assert record_vm(catalog, DB3).boot_disk_id == "disk-255511522"  # bus 0, unit 0
    with_boot_order = DB3.model_copy(update={"boot_disk_key": 204})
    recorded = record_vm(catalog, with_boot_order)
    assert (recorded.boot_disk_id, recorded.boot_disk_source) == ("disk-204", "boot-options")
    set_boot_disk(catalog, recorded.vm_context_id, "disk-203")
    again = record_vm(catalog, with_boot_order)
    assert (again.boot_disk_id, again.boot_disk_source) == ("disk-203", "operator")
    assert [d.disk_id for d in again.disks if d.is_boot] == ["disk-203"]


def test_an_inventory_with_a_key_twice_is_refused(catalog):
    broken = vm(disk(2000, unit=0), disk(2000, unit=1))
    with pytest.raises(ValueError, match="device key"):
        record_vm(catalog, broken)
    with catalog.session() as session:
        assert session.scalar(select(func.count()).select_from(VmContext)) == 0


def test_find_vm_by_name_uuid_or_moref(catalog):
    recorded = record_vm(catalog, DB3)
    for handle in ("db3", "5012-db3", "vm-42"):
        assert find_vm(catalog, handle).vm_context_id == recorded.vm_context_id


def _assert_one_row_per_disk(catalog, results) -> None:
    assert len({tuple(sorted(ids_by_disk(r).items())) for r in results}) == 1
    with catalog.session() as session:
        assert session.scalar(select(func.count()).select_from(VmContext)) == 1
        assert session.scalar(select(func.count()).select_from(VmDisk)) == len(DB3.disks)


def test_eight_concurrent_discoveries_in_threads_give_one_row_per_disk(catalog):
    barrier = threading.Barrier(8)
    results, errors = [], []

    def discover() -> None:
        barrier.wait()
        try:
            results.append(record_vm(catalog, DB3))
        except Exception as exc:  # collected so the assertion shows every failure
            errors.append(exc)

    threads = [threading.Thread(target=discover) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(results) == 8
    _assert_one_row_per_disk(catalog, results)


def _discover_in_process(url: str, barrier, queue) -> None:
    own = open_catalog(url, migrate=False)
    barrier.wait()
    try:
        queue.put(("ok", record_vm(own, DB3).model_dump()))
    except Exception as exc:
        queue.put(("error", repr(exc)))


def test_eight_concurrent_discoveries_in_processes_give_one_row_per_disk(catalog, catalog_url):
    from catalog.inventory import RecordedVM

    context = multiprocessing.get_context("spawn")
    barrier, queue = context.Barrier(8), context.Queue()
    processes = [context.Process(target=_discover_in_process, args=(catalog_url, barrier, queue)) for _ in range(8)]
    for process in processes:
        process.start()
    outcomes = [queue.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    assert [kind for kind, _ in outcomes if kind != "ok"] == [], outcomes
    _assert_one_row_per_disk(catalog, [RecordedVM(**value) for _, value in outcomes])
