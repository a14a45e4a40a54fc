"""The sampled CBT check: before trusting CBT's "unchanged", read a sample of those blocks from both sides.

vSphere has shipped CBT bugs that answered too few changed areas (after a disk extension, for example); a
backup that trusts CBT blindly keeps stale blocks for months. On every CBT incremental the agent reads a
random sample of blocks that CBT calls unchanged, from the snapshot and from the target (which still holds
the previous point or the last sync there), and compares them. The target is untouched at that moment: the
check runs before the copy. Random per run rather than fixed, so that successive runs cover different blocks.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from agent.dataplane.sources import Source
from common.nbd import NBDClient

# Reported mismatching blocks are capped: one is enough to distrust CBT, a few help the investigation.
MAX_REPORTED = 8


class CbtMismatch(Exception):
    """CBT called blocks unchanged that differ from the previous copy."""


@dataclass(frozen=True)
class SampleVerdict:
    blocks_checked: int
    bytes_read: int  # from the source; as much again is read from the target
    mismatched: list[tuple[int, int]] = field(default_factory=list)  # (offset, length), at most MAX_REPORTED


def _merged(areas: Sequence[tuple[int, int]]) -> tuple[list[int], list[int]]:
    starts: list[int] = []
    ends: list[int] = []
    for start, length in sorted(areas):
        if starts and start <= ends[-1]:
            ends[-1] = max(ends[-1], start + length)
        else:
            starts.append(start)
            ends.append(start + length)
    return starts, ends


def unchanged_sample(
    changed: Sequence[tuple[int, int]], capacity: int, block_size: int, count: int, rng: random.Random
) -> list[tuple[int, int]]:
    """Up to ``count`` distinct block-aligned ranges of ``block_size`` that overlap no changed area."""
    starts, ends = _merged(changed)

    def overlaps(offset: int, length: int) -> bool:
        i = bisect.bisect_right(starts, offset + length - 1) - 1
        return i >= 0 and ends[i] > offset

    slots = (capacity + block_size - 1) // block_size
    picked: set[int] = set()
    # Random draws first; a disk that changed almost everywhere leaves few candidates, so then walk them all.
    for _ in range(count * 4):
        if len(picked) >= count:
            break
        slot = rng.randrange(slots) if slots else 0
        offset = slot * block_size
        if slots and not overlaps(offset, min(block_size, capacity - offset)):
            picked.add(slot)
    if len(picked) < count:
        for slot in range(slots):
            if len(picked) >= count:
                break
            offset = slot * block_size
            if slot not in picked and not overlaps(offset, min(block_size, capacity - offset)):
                picked.add(slot)
    return [(slot * block_size, min(block_size, capacity - slot * block_size)) for slot in sorted(picked)]


def check_unchanged_sample(source: Source, target: NBDClient, sample: Sequence[tuple[int, int]]) -> SampleVerdict:
    """Compare the sampled ranges of the source with the target; never writes."""
    mismatched: list[tuple[int, int]] = []
    total = 0
    for offset, length in sample:
        want = source.read(offset, length)
        have = bytearray(length)
        target.readinto(offset, have)
        total += length
        if want != have and len(mismatched) < MAX_REPORTED:
            mismatched.append((offset, length))
    return SampleVerdict(blocks_checked=len(sample), bytes_read=total, mismatched=mismatched)
