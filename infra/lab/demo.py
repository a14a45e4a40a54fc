"""The main job on the built-in lab.

Start the lab (vcsim, seeded) and the reference agent; discover the VMs and print every VM's disks; take a
full backup of pgtest1, change data in the lab VM, take an incremental, verify both restore points and
restore a single file from the incremental; replicate pgtest1 into CloudStack volumes (our simulator), sync
it incrementally, run a test failover (root on device 0, data after it), print the device table and clean
the failover up. Run by ``bash infra/bootstrap.sh demo``.
"""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.table import Table

from blocks.cloudstack import CloudStack
from blocks.vcenter import VCenter
from catalog.inventory import RecordedVM
from catalog.restore_points import PointView
from flows.replicate import ReplicationResult
from infra.lab.__main__ import ensure_lab_up
from infra.lab.vcenter import LabVCenter


def lab_vcenter_block(lab: LabVCenter) -> VCenter:
    return VCenter(host=lab.host, port=lab.port, username=lab.user, password=lab.password, thumbprint=lab.thumbprint)


def disks_table(vm: RecordedVM) -> Table:
    cbt = "CBT on" if vm.cbt_enabled else "CBT OFF: incrementals read whole disks (discover --enable-cbt)"
    table = Table(title=f"{vm.name}  (instance {vm.instance_uuid}, catalog id {vm.vm_context_id}, {cbt})")
    for column in ("catalog id", "disk id", "label", "controller", "bus:unit", "capacity", "boot", "file"):
        table.add_column(column)
    for disk in vm.present_disks():
        table.add_row(
            str(disk.id),
            disk.disk_id,
            disk.label or "",
            str(disk.controller_key),
            f"{disk.bus}{disk.bus_number}:{disk.unit_number}",
            f"{disk.capacity_bytes / 2**20:.0f} MiB",
            "OS" if disk.is_boot else "",
            disk.file_name,
        )
    return table


def points_table(title: str, points: list[PointView]) -> Table:
    table = Table(title=title)
    for column in ("point", "kind", "parent", "disk", "catalog id", "file", "MiB written", "sha256"):
        table.add_column(column)
    for point in points:
        for disk in point.disks:
            table.add_row(
                str(point.id),
                point.kind,
                str(point.parent_id or ""),
                disk.disk_id,
                str(disk.vm_disk_id),
                disk.file_path,
                f"{(disk.bytes_written or 0) / 2**20:.1f}",
                (disk.checksum or "")[:16],
            )
    return table


