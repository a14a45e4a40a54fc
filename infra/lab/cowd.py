"""Write vmfsSparse (COWD) snapshot deltas, as ESXi keeps a VM's writes after a snapshot on VMFS5.

Layout (the format qemu's vmdk driver reads as ``VMFSSPARSE``): a 2048-byte header, "COWD" then little-endian
32-bit version, flags, disk sectors, grain sectors, grain directory sector, directory entries, file sectors; a
grain directory of 32-bit sector numbers of grain tables; grain tables of 4096 32-bit sector numbers of grains.
A zero entry means "not in this delta": the parent's bytes show through. The lab writes deltas itself because
vcsim's snapshots create none.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

SECTOR = 512
GT_ENTRIES = 4096
HEADER_SECTORS = 4


def cowd_delta(capacity: int, grains: Mapping[int, bytes], grain_sectors: int = 128) -> bytes:
    """A delta of a ``capacity``-byte disk holding ``grains`` (grain index -> grain bytes), nothing else."""
    grain = grain_sectors * SECTOR
    sectors = capacity // SECTOR
    per_table = GT_ENTRIES * grain_sectors
    directory_entries = -(-sectors // per_table)
    directory_sectors = -(-directory_entries * 4 // SECTOR)
    tables_needed = sorted({index // GT_ENTRIES for index in grains})
    next_sector = HEADER_SECTORS + directory_sectors
    table_at: dict[int, int] = {}
    for table in tables_needed:
        table_at[table] = next_sector
        next_sector += GT_ENTRIES * 4 // SECTOR
    grain_at: dict[int, int] = {}
    for index in sorted(grains):
        if len(grains[index]) != grain:
            raise ValueError(f"grain {index} holds {len(grains[index])} bytes, not {grain}")
        grain_at[index] = next_sector
        next_sector += grain_sectors
    out = bytearray(next_sector * SECTOR)
    header = struct.pack(
        "<4sIIIIIII", b"COWD", 1, 3, sectors, grain_sectors, HEADER_SECTORS, directory_entries, next_sector
    )
    out[: len(header)] = header
    for table, sector in table_at.items():
        struct.pack_into("<I", out, HEADER_SECTORS * SECTOR + table * 4, sector)
    for index, sector in grain_at.items():
        table, entry = divmod(index, GT_ENTRIES)
        struct.pack_into("<I", out, table_at[table] * SECTOR + entry * 4, sector)
        out[sector * SECTOR : sector * SECTOR + grain] = grains[index]
    return bytes(out)


def delta_descriptor(
    capacity: int, delta_file: str, parent_file: str, *, cid: str = "5a0b0001", parent_cid: str = "fffffffe"
) -> bytes:
    """``parent_cid`` must be the parent descriptor's CID (the lab's flat disks have fffffffe)."""
    return (
        f'# Disk DescriptorFile\nversion=1\nCID={cid}\nparentCID={parent_cid}\ncreateType="vmfsSparse"\n'
        f'parentFileNameHint="{parent_file}"\n\n# Extent description\n'
        f'RW {capacity // SECTOR} VMFSSPARSE "{delta_file}"\n'
    ).encode()
