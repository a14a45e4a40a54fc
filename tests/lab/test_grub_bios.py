"""GRUB's boot code written into an image file from the host: the MBR keeps its partition table, core.img lands
right after it and its first sector names the rest, as grub-bios-setup lays it out."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from infra.lab.grub_bios import GrubInstallError, embed

SECTOR = 512


def _disk_with_partition(path: Path, start_sector: int) -> bytes:
    with path.open("wb") as handle:
        handle.truncate(8 * 1024 * 1024)
    subprocess.run(
        ["sfdisk", "--quiet", str(path)],
        input=f"label: dos\nlabel-id: 0x12345678\nstart={start_sector}, type=83, bootable\n",
        text=True,
        check=True,
    )
    return path.read_bytes()[:SECTOR]


def test_embed_keeps_the_partition_table_and_chains_core_image(tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    before = _disk_with_partition(disk, 2048)
    boot_img = bytes(range(256)) * 2
    core_img = b"\xc0" * (SECTOR * 40 + 100)  # 41 sectors once padded

    embed(disk, boot_img, core_img)

    data = disk.read_bytes()
    mbr = data[:SECTOR]
    assert mbr[0x1B8:] == before[0x1B8:], "disk signature, partition table and 0x55AA must be untouched"
    assert mbr[:3] == boot_img[:3] and mbr[0x5A:0x5C] == boot_img[0x5A:0x5C]
    assert struct.unpack_from("<Q", mbr, 0x5C) == (1,), "boot.img must load core.img from sector 1"
    assert mbr[0x66:0x68] == b"\x90\x90", "the BIOS's boot drive is used, as for a hard disk"
    assert mbr[0x68:0x1B8] == boot_img[0x68:0x1B8]
    first = data[SECTOR : 2 * SECTOR]
    assert struct.unpack_from("<QHH", first, SECTOR - 12) == (2, 40, 0x820)
    assert struct.unpack_from("<QHH", first, SECTOR - 24) == (0, 0, 0)
    assert first[: SECTOR - 24] == core_img[: SECTOR - 24]
    assert data[2 * SECTOR : SECTOR + len(core_img)] == core_img[SECTOR:]
    assert data[2048 * SECTOR :] == b"\0" * (len(data) - 2048 * SECTOR), "the partition is not written"


def test_embed_refuses_a_gap_too_small_for_core_image(tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    _disk_with_partition(disk, 34)
    before = disk.read_bytes()

    with pytest.raises(GrubInstallError, match="needs 41 sectors, the gap before the first partition has 33"):
        embed(disk, b"\0" * SECTOR, b"\1" * (SECTOR * 41))

    assert disk.read_bytes() == before