def main() -> int:
    from blocks.agent import Agent
    from blocks.repository import BackupRepository
    from flows.backup import backup_vm
    from flows.cleanup import cleanup_failover
    from flows.discover import discover
    from flows.failover import failover_vm
    from flows.replicate import replicate_vm
    from flows.restore import restore_files
    from flows.verify import verify_restore_point
    from infra.lab.agent import start_agent
    from infra.lab.mutate import write_disk_bytes
    from infra.lab.paths import lab_dir
    from vmferry.settings import get_settings

    # Wide enough for the file column even when stdout is not a terminal (CI logs, pipes).
    console = Console(width=max(Console().width, 150))
    state, reused = ensure_lab_up()
    lab = LabVCenter.from_dict(state["vcenter"])
    console.print(f"lab vCenter {'reused' if reused else 'started'} at https://{lab.host}:{lab.port}/sdk")
    vcenter = lab_vcenter_block(lab)
    recorded = discover(vcenter, ["pgtest1", "db3"])
    for vm in recorded:
        console.print(disks_table(vm))
    console.print("Disk ids are the device keys vcsim reports; run the demo again: every catalog id stays.")

    agent_process = start_agent(lab, lab_dir() / "agent")
    try:
        agent = Agent(url=agent_process.url, token=agent_process.token)
        repository = BackupRepository(name="demo", path=str(get_settings().data_dir / "repository"))
        full = backup_vm("pgtest1", repository, agent, vcenter, kind="full")
        pgtest1 = next(vm for vm in recorded if vm.name == "pgtest1")
        data_disk = next(d for d in pgtest1.present_disks() if not d.is_boot)
        # New data in the guest: 1 MiB at 40 MiB of the data disk (its second, raw partition).
        write_disk_bytes(lab, "pgtest1", data_disk.device_key, 40 * 2**20, os.urandom(2**20))
        incremental = backup_vm("pgtest1", repository, agent, vcenter, kind="incremental")
        cloudstack = lab_cloudstack_block(state["cloudstack"]["info"])
        initial = replicate_vm("pgtest1", cloudstack, agent, vcenter)
        write_disk_bytes(lab, "pgtest1", data_disk.device_key, 41 * 2**20, os.urandom(2**20))
        sync = replicate_vm("pgtest1", cloudstack, agent, vcenter)
    finally:
        agent_process.stop()
    console.print(
        points_table("pgtest1 restore points (full, then incremental after 1 MiB changed)", [full, incremental])
    )
    for point in (full, incremental):
        verdicts = verify_restore_point(point.id, repository)
        console.print(f"restore point {point.id}: " + ", ".join(f"{v.disk_id} ok" for v in verdicts if v.ok))
    os_disk = next(d for d in pgtest1.present_disks() if d.is_boot)
    destination = get_settings().data_dir / "restored-files" / f"point-{incremental.id}"
    (restored,) = restore_files(
        incremental.id, os_disk.disk_id, 2, ["/etc/vmferry-lab.txt"], str(destination), repository, overwrite=True
    )
    console.print(f"restored /etc/vmferry-lab.txt from point {incremental.id} to {restored}: {restored.read_text()!r}")

    console.print(replication_table(initial, sync))
    failover = failover_vm("pgtest1", cloudstack, mode="test")
    devices = Table(title=f"test failover of pgtest1: CloudStack VM {failover.destination_vm_id}")
    for column in ("device id", "role", "disk", "catalog id", "volume"):
        devices.add_column(column)
    for device in failover.devices:
        devices.add_row(str(device.device_id), device.role, device.disk_id, str(device.vm_disk_id), device.volume_id)
    console.print(devices)
    cleaned = cleanup_failover("pgtest1", cloudstack)
    console.print(
        f"cleanup: test VM(s) {cleaned.removed_vms} destroyed, {len(cleaned.volumes_detached)} volumes left detached"
    )
    return 0


def lab_cloudstack_block(info: dict[str, object]) -> CloudStack:
    return CloudStack(
        endpoint=str(info["url"]),
        api_key=str(info["api_key"]),
        secret_key=str(info["secret_key"]),
        zone_id=str(info["zone_id"]),
        disk_offering_id=str(info["custom_disk_offering_id"]),
        # the custom offering: failover VMs get the source's CPUs and memory
        service_offering_id=str(info.get("custom_service_offering_id") or info["service_offering_id"]),
        template_id=str(info["template_id"]),
        hub_vm_id=str(info["hub_vm_id"]),
        device_root=str(info["dev_root"]),
    )


def replication_table(initial: ReplicationResult, sync: ReplicationResult) -> Table:
    table = Table(title="pgtest1 replicated into CloudStack volumes (initial, then a sync after 1 MiB changed)")
    for column in ("disk", "catalog id", "volume", "hub device", "initial MiB written", "sync MiB written"):
        table.add_column(column)
    synced = {d.vm_disk_id: d for d in sync.disks}
    for disk in initial.disks:
        table.add_row(
            disk.disk_id,
            str(disk.vm_disk_id),
            disk.volume_id,
            disk.device_path,
            f"{disk.bytes_written / 2**20:.1f}",
            f"{synced[disk.vm_disk_id].bytes_written / 2**20:.1f}",
        )
    return table


if __name__ == "__main__":
    sys.exit(main())
