"""Recording discovered VMs and disks with upsert semantics: a disk's row id never changes while it exists.

Rules (docs/architecture.md, "Identity"):
- a disk is matched by ``disk_id`` (from the device key) within its VM context;
- if the key now belongs to a different physical disk (backing UUID differs, or where none is reported the
  base file name or the capacity), the old row is retired under a new ``disk_id`` and the new disk gets a
  new row, so history and restore points keep pointing at the disk they were taken from;
- a disk no longer reported is marked absent, never deleted or reused;
- a disk with the same backing UUID that changed size keeps its row, with ``generation`` bumped so its
  change-tracking chain is void.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel
from sqlalchemy import select, update
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from catalog.db import Catalog
from catalog.errors import UnknownRecord
from catalog.models import VmContext, VmDisk, VmNic, utcnow
from catalog.views import view
from common.inventory import ObservedDisk, ObservedVM
from common.names import retired_disk_id

DiskChange = Literal["new", "unchanged", "updated", "resized", "returned", "replaced", "removed"]


class RecordedDisk(BaseModel):
    vm_disk_id: int
    disk_id: str
    device_key: int
    controller_key: int
    bus: str
    bus_number: int
    unit_number: int | None
    capacity_bytes: int
    label: str | None
    file_name: str
    present: bool
    generation: int
    is_boot: bool
    change: DiskChange


class RecordedNic(BaseModel):
    device_key: int
    mac_address: str | None
    network: str  # the port group's name
    adapter: str
    label: str | None


class RecordedVM(BaseModel):
    vm_context_id: int
    name: str
    instance_uuid: str
    moref: str
    boot_disk_id: str | None
    boot_disk_source: str | None
    cpu_count: int | None = None
    memory_mb: int | None = None
    cbt_enabled: bool = False
    disks: list[RecordedDisk]
    nics: list[RecordedNic] = []  # present ones, in device-key (source) order

    def present_disks(self) -> list[RecordedDisk]:
        return [disk for disk in self.disks if disk.present]


def _same_physical_disk(row: VmDisk, seen: ObservedDisk) -> bool:
    if row.backing_uuid and seen.backing_uuid:
        return row.backing_uuid == seen.backing_uuid
    # Without a backing UUID (older records, a server that reports none) a new disk can reuse both the key and
    # the file name of a removed one; a different size is then the only sign, and treating it as a new disk is
    # the safe side (full copy).
    return row.base_file_name == seen.base_file_name and row.capacity_bytes == seen.capacity_bytes


def _context_values(vm: ObservedVM) -> dict[str, object]:
    now = utcnow()
    return {
        "vcenter": vm.vcenter,
        "instance_uuid": vm.instance_uuid,
        "moref": vm.moref,
        "name": vm.name,
        "guest_os": vm.guest_os,
        "cpu_count": vm.cpu_count,
        "memory_mb": vm.memory_mb,
        "power_state": vm.power_state,
        "cbt_enabled": vm.cbt_enabled,
        "present": True,
        "last_seen_at": now,
        "updated_at": now,
    }


def _upsert_context(session: Session, vm: ObservedVM) -> int:
    """Insert-or-update in one statement, so concurrent discoveries of a new VM cannot both insert it."""
    values = _context_values(vm)
    insert_values = {**values, "created_at": values["updated_at"], "state": "discovered"}
    update_values = {k: v for k, v in values.items() if k not in ("vcenter", "instance_uuid")}
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        statement = sqlite_insert(VmContext).values(**insert_values)
        statement = statement.on_conflict_do_update(index_elements=["vcenter", "instance_uuid"], set_=update_values)
    elif dialect in ("mysql", "mariadb"):
        statement = mysql_insert(VmContext).values(**insert_values).on_duplicate_key_update(**update_values)
    else:
        raise NotImplementedError(f"catalog upsert is not implemented for {dialect}")
    session.execute(statement)
    # The row lock taken here serialises concurrent disk syncs of the same VM (SQLite: BEGIN IMMEDIATE).
    context_id = session.execute(
        select(VmContext.id)
        .where(VmContext.vcenter == vm.vcenter, VmContext.instance_uuid == vm.instance_uuid)
        .with_for_update()
    ).scalar_one()
    return context_id


def _disk_values(seen: ObservedDisk) -> dict[str, object]:
    return {
        "device_key": seen.device_key,
        "controller_key": seen.controller_key,
        "bus": seen.bus,
        "bus_number": seen.bus_number,
        "unit_number": seen.unit_number,
        "capacity_bytes": seen.capacity_bytes,
        "backing_uuid": seen.backing_uuid,
        "file_name": seen.file_name,
        "base_file_name": seen.base_file_name,
        "label": seen.label,
        "disk_mode": seen.disk_mode,
    }


def _sync_disks(session: Session, context_id: int, vm: ObservedVM) -> dict[int, DiskChange]:
    now = utcnow()
    rows = {row.disk_id: row for row in session.scalars(select(VmDisk).where(VmDisk.vm_context_id == context_id))}
    changes: dict[int, DiskChange] = {}
    seen_ids = set()
    for seen in vm.disks:
        seen_ids.add(seen.disk_id)
        row = rows.get(seen.disk_id)
        if row is not None and not _same_physical_disk(row, seen):
            # The key was recycled by another disk: retire the old row under a name no key can take.
            row.disk_id = retired_disk_id(row.disk_id, row.id)
            row.present = False
            row.removed_at = row.removed_at or now
            changes[row.id] = "replaced"
            session.flush()
            row = None
        if row is None:
            row = VmDisk(
                vm_context_id=context_id,
                disk_id=seen.disk_id,
                generation=1,
                present=True,
                first_seen_at=now,
                last_seen_at=now,
                **_disk_values(seen),
            )
            session.add(row)
            session.flush()
            changes[row.id] = "new"
            continue
        change: DiskChange = "unchanged"
        if not row.present:
            change = "returned"
        elif row.capacity_bytes != seen.capacity_bytes:
            change = "resized"
        elif any(getattr(row, name) != value for name, value in _disk_values(seen).items()):
            change = "updated"
        if row.capacity_bytes != seen.capacity_bytes:
            row.generation += 1
        for name, value in _disk_values(seen).items():
            setattr(row, name, value)
        row.present = True
        row.removed_at = None
        row.last_seen_at = now
        changes[row.id] = change
    for disk_id, row in rows.items():
        if disk_id not in seen_ids and row.present:
            row.present = False
            row.removed_at = now
            changes[row.id] = "removed"
    return changes


def _sync_nics(session: Session, context_id: int, vm: ObservedVM) -> None:
    """Keep one row per adapter (by device key); an adapter no longer reported is marked absent, not deleted."""
    now = utcnow()
    rows = {row.device_key: row for row in session.scalars(select(VmNic).where(VmNic.vm_context_id == context_id))}
    for seen in vm.nics:
        row = rows.get(seen.device_key)
        if row is None:
            row = VmNic(vm_context_id=context_id, device_key=seen.device_key)
            session.add(row)
        row.mac_address = seen.mac_address
        row.network = seen.network
        row.adapter = seen.adapter
        row.label = seen.label
        row.present = True
        row.last_seen_at = now
    reported = {nic.device_key for nic in vm.nics}
    for key, row in rows.items():
        if key not in reported:
            row.present = False


def _choose_boot_disk(context: VmContext, vm: ObservedVM) -> None:
    if context.boot_disk_source == "operator" and any(d.disk_id == context.boot_disk_id for d in vm.disks):
        return
    by_key = {d.device_key: d for d in vm.disks}
    if vm.boot_disk_key is not None and vm.boot_disk_key in by_key:
        context.boot_disk_id = by_key[vm.boot_disk_key].disk_id
        context.boot_disk_source = "boot-options"
    elif vm.disks:
        context.boot_disk_id = vm.disks_in_boot_order()[0].disk_id
        context.boot_disk_source = "first-disk"
    else:
        context.boot_disk_id = None
        context.boot_disk_source = None


def _recorded(session: Session, context_id: int, changes: dict[int, DiskChange]) -> RecordedVM:
    context = session.get(VmContext, context_id)
    if context is None:
        raise UnknownRecord(f"vm context {context_id} does not exist")
    disks = session.scalars(select(VmDisk).where(VmDisk.vm_context_id == context_id).order_by(VmDisk.id))
    nics = session.scalars(
        select(VmNic).where(VmNic.vm_context_id == context_id, VmNic.present.is_(True)).order_by(VmNic.device_key)
    )
    return view(
        RecordedVM,
        context,
        vm_context_id=context.id,
        disks=[
            view(
                RecordedDisk,
                d,
                vm_disk_id=d.id,
                is_boot=d.present and d.disk_id == context.boot_disk_id,
                change=changes.get(d.id, "unchanged"),
            )
            for d in disks
        ],
        nics=[view(RecordedNic, n) for n in nics],
    )


def record_vm(catalog: Catalog, vm: ObservedVM) -> RecordedVM:
    """Upsert one VM and its disks as observed now. Safe to run concurrently for the same VM."""
    _check_observation(vm)

    def work(session: Session) -> RecordedVM:
        context_id = _upsert_context(session, vm)
        changes = _sync_disks(session, context_id, vm)
        _sync_nics(session, context_id, vm)
        context = session.get(VmContext, context_id)
        assert context is not None
        _choose_boot_disk(context, vm)
        session.flush()
        return _recorded(session, context_id, changes)

    # A concurrent first insert of the same disk surfaces as a unique-key clash; the re-run sees that row.
    return catalog.write(work, retry_integrity=True)


def _check_observation(vm: ObservedVM) -> None:
    keys = [d.device_key for d in vm.disks]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ValueError(
            f"VM {vm.name!r} ({vm.instance_uuid}) reports device key(s) {duplicates} on more than one disk; "
            "refusing to record an inventory that would map two disks to one row"
        )


def mark_vms_missing(catalog: Catalog, vcenter: str, seen_instance_uuids: set[str]) -> list[str]:
    """Mark VMs of ``vcenter`` that a full discovery did not see as absent; returns their names."""

    def work(session: Session) -> list[str]:
        missing = session.scalars(
            select(VmContext).where(VmContext.vcenter == vcenter, VmContext.present.is_(True))
        ).all()
        names = []
        for context in missing:
            if context.instance_uuid not in seen_instance_uuids:
                context.present = False
                names.append(context.name)
        return names

    return catalog.write(work)


def get_vm(catalog: Catalog, vm_context_id: int) -> RecordedVM:
    with catalog.session() as session:
        return _recorded(session, vm_context_id, {})


def find_vm(catalog: Catalog, name_or_uuid: str, vcenter: str | None = None) -> RecordedVM:
    """Find a VM by instance UUID, moref or name; a name that matches several VMs is an error."""
    with catalog.session() as session:
        query = select(VmContext).where(
            (VmContext.instance_uuid == name_or_uuid)
            | (VmContext.moref == name_or_uuid)
            | (VmContext.name == name_or_uuid)
        )
        if vcenter is not None:
            query = query.where(VmContext.vcenter == vcenter)
        matches = session.scalars(query).all()
        if not matches:
            raise UnknownRecord(f"no VM {name_or_uuid!r} in the catalog; run discovery first")
        if len(matches) > 1:
            ids = ", ".join(f"{m.name} ({m.instance_uuid})" for m in matches)
            raise UnknownRecord(f"{name_or_uuid!r} matches several VMs: {ids}; name one by instance UUID")
        return _recorded(session, matches[0].id, {})


def context_of_disk(catalog: Catalog, vm_disk_id: int) -> int | None:
    """The VM context a disk row belongs to; None when the catalog has no such row."""
    with catalog.session() as session:
        row = session.get(VmDisk, vm_disk_id)
        return row.vm_context_id if row is not None else None


def set_boot_disk(catalog: Catalog, vm_context_id: int, disk_id: str) -> None:
    """The operator's choice of OS disk; discovery keeps it while that disk exists."""

    def work(session: Session) -> None:
        disk = session.scalar(
            select(VmDisk).where(
                VmDisk.vm_context_id == vm_context_id, VmDisk.disk_id == disk_id, VmDisk.present.is_(True)
            )
        )
        if disk is None:
            raise UnknownRecord(f"VM context {vm_context_id} has no present disk {disk_id!r}")
        session.execute(
            update(VmContext)
            .where(VmContext.id == vm_context_id)
            .values(boot_disk_id=disk_id, boot_disk_source="operator")
        )

    catalog.write(work)


def list_vms(catalog: Catalog) -> list[RecordedVM]:
    with catalog.session() as session:
        ids = session.scalars(select(VmContext.id).order_by(VmContext.name, VmContext.id)).all()
        return [_recorded(session, context_id, {}) for context_id in ids]
