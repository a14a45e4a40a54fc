"""The vcsim lab: seeded VMs, real disk content, the snapshot fixes, and the helpers later tests rely on."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from pyVim.task import WaitForTask
from pyVmomi import vim

from infra.lab import dsfiles
from infra.lab.disks import read_known_file, sfdisk_dump
from infra.lab.fixtures import RunningLab
from infra.lab.mutate import add_disk, disk_sha256, read_disk_bytes, remove_disk, write_disk_bytes
from infra.lab.seed import require_vm, scsi_controllers, virtual_disks
from infra.lab.vcenter import (
    ThumbprintMismatchError,
    _is_vcsim_process,
    connect,
    pinned_ssl_context,
    session,
    start_vcsim,
    stop_vcsim,
)

pytestmark = pytest.mark.lab

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def downloaded(lab: RunningLab, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """Every seeded disk's flat extent, fetched back through the /folder API."""
    out = tmp_path_factory.mktemp("downloaded")
    images = {}
    with session(lab.vcenter) as si:
        cookie = dsfiles.session_cookie(si)
        for vm in lab.manifest.vms:
            for disk in vm.disks:
                target = out / f"{vm.name}-{disk.label}.raw"
                dsfiles.download(lab.vcenter, disk.flat_path, target, cookie=cookie)
                images[(vm.name, disk.label)] = target
    return images


def test_vms_have_expected_disks_and_controllers(lab: RunningLab) -> None:
    with session(lab.vcenter) as si:
        pg = require_vm(si, "pgtest1")
        pg_ctrl = {c.key: c.busNumber for c in scsi_controllers(pg)}
        pg_disks = virtual_disks(pg)
        assert len(pg_disks) == 2
        assert {pg_ctrl[d.controllerKey] for d in pg_disks} == {0}
        assert sorted(d.unitNumber for d in pg_disks) == [0, 1]

        db = require_vm(si, "db3")
        db_ctrl = {c.key: c.busNumber for c in scsi_controllers(db)}
        assert sorted(db_ctrl.values()) == [0, 1]
        db_disks = virtual_disks(db)
        assert len(db_disks) == 3
        assert sorted((db_ctrl[d.controllerKey], d.unitNumber) for d in db_disks) == [(0, 0), (0, 1), (1, 0)]


def test_manifest_matches_what_vcenter_reports(lab: RunningLab) -> None:
    with session(lab.vcenter) as si:
        for record in lab.manifest.vms:
            vm = require_vm(si, record.name)
            assert vm.config.instanceUuid == record.instance_uuid
            assert vm._moId == record.moref
            live = {d.key: d for d in virtual_disks(vm)}
            keys = [d.device_key for d in record.disks]
            assert len(set(keys)) == len(keys)
            assert set(keys) == set(live)
            for disk in record.disks:
                device = live[disk.device_key]
                assert device.controllerKey == disk.controller_key
                assert device.unitNumber == disk.unit_number
                assert device.capacityInKB * 1024 == disk.capacity_bytes
                assert device.backing.fileName == disk.descriptor_path
            # vcsim stores the boot order the lab sets: the OS disk, by its real key.
            assert record.boot_disk_key == record.disk("OS").device_key
            order = vm.config.bootOptions.bootOrder
            assert [d.deviceKey for d in order] == [record.disk("OS").device_key]
    all_keys = [(vm.name, d.device_key) for vm in lab.manifest.vms for d in vm.disks]
    assert len(set(all_keys)) == 5


def test_disk_content_and_partition_tables(lab: RunningLab, downloaded: dict[tuple[str, str], Path]) -> None:
    dumps = {}
    for vm in lab.manifest.vms:
        for disk in vm.disks:
            image = downloaded[(vm.name, disk.label)]
            assert image.stat().st_size == disk.capacity_bytes
            assert hashlib.sha256(image.read_bytes()).hexdigest() == disk.sha256
            dump = sfdisk_dump(image)
            assert dump == disk.sfdisk_dump
            dumps[(vm.name, disk.label)] = dump
    assert len(set(dumps.values())) == len(dumps)
    assert len({d.sha256 for vm in lab.manifest.vms for d in vm.disks}) == 5
    labels = {(vm.name, d.label): d.label_type for vm in lab.manifest.vms for d in vm.disks}
    assert set(labels.values()) == {"gpt", "dos"}


