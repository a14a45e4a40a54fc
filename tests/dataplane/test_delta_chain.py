"""The agent reads vmfsSparse snapshot chains as qemu-img (an independent reader of the format) does."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from agent.dataplane.sources import FileSource, VmdkDescriptorError, open_vmdk_chain
from infra.lab.cowd import cowd_delta, delta_descriptor
from infra.lab.seed import vmdk_descriptor

MiB = 2**20
GRAIN = 64 * 1024


def test_a_two_delta_chain_reads_like_qemu(tmp_path: Path):
    capacity = 300 * MiB  # more than one grain table (256 MiB each)
    with open(tmp_path / "d-flat.vmdk", "wb") as flat:
        flat.truncate(capacity)
        flat.write(os.urandom(MiB))
        flat.seek(270 * MiB)
        flat.write(os.urandom(MiB))
    (tmp_path / "d.vmdk").write_bytes(vmdk_descriptor("d-flat.vmdk", capacity))
    older = {1: os.urandom(GRAIN), 4100: os.urandom(GRAIN), 4320: os.urandom(GRAIN)}
    newer = {1: os.urandom(GRAIN), 2: os.urandom(GRAIN), 4799: os.urandom(GRAIN)}
    (tmp_path / "d-000001-delta.vmdk").write_bytes(cowd_delta(capacity, older))
    (tmp_path / "d-000001.vmdk").write_bytes(delta_descriptor(capacity, "d-000001-delta.vmdk", "d.vmdk"))
    (tmp_path / "d-000002-delta.vmdk").write_bytes(cowd_delta(capacity, newer))
    (tmp_path / "d-000002.vmdk").write_bytes(
        delta_descriptor(capacity, "d-000002-delta.vmdk", "d-000001.vmdk", cid="5a0b0002", parent_cid="5a0b0001")
    )
    reference = tmp_path / "qemu.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(tmp_path / "d-000002.vmdk"), str(reference)], check=True)

    opened: list[str] = []

    def opener(path: str) -> FileSource:
        opened.append(path)
        return FileSource(path)

    with open_vmdk_chain(str(tmp_path / "d-000002.vmdk"), lambda p: Path(p).read_bytes(), opener) as chain:
        assert chain.size == capacity
        ours = hashlib.sha256()
        for offset in range(0, capacity, 8 * MiB):
            ours.update(chain.read(offset, min(8 * MiB, capacity - offset)))
        # reads across grain boundaries, through every layer
        with open(reference, "rb") as ref:
            ref.seek(GRAIN - 100)
            assert chain.read(GRAIN - 100, 2 * GRAIN + 200) == ref.read(2 * GRAIN + 200)
        clone = chain.clone()
        assert clone.read(4799 * GRAIN, GRAIN) == newer[4799]
        clone.close()
    assert ours.hexdigest() == hashlib.sha256(reference.read_bytes()).hexdigest()
    assert [Path(p).name for p in opened] == ["d-flat.vmdk", "d-000001-delta.vmdk", "d-000002-delta.vmdk"]

    # a parent changed after its child delta was made: refused, as qemu and VDDK refuse it
    (tmp_path / "d-000001.vmdk").write_bytes(
        delta_descriptor(capacity, "d-000001-delta.vmdk", "d.vmdk", cid="0badc1d0")
    )
    with pytest.raises(VmdkDescriptorError, match="CID 0badc1d0, but its child delta was made over CID 5a0b0001"):
        open_vmdk_chain(str(tmp_path / "d-000002.vmdk"), lambda p: Path(p).read_bytes(), FileSource)


def test_sesparse_is_refused_naming_vddk(tmp_path: Path):
    text = delta_descriptor(MiB, "d-sesparse.vmdk", "d.vmdk").replace(b"VMFSSPARSE", b"SESPARSE")
    (tmp_path / "d-000001.vmdk").write_bytes(text)
    with pytest.raises(VmdkDescriptorError, match=r'SESPARSE.*"reader": "vddk"'):
        open_vmdk_chain(str(tmp_path / "d-000001.vmdk"), lambda p: Path(p).read_bytes(), FileSource)
