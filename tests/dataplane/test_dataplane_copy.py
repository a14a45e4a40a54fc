"""copy_disk / copy_disks against real qemu-nbd servers on qcow2 targets, checked with qemu-img."""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from pathlib import Path

import pytest

from agent.dataplane import (
    CopyCancelled,
    CopyError,
    CopyJob,
    CopyResult,
    DiskCopyError,
    FileSource,
    copy_disk,
    copy_disks,
)
from clients.qemu import scan_image
from common import digests
from common.nbd import NBDClient, NBDError

from .conftest import (
    GRANULE,
    NBDServers,
    SampleImage,
    create_qcow2,
    file_sha256,
    images_identical,
    make_image,
    qemu_img,
    raw_sha256,
)

MiB = 1024 * 1024


def allocated_bytes(qcow2: Path) -> int:
    """Bytes this qcow2 file itself holds data for (zero clusters, holes and backing files excluded)."""
    result = qemu_img("map", "--output=json", "-f", "qcow2", str(qcow2))
    assert result.returncode == 0, result.stderr
    return sum(e["length"] for e in json.loads(result.stdout) if e["data"] and not e["zero"] and e["depth"] == 0)


def test_full_copy_skips_zeros_and_is_identical(tmp_path: Path, image: SampleImage, nbd_servers: NBDServers):
    target = create_qcow2(tmp_path / "target.qcow2", image.size)
    server = nbd_servers.start(target)
    reports: list[tuple[int, int]] = []

    result = copy_disk(
        image.path,
        server.url,
        block_size=1 * MiB,
        connections=4,
        progress=lambda d, t: reports.append((d, t)),
        progress_interval=0.0,
        use_allocation=False,
    )
    server.stop()

    assert result.bytes_total == image.size
    assert result.bytes_read == image.size
    assert result.bytes_written == image.data_bytes
    assert result.zero_bytes_skipped == image.size - image.data_bytes
    assert result.zero_bytes_written == 0
    assert result.connections == 4
    assert images_identical(image.path, target)
    assert raw_sha256(target, tmp_path) == file_sha256(image.path)
    assert allocated_bytes(target) == image.data_bytes
    assert reports[-1] == (image.size, image.size)
    assert [d for d, _ in reports] == sorted(d for d, _ in reports)


def test_full_copy_over_dirty_target_writes_zeroes(tmp_path: Path, image: SampleImage, nbd_servers: NBDServers):
    dirty = make_image(tmp_path / "dirty.raw", image.size, seed=99, data_ratio=0.9)
    target = tmp_path / "target.qcow2"
    assert qemu_img("convert", "-f", "raw", "-O", "qcow2", str(dirty.path), str(target)).returncode == 0
    server = nbd_servers.start(target)

    result = copy_disk(image.path, server.url, target_is_zero=False, block_size=2 * MiB)
    server.stop()

    assert result.bytes_written == image.data_bytes
    assert result.zero_bytes_written == image.size - image.data_bytes
    assert result.zero_bytes_skipped == 0
    assert images_identical(image.path, target)


def test_larger_target_gets_zero_tail_unless_known_zero(tmp_path: Path, image: SampleImage, nbd_servers: NBDServers):
    dirty = make_image(tmp_path / "dirty.raw", image.size + 8 * MiB, seed=5, data_ratio=1.0)
    target = tmp_path / "target.qcow2"
    assert qemu_img("convert", "-f", "raw", "-O", "qcow2", str(dirty.path), str(target)).returncode == 0
    server = nbd_servers.start(target)

    result = copy_disk(image.path, server.url, target_is_zero=False)
    server.stop()

    assert result.bytes_total == image.size + 8 * MiB
    reader = nbd_servers.start(target)
    with NBDClient(reader.url) as client:
        assert client.read(image.size, 8 * MiB) == bytes(8 * MiB)
    reader.stop()
    assert qemu_img("compare", "-f", "raw", "-F", "qcow2", str(image.path), str(target)).returncode == 0