def test_known_files_at_recorded_partitions(
    lab: RunningLab, downloaded: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    seen_fs = set()
    for vm in lab.manifest.vms:
        for disk in vm.disks:
            image = downloaded[(vm.name, disk.label)]
            names = {f.path for f in disk.known_files}
            assert {"/etc/vmferry-lab.txt", "/vmferry-lab.txt"} & names
            for known in disk.known_files:
                data = read_known_file(image, known, tmp_path)
                assert hashlib.sha256(data).hexdigest() == known.sha256
                if known.path.endswith("vmferry-lab.txt"):
                    assert data == f"{vm.name} disk {disk.label}\n".encode()
                seen_fs.add(known.filesystem)
    assert seen_fs == {"ext4", "fat"}


def test_ranged_get_returns_the_slice(lab: RunningLab, downloaded: dict[tuple[str, str], Path], tmp_path: Path) -> None:
    disk = lab.manifest.vm("db3").disk("data2")
    with session(lab.vcenter) as si:
        dsfiles.download(
            lab.vcenter,
            disk.flat_path,
            tmp_path / "slice",
            cookie=dsfiles.session_cookie(si),
            byte_range=(MIB, 2 * MIB - 1),
        )
    assert (tmp_path / "slice").read_bytes() == downloaded[("db3", "data2")].read_bytes()[MIB : 2 * MIB]


def test_disks_have_zero_regions(downloaded: dict[tuple[str, str], Path]) -> None:
    block = MIB
    for image in downloaded.values():
        data = image.read_bytes()
        zero_blocks = sum(1 for i in range(0, len(data), block) if not data[i : i + block].strip(b"\0"))
        assert zero_blocks >= 1, image


def test_snapshot_create_remove_and_read(lab: RunningLab) -> None:
    with session(lab.vcenter) as si:
        vm = require_vm(si, "db3")
        assert vm.snapshot is None
        task = vm.CreateSnapshot_Task(
            name="vmferry-test", description="tool=vmferry job=t1", memory=False, quiesce=False
        )
        WaitForTask(task)
        snapshot = task.info.result
        assert vm.snapshot.currentSnapshot == snapshot
        assert [s.name for s in vm.snapshot.rootSnapshotList] == ["vmferry-test"]
        snap_keys = {d.key for d in snapshot.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)}
        assert snap_keys == {d.device_key for d in lab.manifest.vm("db3").disks}

        task = snapshot.RemoveSnapshot_Task(removeChildren=False, consolidate=True)
        WaitForTask(task)
        assert task.info.entity == vm
        assert vm.snapshot is None
        assert not vm.runtime.consolidationNeeded

        # Two snapshots, remove the child, then the rest with RemoveAllSnapshots.
        first = vm.CreateSnapshot_Task(name="a", description="", memory=False, quiesce=False)
        WaitForTask(first)
        second = vm.CreateSnapshot_Task(name="b", description="", memory=False, quiesce=False)
        WaitForTask(second)
        WaitForTask(second.info.result.RemoveSnapshot_Task(removeChildren=False, consolidate=True))
        assert vm.snapshot is not None
        assert vm.snapshot.currentSnapshot == first.info.result
        WaitForTask(vm.RemoveAllSnapshots_Task())
        assert vm.snapshot is None

        # vcsim renumbers its file layout keys while snapshots exist; unpatched, removing a snapshot then
        # deleted whichever disk file had inherited the snapshot's key (db3's data2 descriptor, here)
        cookie = dsfiles.session_cookie(si)
        for disk in virtual_disks(vm):
            assert (dsfiles.stat_size(lab.vcenter, disk.backing.fileName, cookie=cookie) or 0) > 0
            assert (dsfiles.stat_size(lab.vcenter, dsfiles.flat_path(disk.backing.fileName), cookie=cookie) or 0) > 0


