"""Cost of the sampled CBT check, against the CBT incremental copy it guards, in the same process.

    .venv/bin/python -m bench.cbt_check [--size 1G] [--changed 0.01] [--samples 0,32,256,1024] [--rounds 3]

A raw source image (half data, half zeros, as bench/copy.py makes it) is copied in full to a qemu-nbd qcow2
target; then ``--changed`` of its 64 KiB blocks are rewritten at random places. Each round times the CBT
incremental as the agent runs it: the sampled check for every sample size (source and target reads of blocks
CBT calls unchanged), and the copy of the changed areas (the reference). Printed: medians, and each check's
time and source bytes as a ratio of the copy's (the check reads as much again from the target,
on the hub's side of the link).

The source here is a local file: against a datastore over HTTP each sampled block is one ranged GET, so on a
WAN the check costs about ``samples x round trip`` on top of these figures, while the copy streams.
Measured on the shared 2-core development VM: see docs/vsphere-as-real.md.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from agent.cbt_check import check_unchanged_sample, unchanged_sample
from agent.dataplane import copy_disk
from agent.dataplane.sources import FileSource
from bench.copy import GRANULE, make_source, parse_size, start_target
from common.nbd import NBDClient


def _changed_blocks(path: Path, size: int, fraction: float, rng: random.Random) -> list[tuple[int, int]]:
    blocks = size // GRANULE
    picked = sorted(rng.sample(range(blocks), max(1, int(blocks * fraction))))
    with open(path, "r+b") as handle:
        for block in picked:
            handle.seek(block * GRANULE)
            handle.write(os.urandom(GRANULE))
    return [(block * GRANULE, GRANULE) for block in picked]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1G")
    parser.add_argument("--changed", type=float, default=0.01, help="fraction of 64 KiB blocks changed")
    parser.add_argument("--samples", default="0,32,256,1024", help="sample sizes (blocks) to time")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    size = parse_size(args.size)
    samples = [int(s) for s in args.samples.split(",")]
    rng = random.Random(16)
    with tempfile.TemporaryDirectory(prefix="vmferry-bench-cbt-") as tmp:
        workdir = Path(tmp)
        source_path = workdir / "source.raw"
        make_source(source_path, size, seed=16, sparse=False)
        target = start_target(workdir / "target.qcow2", size)
        try:
            with FileSource(source_path) as source:
                copy_disk(source, target.url)
            copy_times, copy_bytes = [], 0
            check_times: dict[int, list[float]] = {n: [] for n in samples}
            check_bytes: dict[int, int] = {}
            for _ in range(args.rounds):
                changed = _changed_blocks(source_path, size, args.changed, rng)
                with FileSource(source_path) as source:
                    for count in samples:
                        client = NBDClient(target.url)
                        try:
                            start = time.perf_counter()
                            sample = unchanged_sample(changed, size, GRANULE, count, random.SystemRandom())
                            verdict = check_unchanged_sample(source, client, sample)
                            check_times[count].append(time.perf_counter() - start)
                        finally:
                            client.close()
                        assert not verdict.mismatched, "the target lost track of the source"
                        check_bytes[count] = verdict.bytes_read  # from the source; the same again from the target
                    start = time.perf_counter()
                    result = copy_disk(source, target.url, changed_areas=changed)
                    copy_times.append(time.perf_counter() - start)
                    copy_bytes = result.bytes_read
        finally:
            target.stop()
    copy_time = statistics.median(copy_times)
    print(
        f"disk {size / 2**20:.0f} MiB, {args.changed:.1%} changed: CBT copy {copy_time * 1000:.1f} ms, "
        f"{copy_bytes / 2**20:.1f} MiB read (median of {args.rounds})"
    )
    print(f"{'sample (blocks)':>16}{'check ms':>12}{'x copy time':>14}{'source MiB':>12}{'x copy bytes':>14}")
    for count in samples:
        check_time = statistics.median(check_times[count])
        print(
            f"{count:>16}{check_time * 1000:>12.1f}{check_time / copy_time:>14.3f}"
            f"{check_bytes[count] / 2**20:>12.1f}{check_bytes[count] / max(copy_bytes, 1):>14.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
