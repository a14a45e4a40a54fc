"""The main job on the built-in lab: start the lab, discover its VMs, print every VM's disks.

Run by ``bash infra/bootstrap.sh demo``; later issues extend it with backup, replication and failover.
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from blocks.vcenter import VCenter
from catalog.inventory import RecordedVM
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


def main() -> int:
    from flows.discover import discover

    # Wide enough for the file column even when stdout is not a terminal (CI logs, pipes).
    console = Console(width=max(Console().width, 150))
    state, reused = ensure_lab_up()
    lab = LabVCenter.from_dict(state["vcenter"])
    console.print(f"lab vCenter {'reused' if reused else 'started'} at https://{lab.host}:{lab.port}/sdk")
    recorded = discover(lab_vcenter_block(lab), ["pgtest1", "db3"])
    for vm in recorded:
        console.print(disks_table(vm))
    console.print("Disk ids are the device keys vcsim reports; run the demo again: every catalog id stays.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