def _mutate(image: SampleImage, fraction: float, seed: int) -> tuple[int, list[tuple[int, int]]]:
    """Change `fraction` of the granules (data->other data, data->zero, zero->data); return changed bytes."""
    rng = random.Random(seed)
    n = image.size // GRANULE
    chosen = rng.sample(range(1, n), max(1, int(n * fraction)))
    with open(image.path, "r+b") as f:
        for g in chosen:
            if g in image.data_granules and rng.random() < 0.3:
                payload = bytes(GRANULE)
                image.data_granules.discard(g)
            else:
                payload = rng.randbytes(GRANULE)
                image.data_granules.add(g)
            f.seek(g * GRANULE)
            f.write(payload)
    return len(chosen) * GRANULE, [(g * GRANULE, GRANULE) for g in sorted(chosen)]


def test_compare_mode_writes_only_changed_blocks(tmp_path: Path, image: SampleImage, nbd_servers: NBDServers):
    target = create_qcow2(tmp_path / "target.qcow2", image.size)
    server = nbd_servers.start(target)
    copy_disk(image.path, server.url)
    changed, _areas = _mutate(image, 0.01, seed=7)

    result = copy_disk(image.path, server.url, mode="compare", block_size=4 * MiB, connections=3)
    server.stop()

    assert result.blocks_compared == image.size // GRANULE
    assert result.target_bytes_read == image.size
    assert result.bytes_written + result.zero_bytes_written == changed
    assert result.bytes_unchanged == image.size - changed
    assert images_identical(image.path, target)
    assert raw_sha256(target, tmp_path) == file_sha256(image.path)


def _full_then_overlay(tmp_path: Path, image: SampleImage, nbd_servers: NBDServers) -> tuple[Path, Path]:
    """A full copy of the image, and a new overlay on it: the files of a full and its next incremental."""
    base = create_qcow2(tmp_path / "full.qcow2", image.size)
    server = nbd_servers.start(base)
    copy_disk(image.path, server.url)
    server.stop()
    overlay = tmp_path / "inc1.qcow2"
    created = qemu_img("create", "-q", "-f", "qcow2", "-b", "full.qcow2", "-F", "qcow2", str(overlay))
    assert created.returncode == 0, created.stderr
    return base, overlay


def test_compare_mode_on_qcow2_overlay(tmp_path: Path, image: SampleImage, nbd_servers: NBDServers):
    """The incremental backup shape: a new overlay whose backing file is the previous restore point."""
    _base, overlay = _full_then_overlay(tmp_path, image, nbd_servers)
    changed, _ = _mutate(image, 0.02, seed=11)

    server = nbd_servers.start(overlay)
    result = copy_disk(image.path, server.url, mode="compare")
    server.stop()

    assert result.bytes_written + result.zero_bytes_written == changed
    assert allocated_bytes(overlay) <= changed
    assert images_identical(image.path, overlay)


def test_digest_compare_on_qcow2_overlay_reads_nothing_back(
    tmp_path: Path, image: SampleImage, nbd_servers: NBDServers
):
    """The hub hashes the overlay (its backing chain) locally; the agent compares source blocks against those
    digests, reads nothing from the target and writes exactly the changed blocks."""
    base, overlay = _full_then_overlay(tmp_path, image, nbd_servers)
    changed, _ = _mutate(image, 0.02, seed=13)
    scan = scan_image(overlay, digest_block_size=GRANULE)
    assert scan.block_digests is not None and scan.sha256 == raw_sha256(base, tmp_path)

    server = nbd_servers.start(overlay)
    wire = digests.encode(scan.block_digests.digests)
    received = digests.decode(wire, scan.size, GRANULE)
    result = copy_disk(image.path, server.url, mode="compare", target_digests=received, connections=3)
    server.stop()

    assert result.target_bytes_read == 0
    assert result.blocks_compared == image.size // GRANULE
    assert result.bytes_written + result.zero_bytes_written == changed
    assert result.bytes_unchanged == image.size - changed
    assert allocated_bytes(overlay) <= changed
    assert images_identical(image.path, overlay)
    assert scan_image(overlay).sha256 == file_sha256(image.path)


