"""GRUB for BIOS put into a raw disk image file from the host: what grub-install and grub-bios-setup do for an
msdos-labelled disk whose first partition leaves the usual gap after the MBR, with no block device and no
appliance.

Why not grub-install inside libguestfs's appliance: there it intermittently cannot tell that /dev/sda1 lies on
/dev/sda ("File system `ext2' doesn't support embedding", then "embedding is not possible, but this is required
for cross-disk install"), on some machines every time. Everything it would decide is known here: one disk, one
partition, the boot files on it.

The layout follows grub 2.06 (include/grub/i386/pc/boot.h, util/setup.c): boot.img's code goes into the MBR up to
the disk signature, with the LBA of core.img at 0x5c and the boot-drive check replaced by NOPs (the BIOS's drive
number is used, as grub-bios-setup does for hard disks); core.img goes into the sectors after the MBR, and the
blocklist at the end of its first sector (diskboot.img) names the rest of it.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

SECTOR = 512
KERNEL_SECTOR_OFFSET = 0x5C
BOOT_DRIVE_CHECK_OFFSET = 0x66
BPB_START, BPB_END = 0x03, 0x5A
# From here on the MBR belongs to the disk: disk signature, partition table, 0x55AA.
WINDOWS_NT_MAGIC_OFFSET = 0x1B8
PARTITION_TABLE_OFFSET = 0x1BE
BLOCKLIST = struct.Struct("<QHH")  # start sector, sector count, load segment
KERNEL_SEGMENT = 0x800
CORE_START_SECTOR = 1
# Enough for a root on an ext2/3/4 partition of an msdos disk, read through the BIOS.
CORE_MODULES = ("biosdisk", "part_msdos", "ext2")


class GrubInstallError(RuntimeError):
    """The disk image has no room for GRUB's core image, or grub-mkimage failed."""


def make_core_image(modules_dir: Path, output: Path, prefix: str) -> bytes:
    """core.img built by grub-mkimage from the guest's own GRUB modules, so boot code and modules match."""
    argv = ["grub-mkimage", "-O", "i386-pc", "-d", str(modules_dir), "-o", str(output), "-p", prefix, *CORE_MODULES]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise GrubInstallError("grub-mkimage not found; install grub-common (infra/lab/install.sh)") from exc
    if proc.returncode != 0:
        raise GrubInstallError(f"grub-mkimage failed ({proc.returncode}): {proc.stderr.strip()}")
    return output.read_bytes()


def first_partition_start(mbr: bytes) -> int:
    if mbr[510:512] != b"\x55\xaa":
        raise GrubInstallError("the disk has no msdos partition table (no 0x55AA signature)")
    starts = []
    for index in range(4):
        entry = mbr[PARTITION_TABLE_OFFSET + 16 * index : PARTITION_TABLE_OFFSET + 16 * (index + 1)]
        (start,) = struct.unpack_from("<I", entry, 8)
        if entry[4] != 0 and start:
            starts.append(start)
    if not starts:
        raise GrubInstallError("the disk's partition table is empty")
    return min(starts)


def embed(disk: Path, boot_img: bytes, core_img: bytes) -> None:
    """Write boot.img and core.img into the image file, leaving the partition table and partitions as they are."""
    if len(boot_img) != SECTOR:
        raise GrubInstallError(f"boot.img is {len(boot_img)} bytes, expected {SECTOR}")
    core_sectors = -(-len(core_img) // SECTOR)
    with disk.open("r+b") as handle:
        mbr = bytearray(handle.read(SECTOR))
        room = first_partition_start(bytes(mbr)) - CORE_START_SECTOR
        if core_sectors > room:
            raise GrubInstallError(
                f"core.img needs {core_sectors} sectors, the gap before the first partition has {room}"
            )
        core = bytearray(core_img.ljust(core_sectors * SECTOR, b"\0"))
        first_block = SECTOR - BLOCKLIST.size
        BLOCKLIST.pack_into(core, first_block - BLOCKLIST.size, 0, 0, 0)  # terminator
        BLOCKLIST.pack_into(core, first_block, CORE_START_SECTOR + 1, core_sectors - 1, KERNEL_SEGMENT + (SECTOR >> 4))
        boot = bytearray(boot_img)
        boot[BPB_START:BPB_END] = mbr[BPB_START:BPB_END]
        struct.pack_into("<Q", boot, KERNEL_SECTOR_OFFSET, CORE_START_SECTOR)
        boot[BOOT_DRIVE_CHECK_OFFSET : BOOT_DRIVE_CHECK_OFFSET + 2] = b"\x90\x90"
        mbr[:WINDOWS_NT_MAGIC_OFFSET] = boot[:WINDOWS_NT_MAGIC_OFFSET]
        handle.seek(0)
        handle.write(mbr)
        handle.seek(CORE_START_SECTOR * SECTOR)
        handle.write(core)
