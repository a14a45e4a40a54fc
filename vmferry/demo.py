"""The main job on the built-in lab.

Start the lab (vcsim, seeded) and the reference agent; discover the VMs and print every VM's disks; take a
full backup of pgtest1, change data in the lab VM, take an incremental, verify both restore points and
restore a single file from the incremental. Run by ``bash infra/bootstrap.sh demo``.
"""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.table import Table

from blocks.vcenter import VCenter
from catalog.inventory import RecordedVM
from catalog.restore_points import PointView
from infra.lab.__main__ import ensure_lab_up
from infra.lab.vcenter import LabVCenter


def lab_vcenter_block(lab: LabVCenter) -> VCenter:
    return VCenter(host=lab.host, port=lab.port, username=lab.user, password=lab.password, thumbprint=lab.thumbprint)


def disks_table(vm: RecordedVM) -> Table:
    table = Table(title=f"{vm.name}  (instance {vm.instance_uuid}, catalog id {vm.vm_context_id})")
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
    from flows.discover import discover
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