def test_digest_compare_zeroes_only_what_is_dirty_past_the_source(
    tmp_path: Path, image: SampleImage, nbd_servers: NBDServers
):
    """A volume larger than its disk: past the source's end the digests alone decide what gets zeroed."""
    target = create_qcow2(tmp_path / "volume.qcow2", image.size + 16 * MiB)
    server = nbd_servers.start(target)
    copy_disk(image.path, server.url)
    with NBDClient(server.url) as client:
        client.write(image.size, random.Random(3).randbytes(8 * MiB))  # stale data beyond the disk
    server.stop()
    scan = scan_image(target, digest_block_size=GRANULE)
    assert scan.block_digests is not None

    server = nbd_servers.start(target)
    result = copy_disk(image.path, server.url, mode="compare", target_digests=scan.block_digests)
    server.stop()

    assert result.target_bytes_read == 0 and result.bytes_written == 0
    assert result.zero_bytes_written == 8 * MiB
    assert result.bytes_unchanged == image.size + 8 * MiB
    assert scan_image(target).sha256 == hashlib.sha256(image.path.read_bytes() + bytes(16 * MiB)).hexdigest()


def test_digests_that_do_not_fit_the_target_are_refused(tmp_path: Path, image: SampleImage, nbd_servers: NBDServers):
    target = create_qcow2(tmp_path / "target.qcow2", image.size)
    short = digests.TargetDigests(GRANULE, bytes(32 * (image.size // GRANULE - 1)))
    server = nbd_servers.start(target)
    with pytest.raises(CopyError, match="do not cover"):
        copy_disk(image.path, server.url, mode="compare", target_digests=short)
    with pytest.raises(CopyError, match="compare mode"):
        copy_disk(image.path, server.url, target_digests=short)
    server.stop()
    assert allocated_bytes(target) == 0
    with pytest.raises(digests.DigestError, match="needs"):
        digests.decode(digests.encode(short.digests), image.size, GRANULE)
    with pytest.raises(digests.DigestError, match="base64"):
        digests.decode("not base64!", image.size, GRANULE)
    with pytest.raises(digests.DigestError, match="power of two"):
        digests.decode(digests.encode(short.digests), image.size, 3 * GRANULE)


def test_changed_areas_copy_only_those_ranges(tmp_path: Path, image: SampleImage, nbd_servers: NBDServers):
    base = create_qcow2(tmp_path / "full.qcow2", image.size)
    server = nbd_servers.start(base)
    copy_disk(image.path, server.url)
    changed, areas = _mutate(image, 0.01, seed=3)

    # CBT may report overlapping, unsorted or extra areas: still correct, still only those ranges.
    noisy = [*reversed(areas), areas[0], (areas[1][0] + 100, 1000)]
    result = copy_disk(image.path, server.url, changed_areas=noisy, block_size=1 * MiB)
    server.stop()

    assert result.bytes_total == changed
    assert result.bytes_read == changed
    assert result.bytes_written + result.zero_bytes_written == changed
    assert images_identical(image.path, base)


def test_changed_areas_outside_disk_refused_before_any_write(
    tmp_path: Path, image: SampleImage, nbd_servers: NBDServers
):
    target = create_qcow2(tmp_path / "target.qcow2", image.size + 1 * MiB)  # room past the source's end
    server = nbd_servers.start(target)

    for bad in ([(0, MiB), (image.size - 512, 1024)], [(0, MiB), (-512, 512)], [(image.size, 1)], [("x", 1)]):
        with pytest.raises(CopyError, match="changed area"):
            copy_disk(image.path, server.url, changed_areas=bad)
    server.stop()

    assert allocated_bytes(target) == 0


def test_target_smaller_than_source_refused(tmp_path: Path, image: SampleImage, nbd_servers: NBDServers):
    target = create_qcow2(tmp_path / "small.qcow2", image.size - MiB)
    server = nbd_servers.start(target)
    with pytest.raises(CopyError, match="less than the source"):
        copy_disk(image.path, server.url)
    server.stop()
    assert allocated_bytes(target) == 0


def test_read_only_target_refused(tmp_path: Path, image: SampleImage, nbd_servers: NBDServers):
    target = create_qcow2(tmp_path / "ro.qcow2", image.size)
    server = nbd_servers.start(target, read_only=True)
    with pytest.raises(CopyError, match="read-only"):
        copy_disk(image.path, server.url)


def test_nbd_error_surfaces_with_context(tmp_path: Path, nbd_servers: NBDServers):
    target = create_qcow2(tmp_path / "t.qcow2", 4 * MiB)
    server = nbd_servers.start(target, export="disk-2000")
    with NBDClient(server.url) as client, pytest.raises(NBDError) as info:
        client.write(4 * MiB - 512, bytes(1024))
    err = info.value
    assert err.code_name in ("EINVAL", "ENOSPC")
    assert err.export == "disk-2000"
    assert err.offset == 4 * MiB - 512
    assert "disk-2000" in str(err) and str(4 * MiB - 512) in str(err) and "WRITE" in str(err)


class _SlowSource(FileSource):
    """Sets `event` after `after` reads and slows reads down, so cancellation lands mid-copy."""

    def __init__(self, path: Path, event: threading.Event, after: int, counter: list[int]) -> None:
        super().__init__(path)
        self._event, self._after, self._counter = event, after, counter

    def readinto(self, offset, buf):
        self._counter[0] += 1
        if self._counter[0] >= self._after:
            self._event.set()
        time.sleep(0.01)
        super().readinto(offset, buf)

    def clone(self):
        return _SlowSource(Path(self.path), self._event, self._after, self._counter)


def test_cancellation_stops_promptly(tmp_path: Path, image: SampleImage, nbd_servers: NBDServers):
    target = create_qcow2(tmp_path / "target.qcow2", image.size)
    server = nbd_servers.start(target)
    cancel = threading.Event()
    source = _SlowSource(image.path, cancel, after=5, counter=[0])

    started = time.monotonic()
    with pytest.raises(CopyCancelled):
        copy_disk(source, server.url, block_size=256 * 1024, connections=2, cancel=cancel, use_allocation=False)
    elapsed = time.monotonic() - started
    source.close()
    server.stop()

    assert elapsed < 2.0
    assert allocated_bytes(target) < image.data_bytes


def test_failing_progress_callback_stops_the_copy(tmp_path: Path, image: SampleImage, nbd_servers: NBDServers):
    target = create_qcow2(tmp_path / "target.qcow2", image.size)
    server = nbd_servers.start(target)

    def boom(done: int, total: int) -> None:
        raise RuntimeError("progress sink gone")

    with pytest.raises(RuntimeError, match="progress sink gone"):
        copy_disk(image.path, server.url, progress=boom, progress_interval=0.0, block_size=256 * 1024)
    assert not [t for t in threading.enumerate() if t.name.startswith("copy-")]


def test_copy_from_nbd_source_uses_block_status(tmp_path: Path, image: SampleImage, nbd_servers: NBDServers):
    src_qcow2 = tmp_path / "src.qcow2"
    assert qemu_img("convert", "-f", "raw", "-O", "qcow2", str(image.path), str(src_qcow2)).returncode == 0
    source_server = nbd_servers.start(src_qcow2, export="src", read_only=True)
    target = create_qcow2(tmp_path / "target.qcow2", image.size)
    server = nbd_servers.start(target)

    result = copy_disk(source_server.url, server.url, connections=2)
    server.stop()

    assert result.bytes_read < image.size  # unallocated clusters were not read
    assert result.bytes_written == image.data_bytes
    assert images_identical(image.path, target)


def test_sparse_file_source_skips_holes(tmp_path: Path, image: SampleImage, nbd_servers: NBDServers):
    target = create_qcow2(tmp_path / "target.qcow2", image.size)
    server = nbd_servers.start(target)
    result = copy_disk(image.path, server.url)  # make_image leaves zero granules as holes
    plain = copy_disk(image.path, server.url, use_allocation=False)
    server.stop()
    assert result.bytes_read < image.size
    assert plain.bytes_read == image.size
    assert result.bytes_written == plain.bytes_written == image.data_bytes
    assert images_identical(image.path, target)


def test_copy_disks_each_disk_to_its_own_target(tmp_path: Path, nbd_servers: NBDServers):
    sizes = [24 * MiB, 40 * MiB, 8 * MiB + 512 * 3]
    images = [make_image(tmp_path / f"disk{i}.raw", size, seed=100 + i) for i, size in enumerate(sizes)]
    targets = [create_qcow2(tmp_path / f"disk{i}.qcow2", size) for i, size in enumerate(sizes)]
    servers = [nbd_servers.start(t, export=f"disk-{2000 + i}") for i, t in enumerate(targets)]
    seen: dict[str, list[int]] = {}
    landed: dict[int, tuple[CopyResult, str]] = {}

    def on_done(index: int, result: CopyResult) -> None:
        # the disk's target, read the moment it is reported done (its server stopped), holds the whole disk
        servers[index].stop()
        landed[index] = (result, raw_sha256(targets[index], tmp_path))

    jobs = [
        CopyJob(
            img.path,
            srv.url,
            key=f"disk-{2000 + i}",
            progress=lambda d, t, k=f"disk-{2000 + i}": seen.setdefault(k, []).append(d),
            on_done=lambda result, i=i: on_done(i, result),
        )
        for i, (img, srv) in enumerate(zip(images, servers, strict=True))
    ]
    results = copy_disks(jobs, max_parallel=3, connections=2, block_size=1 * MiB)
    for srv in servers:
        srv.stop()

    for index, (img, tgt, res) in enumerate(zip(images, targets, results, strict=True)):
        assert res.bytes_total == img.size
        assert res.bytes_written == img.data_bytes
        assert raw_sha256(tgt, tmp_path) == file_sha256(img.path)
        assert landed[index] == (res, file_sha256(img.path))
    assert not images_identical(images[0].path, targets[1])
    assert set(seen) == {"disk-2000", "disk-2001", "disk-2002"}


def test_copy_disks_refuses_shared_target_and_reports_failures(tmp_path: Path, nbd_servers: NBDServers):
    img_a = make_image(tmp_path / "a.raw", 8 * MiB, seed=1)
    img_b = make_image(tmp_path / "b.raw", 16 * MiB, seed=2)
    target_a = create_qcow2(tmp_path / "a.qcow2", 8 * MiB)
    target_b = create_qcow2(tmp_path / "b.qcow2", 4 * MiB)  # too small
    srv_a = nbd_servers.start(target_a)
    srv_b = nbd_servers.start(target_b)

    with pytest.raises(CopyError, match="share one target"):
        copy_disks([CopyJob(img_a.path, srv_a.url), CopyJob(img_b.path, srv_a.url)])
    with pytest.raises(CopyError, match="duplicate disk keys"):
        copy_disks([CopyJob(img_a.path, srv_a.url, key="k"), CopyJob(img_b.path, srv_b.url, key="k")])

    with pytest.raises(DiskCopyError) as info:
        copy_disks([CopyJob(img_a.path, srv_a.url, key="a"), CopyJob(img_b.path, srv_b.url, key="b")])
    assert set(info.value.errors) == {"b"} or isinstance(info.value.errors.get("a"), CopyCancelled)
    assert "less than the source" in str(info.value.errors["b"])


def test_copy_disks_cancel(tmp_path: Path, nbd_servers: NBDServers):
    cancel = threading.Event()
    counter = [0]
    imgs = [make_image(tmp_path / f"c{i}.raw", 16 * MiB, seed=i) for i in range(2)]
    srvs = [nbd_servers.start(create_qcow2(tmp_path / f"c{i}.qcow2", 16 * MiB)) for i in range(2)]
    sources = [_SlowSource(img.path, cancel, after=4, counter=counter) for img in imgs]
    jobs = [CopyJob(src, srv.url, key=str(i)) for i, (src, srv) in enumerate(zip(sources, srvs, strict=True))]
    with pytest.raises(CopyCancelled):
        copy_disks(jobs, cancel=cancel, block_size=256 * 1024, connections=1, use_allocation=False)
    for src in sources:
        src.close()


class _GappyMap(FileSource):
    """An allocation map that does not cover the range: the engine must fall back to reading."""

    def allocation(self, offset, length):
        return [(offset, min(length, 4096), True)]

    def clone(self):
        return _GappyMap(self.path)


def test_incomplete_allocation_map_is_ignored(tmp_path: Path, image: SampleImage, nbd_servers: NBDServers):
    target = create_qcow2(tmp_path / "target.qcow2", image.size)
    server = nbd_servers.start(target)
    with _GappyMap(image.path) as source:
        result = copy_disk(source, server.url)
    server.stop()
    assert result.bytes_read == image.size
    assert images_identical(image.path, target)
