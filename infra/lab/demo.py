"""The main job on the built-in lab.

Start the lab (vcsim, seeded) and the reference agent; discover the VMs and print every VM's disks; take a
full backup of pgtest1, change data in the lab VM, take an incremental, verify both restore points and
restore a single file from the incremental; replicate pgtest1 into CloudStack volumes (our simulator), sync
it incrementally, run a test failover (root on device 0, data after it), print the device table and clean
the failover up. Run by ``bash infra/bootstrap.sh demo`` (``python -m infra.lab.demo``).

The tables are the ones the ``vmferry`` command prints (vmferry/cli/output.py); the blocks are the ones
``vmferry --lab`` builds from the lab's description (vmferry/cli/selection.py).
"""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.table import Table

from flows.replicate import ReplicationResult
from infra.lab.__main__ import ensure_lab_up
from infra.lab.vcenter import LabVCenter
from vmferry.cli.output import devices_table, disks_table, points_table, table
from vmferry.cli.selection import lab_cloudstack_block, lab_repository_block, lab_vcenter_block


def main() -> int:
    from blocks.agent import Agent
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
    vcenter = lab_vcenter_block(state["vcenter"])
    recorded = discover(vcenter, ["pgtest1", "db3"])
    for vm in recorded:
        console.print(disks_table(vm))
    console.print("Disk ids are the device keys vcsim reports; run the demo again: every catalog id stays.")

    agent_process = start_agent(lab, lab_dir() / "agent")
    try:
        agent = Agent(url=agent_process.url, token=agent_process.token)
        repository = lab_repository_block()
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
    console.print(
        devices_table(f"test failover of pgtest1: CloudStack VM {failover.destination_vm_id}", failover.devices)
    )
    cleaned = cleanup_failover("pgtest1", cloudstack)
    console.print(
        f"cleanup: test VM(s) {cleaned.removed_vms} destroyed, {len(cleaned.volumes_detached)} volumes left detached"
    )
    return 0


def replication_table(initial: ReplicationResult, sync: ReplicationResult) -> Table:
    synced = {d.vm_disk_id: d for d in sync.disks}
    return table(
        "pgtest1 replicated into CloudStack volumes (initial, then a sync after 1 MiB changed)",
        ("disk", "catalog id", "volume", "hub device", "initial MiB written", "sync MiB written"),
        (
            (
                disk.disk_id,
                disk.vm_disk_id,
                disk.volume_id,
                disk.device_path,
                f"{disk.bytes_written / 2**20:.1f}",
                f"{synced[disk.vm_disk_id].bytes_written / 2**20:.1f}",
            )
            for disk in initial.disks
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
