"""The catalog's tables.

Identity rules (see docs/architecture.md): a source disk is one ``vm_disks`` row for its whole life, keyed by
``(vm_context_id, disk_id)`` where ``disk_id`` comes from the vSphere device key. Every other table that
speaks of a disk points at that row's ``id`` — never at an index, a unit number or a file name.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Stores naive UTC (SQLite and MariaDB have no time zones) and hands back aware UTC datetimes."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect):  # noqa: ANN201 - SQLAlchemy type engine
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("catalog timestamps must be timezone-aware")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        return None if value is None else value.replace(tzinfo=dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class VmContext(Base):
    """One source VM, keyed by its vCenter and its instance UUID."""

    __tablename__ = "vm_contexts"
    __table_args__ = (UniqueConstraint("vcenter", "instance_uuid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    vcenter: Mapped[str] = mapped_column(String(255))
    instance_uuid: Mapped[str] = mapped_column(String(64))
    moref: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(255))
    guest_os: Mapped[str | None] = mapped_column(String(255))
    cpu_count: Mapped[int | None] = mapped_column(Integer)
    memory_mb: Mapped[int | None] = mapped_column(Integer)
    power_state: Mapped[str | None] = mapped_column(String(32))
    cbt_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    boot_disk_id: Mapped[str | None] = mapped_column(String(64))
    # "boot-options" (read from vSphere), "first-disk" (bus/controller/unit order) or "operator"
    boot_disk_source: Mapped[str | None] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(32), default="discovered")
    present: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    last_seen_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    disks: Mapped[list[VmDisk]] = relationship(back_populates="vm_context", order_by="VmDisk.id")


class VmDisk(Base):
    """One source disk. Its ``id`` never changes while the disk exists (the predecessor's went 760 -> 764)."""

    __tablename__ = "vm_disks"
    __table_args__ = (UniqueConstraint("vm_context_id", "disk_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    vm_context_id: Mapped[int] = mapped_column(ForeignKey("vm_contexts.id", ondelete="RESTRICT"))
    # "disk-<device key>"; a retired row (its key recycled by another disk) becomes "disk-<key>~<row id>"
    disk_id: Mapped[str] = mapped_column(String(64))
    device_key: Mapped[int] = mapped_column(BigInteger)
    controller_key: Mapped[int] = mapped_column(BigInteger)
    bus: Mapped[str] = mapped_column(String(16))
    bus_number: Mapped[int] = mapped_column(Integer)
    unit_number: Mapped[int | None] = mapped_column(Integer)
    capacity_bytes: Mapped[int] = mapped_column(BigInteger)
    backing_uuid: Mapped[str | None] = mapped_column(String(64))
    file_name: Mapped[str] = mapped_column(String(1024))
    base_file_name: Mapped[str] = mapped_column(String(1024))
    label: Mapped[str | None] = mapped_column(String(255))
    disk_mode: Mapped[str | None] = mapped_column(String(64))
    # bumped when the disk changes under the same identity (e.g. grown): its change-tracking chain is void
    generation: Mapped[int] = mapped_column(Integer, default=1)
    present: Mapped[bool] = mapped_column(Boolean, default=True)
    first_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    removed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    vm_context: Mapped[VmContext] = relationship(back_populates="disks")


class VmNic(Base):
    """One network adapter of a source VM and the port group it is on: failover maps it to a CloudStack network."""

    __tablename__ = "vm_nics"
    __table_args__ = (UniqueConstraint("vm_context_id", "device_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    vm_context_id: Mapped[int] = mapped_column(ForeignKey("vm_contexts.id", ondelete="RESTRICT"))
    device_key: Mapped[int] = mapped_column(BigInteger)
    mac_address: Mapped[str | None] = mapped_column(String(32))
    network: Mapped[str] = mapped_column(String(255))
    adapter: Mapped[str] = mapped_column(String(64), default="")
    label: Mapped[str | None] = mapped_column(String(255))
    present: Mapped[bool] = mapped_column(Boolean, default=True)
    last_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Job(Base):
    """A unit of work (discovery, backup, replication, failover...), and the owner of what it leases."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    vm_context_id: Mapped[int | None] = mapped_column(ForeignKey("vm_contexts.id", ondelete="RESTRICT"))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    error: Mapped[str | None] = mapped_column(Text)
    flow_run_id: Mapped[str | None] = mapped_column(String(36))
    hub: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class PortLease(Base):
    """A held NBD port. The row exists exactly while the port is held; its primary key makes it unique."""

    __tablename__ = "port_leases"

    port: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="RESTRICT"))
    purpose: Mapped[str | None] = mapped_column(String(255))
    leased_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class NbdExport(Base):
    """A qemu-nbd process we started: the ledger the reconciler sweeps. Always linked to its disk."""

    __tablename__ = "nbd_exports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    vm_disk_id: Mapped[int] = mapped_column(ForeignKey("vm_disks.id", ondelete="RESTRICT"), nullable=False)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="RESTRICT"))
    export_name: Mapped[str] = mapped_column(String(255))
    bind_address: Mapped[str] = mapped_column(String(64))
    port: Mapped[int] = mapped_column(Integer)
    file_path: Mapped[str] = mapped_column(String(4096))
    pid: Mapped[int | None] = mapped_column(Integer)
    hub: Mapped[str | None] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16), default="starting")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    stopped_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    vm_disk: Mapped[VmDisk] = relationship()


class JobResource(Base):
    """Something a job creates outside the catalog (an output file, a temp directory, a process, a snapshot),
    recorded before it exists, so the reconciler can remove what a killed job left: the ledger is the proof
    that it is ours, never its name."""

    __tablename__ = "job_resources"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="RESTRICT"))
    kind: Mapped[str] = mapped_column(String(32))  # "file", "directory", "qemu-nbd", "snapshot"
    path: Mapped[str | None] = mapped_column(String(4096))
    pid: Mapped[int | None] = mapped_column(Integer)
    # the snapshot's moref and its VM's moref, or the image a qemu-nbd serves
    ref: Mapped[str | None] = mapped_column(String(4096))
    owner_ref: Mapped[str | None] = mapped_column(String(255))
    hub: Mapped[str | None] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16), default="planned")  # planned, present, removed
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    removed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class RestorePoint(Base):
    """A VM-level backup: all disks from one snapshot. Only ``committed`` points are restorable."""

    __tablename__ = "restore_points"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    vm_context_id: Mapped[int] = mapped_column(ForeignKey("vm_contexts.id", ondelete="RESTRICT"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="RESTRICT"))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("restore_points.id", ondelete="RESTRICT"))
    repository: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    committed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    disks: Mapped[list[RestorePointDisk]] = relationship(back_populates="restore_point")


class RestorePointDisk(Base):
    """One disk of a restore point."""

    __tablename__ = "restore_point_disks"
    __table_args__ = (UniqueConstraint("restore_point_id", "vm_disk_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    restore_point_id: Mapped[int] = mapped_column(ForeignKey("restore_points.id", ondelete="RESTRICT"))
    vm_disk_id: Mapped[int] = mapped_column(ForeignKey("vm_disks.id", ondelete="RESTRICT"))
    disk_generation: Mapped[int] = mapped_column(Integer)
    # relative to the repository root, so a repository can be moved
    file_path: Mapped[str] = mapped_column(String(1024))
    backing_id: Mapped[int | None] = mapped_column(ForeignKey("restore_point_disks.id", ondelete="RESTRICT"))
    capacity_bytes: Mapped[int] = mapped_column(BigInteger)
    bytes_written: Mapped[int | None] = mapped_column(BigInteger)
    change_id: Mapped[str | None] = mapped_column(String(255))
    checksum: Mapped[str | None] = mapped_column(String(128))
    # "empty" (created by this point's job), "complete" (committed), "unknown": as replicated_volumes
    content_state: Mapped[str] = mapped_column(String(16), default="unknown", server_default="unknown")

    restore_point: Mapped[RestorePoint] = relationship(back_populates="disks")


class ReplicatedVolume(Base):
    """The CloudStack volume that receives one source disk; created once, reused by every sync."""

    __tablename__ = "replicated_volumes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    vm_disk_id: Mapped[int] = mapped_column(ForeignKey("vm_disks.id", ondelete="RESTRICT"), unique=True)
    volume_id: Mapped[str] = mapped_column(String(64), unique=True)
    zone_id: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    disk_generation: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(32), default="created")
    attached_vm_id: Mapped[str | None] = mapped_column(String(64))
    device_id: Mapped[int | None] = mapped_column(Integer)
    device_path: Mapped[str | None] = mapped_column(String(1024))
    last_change_id: Mapped[str | None] = mapped_column(String(255))
    last_synced_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    name: Mapped[str | None] = mapped_column(String(255))
    # the volume carries our ownership tags (installation, VM instance UUID, disk row and generation)
    owner_tagged: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # "empty": created by job content_job_id and never written; "complete": holds the disk at last_change_id;
    # "unknown": a copy into it started and did not finish (or nothing is known): never skip zeros into it
    content_state: Mapped[str] = mapped_column(String(16), default="unknown", server_default="unknown")
    content_job_id: Mapped[str | None] = mapped_column(String(36))
    # its disk is gone (removed, or its key recycled by another disk): never written again, the operator's to delete
    retired_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class Installation(Base):
    """This catalog's identity: one row, made once. Its id is the owner tag on every volume vmferry creates."""

    __tablename__ = "installation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    installation_id: Mapped[str] = mapped_column(String(36), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Failover(Base):
    """A test or live failover of one VM into CloudStack."""

    __tablename__ = "failovers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    vm_context_id: Mapped[int] = mapped_column(ForeignKey("vm_contexts.id", ondelete="RESTRICT"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="RESTRICT"))
    mode: Mapped[str] = mapped_column(String(8))
    destination_vm_id: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(32), default="pending")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    volumes: Mapped[list[FailoverVolume]] = relationship(back_populates="failover")


class FailoverVolume(Base):
    """Which volume went on which device of the destination VM: the plan and what CloudStack reported."""

    __tablename__ = "failover_volumes"
    __table_args__ = (
        UniqueConstraint("failover_id", "vm_disk_id"),
        UniqueConstraint("failover_id", "planned_device_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    failover_id: Mapped[int] = mapped_column(ForeignKey("failovers.id", ondelete="RESTRICT"))
    vm_disk_id: Mapped[int] = mapped_column(ForeignKey("vm_disks.id", ondelete="RESTRICT"))
    replicated_volume_id: Mapped[int] = mapped_column(ForeignKey("replicated_volumes.id", ondelete="RESTRICT"))
    planned_device_id: Mapped[int] = mapped_column(Integer)
    actual_device_id: Mapped[int | None] = mapped_column(Integer)
    is_root: Mapped[bool] = mapped_column(Boolean, default=False)

    failover: Mapped[Failover] = relationship(back_populates="volumes")