def test_add_write_read_remove_disk(lab: RunningLab) -> None:
    with session(lab.vcenter) as si:
        db = require_vm(si, "db3")
        second_bus = next(c for c in scsi_controllers(db) if c.busNumber == 1)
        before = {d.key for d in virtual_disks(db)}
        key = add_disk(si, "db3", 4 * MIB, controller_key=second_bus.key)
        assert key not in before
        new = next(d for d in virtual_disks(db) if d.key == key)
        assert new.controllerKey == second_bus.key
        assert new.unitNumber == 1
        assert new.capacityInKB * 1024 == 4 * MIB
        other = add_disk(si, "pgtest1", 2 * MIB)
        assert other not in {d.device_key for d in lab.manifest.vm("pgtest1").disks}

    assert read_disk_bytes(lab.vcenter, "db3", key) == bytes(4 * MIB)
    payload = os.urandom(4096)
    new_sha = write_disk_bytes(lab.vcenter, "db3", key, MIB, payload)
    data = read_disk_bytes(lab.vcenter, "db3", key)
    assert data[MIB : MIB + 4096] == payload
    assert hashlib.sha256(data).hexdigest() == new_sha == disk_sha256(lab.vcenter, "db3", key)

    with session(lab.vcenter) as si:
        flat = dsfiles.flat_path(next(d for d in virtual_disks(require_vm(si, "db3")) if d.key == key).backing.fileName)
        remove_disk(si, "db3", key)
        remove_disk(si, "pgtest1", other)
        assert key not in {d.key for d in virtual_disks(require_vm(si, "db3"))}
        assert len(virtual_disks(require_vm(si, "pgtest1"))) == 2
        assert dsfiles.stat_size(lab.vcenter, flat, cookie=dsfiles.session_cookie(si)) is None


def test_reseed_restores_content_and_adds_nothing(lab: RunningLab) -> None:
    data_disk = lab.manifest.vm("pgtest1").disk("data")
    write_disk_bytes(lab.vcenter, "pgtest1", data_disk.device_key, 0, b"\xff" * 512)
    assert disk_sha256(lab.vcenter, "pgtest1", data_disk.device_key) != data_disk.sha256

    again = lab.reseed()
    with session(lab.vcenter) as si:
        assert len(virtual_disks(require_vm(si, "pgtest1"))) == 2
        assert len(virtual_disks(require_vm(si, "db3"))) == 3
        assert len(scsi_controllers(require_vm(si, "db3"))) == 2
    for before, after in zip(lab.manifest.vms, again.vms, strict=True):
        assert (before.name, before.instance_uuid) == (after.name, after.instance_uuid)
        for old, new in zip(before.disks, after.disks, strict=True):
            assert (old.device_key, old.descriptor_path) == (new.device_key, new.descriptor_path)
            if (before.name, old.label) != ("pgtest1", "data"):
                # Untouched disks keep their content and manifest entry.
                assert old == new
    restored = again.vm("pgtest1").disk("data")
    assert disk_sha256(lab.vcenter, "pgtest1", restored.device_key) == restored.sha256
    assert restored.sfdisk_dump == data_disk.sfdisk_dump
    # Later tests in the session compare against the manifest they were given.
    lab.manifest.vm("pgtest1").disks[lab.manifest.vm("pgtest1").disks.index(data_disk)] = restored


def test_thumbprint_is_pinned(lab: RunningLab) -> None:
    vc = lab.vcenter
    pinned_ssl_context(vc.host, vc.port, vc.thumbprint)
    with pytest.raises(ThumbprintMismatchError):
        pinned_ssl_context(vc.host, vc.port, "00:" * 19 + "00")
    si = connect(vc)
    assert si.content.about.apiType == "VirtualCenter"


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def test_stop_is_idempotent(tmp_path: Path) -> None:
    vc = start_vcsim(tmp_path / "vc")
    assert _is_vcsim_process(vc.pid)
    stop_vcsim(vc)
    stop_vcsim(vc)
    assert not _is_vcsim_process(vc.pid)
    assert not Path(f"/proc/{vc.pid}").exists()
    assert not _port_open(vc.host, vc.port)


def test_cli_up_reuses_and_down_stops(tmp_path: Path) -> None:
    env = {**os.environ, "VMFERRY_LAB_DIR": str(tmp_path / "labdir")}
    cli = [sys.executable, "-m", "infra.lab"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args], env=env, capture_output=True, text=True, timeout=120)

    assert run("status").returncode == 1
    first = run("up")
    assert first.returncode == 0, first.stderr
    state = json.loads(first.stdout)
    assert state["reused"] is False
    second = run("up")
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["reused"] is True
    assert json.loads(second.stdout)["vcenter"]["pid"] == state["vcenter"]["pid"]
    status = run("status")
    assert status.returncode == 0 and json.loads(status.stdout)["running"] is True
    assert Path(state["manifest"]).is_file()
    pid = state["vcenter"]["pid"]
    down = run("down")
    assert down.returncode == 0, down.stderr
    assert not _is_vcsim_process(pid)
    assert not (tmp_path / "labdir" / "vcenter").exists()
    assert run("down").returncode == 0
    assert run("status").returncode == 1
