"""The VDDK argv and the CBT changed-area checks (neither vcsim nor this machine has CBT or VDDK)."""

from __future__ import annotations

import subprocess
from types import SimpleNamespace

import pytest

from agent.vddk import VddkDisk, vddk_argv
from common.vsphere import CbtUnavailable, VSphereSnapshots, validated_changed_areas

MiB = 2**20


def test_vddk_argv_keeps_the_password_off_the_command_line(tmp_path):
    disk = VddkDisk(
        server="vc.example",
        user="svc",
        thumbprint="AA:" * 19 + "BB",
        vm_moref="vm-16",
        snapshot_moref="snapshot-99",
        file_name="[ds 1] db3/db3 data.vmdk",
    )
    argv = vddk_argv(disk, password_file=tmp_path / "pw", socket_path=tmp_path / "s", pid_file=tmp_path / "p")
    assert argv[0] == "nbdkit" and "--readonly" in argv and "vddk" in argv
    assert f"password=+{tmp_path / 'pw'}" in argv
    assert "vm=moref=vm-16" in argv and "snapshot=snapshot-99" in argv
    assert argv[-1] == "file=[ds 1] db3/db3 data.vmdk"  # one argument, spaces and all: no shell involved
    assert not any("secret" in a for a in argv)


def test_nbdkit_understands_the_argv_shape(tmp_path):
    # nbdkit parses its options before loading the plugin: a missing vddk plugin is the only complaint
    argv = vddk_argv(
        VddkDisk("vc", "u", "AA", "vm-1", "snapshot-1", "[ds] x.vmdk"),
        password_file=tmp_path / "pw",
        socket_path=tmp_path / "s",
        pid_file=tmp_path / "p",
    )
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "vddk" in done.stderr and "unrecognized option" not in done.stderr


def test_changed_areas_must_cover_the_disk_contiguously():
    capacity = 8 * MiB
    pages = [(0, 4 * MiB, [(0, 4096), (MiB, 8192)]), (4 * MiB, 4 * MiB, [(7 * MiB, 65536)])]
    assert validated_changed_areas(pages, capacity) == [(0, 4096), (MiB, 8192), (7 * MiB, 65536)]
    with pytest.raises(CbtUnavailable, match="cover"):
        validated_changed_areas(pages[:1], capacity)
    with pytest.raises(CbtUnavailable, match="contiguous"):
        validated_changed_areas([pages[0], (5 * MiB, 3 * MiB, [])], capacity)
    with pytest.raises(CbtUnavailable, match="outside its slice"):
        validated_changed_areas([(0, 4 * MiB, [(3 * MiB, 2 * MiB)]), pages[1]], capacity)
    with pytest.raises(CbtUnavailable, match="beyond the disk"):
        validated_changed_areas([(0, 9 * MiB, [(8 * MiB, MiB)])], capacity)


class _PagedVM:
    """Answers QueryChangedDiskAreas in 3 MiB slices, the way vCenter pages a large disk."""

    def __init__(self, changed: list[tuple[int, int]], slice_bytes: int = 3 * MiB) -> None:
        self.changed, self.slice_bytes, self.calls = changed, slice_bytes, []

    def QueryChangedDiskAreas(self, snapshot, deviceKey, startOffset, changeId):
        self.calls.append(startOffset)
        end = startOffset + self.slice_bytes
        areas = [SimpleNamespace(start=s, length=n) for s, n in self.changed if startOffset <= s < end]
        return SimpleNamespace(startOffset=startOffset, length=self.slice_bytes, changedArea=areas)


def test_changed_areas_are_read_page_by_page(monkeypatch):
    paged = _PagedVM([(0, 4096), (4 * MiB, 65536), (7 * MiB, 4096)])
    snapshots = VSphereSnapshots.__new__(VSphereSnapshots)
    snapshots.vm = paged
    snapshots.client = SimpleNamespace(service_instance=SimpleNamespace(_stub=None), endpoint=None)
    monkeypatch.setattr("common.vsphere.vim.vm.Snapshot", lambda moref, stub: moref)
    areas = snapshots.changed_areas("snapshot-1", 2000, "52 aa/7", 9 * MiB)
    assert paged.calls == [0, 3 * MiB, 6 * MiB]
    assert areas == [(0, 4096), (4 * MiB, 65536), (7 * MiB, 4096)]
