"""Helpers of the data-path tests: byte-level facts about sources and targets, and leftovers."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from catalog.exports import live_exports
from catalog.ports import held_leases
from clients.qemu import create_qcow2
from infra.lab.disks import sfdisk_dump
from infra.lab.mutate import read_disk_bytes
from infra.lab.vcenter import session
from vmferry.targets import DiskTarget


def raw_of(image: Path, out: Path) -> Path:
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(image), str(out)], check=True)
    return out


def facts(raw: Path) -> tuple[str, str]:
    """sha256 of the whole disk and its partition table as `sfdisk -d` prints it."""
    return hashlib.sha256(raw.read_bytes()).hexdigest(), sfdisk_dump(raw)


def source_facts(lab, vm_name: str, device_key: int, scratch: Path) -> tuple[str, str]:
    raw = scratch / f"source-{vm_name}-{device_key}.raw"
    raw.write_bytes(read_disk_bytes(lab.vcenter, vm_name, device_key))
    return facts(raw)


def target_facts(image: Path, scratch: Path) -> tuple[str, str]:
    return facts(raw_of(image, scratch / f"{image.stem}-{image.parent.name}.raw"))


def qcow2_targets(vm, directory: Path, *, backing: dict[int, Path] | None = None) -> list[DiskTarget]:
    """A new qcow2 per present disk (an overlay on ``backing[vm_disk_id]`` when given)."""
    directory.mkdir(parents=True, exist_ok=True)
    targets = []
    for disk in vm.present_disks():
        path = directory / f"{disk.disk_id}.qcow2"
        base = (backing or {}).get(disk.vm_disk_id)
        create_qcow2(path, disk.capacity_bytes, backing_file=base)
        targets.append(
            DiskTarget(
                vm_disk_id=disk.vm_disk_id,
                disk_id=disk.disk_id,
                device_key=disk.device_key,
                capacity_bytes=disk.capacity_bytes,
                file_path=path,
                target_is_zero=base is None,
            )
        )
    return targets


def our_qemu_nbd_pids(paths: list[Path]) -> list[int]:
    """Live qemu-nbd processes serving any of these files."""
    found = []
    wanted = {str(p) for p in paths}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and argv and argv[0].endswith(b"qemu-nbd") and wanted & {a.decode() for a in argv}:
            found.append(int(proc.name))
    return found


def vm_snapshot_names(lab, vm_name: str) -> list[str]:
    from infra.lab.seed import require_vm

    with session(lab.vcenter) as si:
        vm = require_vm(si, vm_name)
        names = []
        stack = list(vm.snapshot.rootSnapshotList) if vm.snapshot else []
        while stack:
            tree = stack.pop()
            names.append(tree.name)
            stack.extend(tree.childSnapshotList)
        return names


def assert_nothing_left(catalog, lab, vm_name: str, files: list[Path]) -> None:
    assert our_qemu_nbd_pids(files) == []
    assert held_leases(catalog) == []
    assert live_exports(catalog) == []
    assert vm_snapshot_names(lab, vm_name) == []


def running_agent_jobs(client, kind: str) -> list:
    """The agent's status of the catalog's running jobs of ``kind``. The agent has no job listing in its
    contract, so each is read by its id; one not submitted to the agent yet is left out."""
    from catalog import default_catalog
    from catalog.jobs import list_jobs
    from clients.agent import AgentError

    found = []
    for job in list_jobs(default_catalog()):
        if job.kind == kind and job.state == "running":
            try:
                found.append(client.status(job.id))
            except AgentError:
                pass
    return found
