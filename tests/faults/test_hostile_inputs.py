"""Hostile inputs: a link planted where a restore writes its temporary file."""

from __future__ import annotations

import hashlib

import pytest

from catalog.resources import live_resources
from flows.restore import restore_files
from vmferry.filelevel import FileRestoreError

pytestmark = pytest.mark.usefixtures("prefect_backend", "nbd_port_range")


def test_a_file_restore_never_writes_through_a_planted_symlink(
    lab, committed_point, repository_block, configured_catalog, tmp_path
):
    record = next(d for d in lab.manifest.vm("pgtest1").disks if d.known_files)
    known = record.known_files[0]
    disk = f"disk-{record.device_key}"
    destination = tmp_path / "to"
    victim = tmp_path / "outside" / "victim"
    victim.parent.mkdir()
    victim.write_bytes(b"not the restore's to overwrite")
    partial = destination / (known.path.lstrip("/") + ".partial")
    partial.parent.mkdir(parents=True)
    partial.symlink_to(victim)

    with pytest.raises(FileRestoreError, match=r"\.partial already exists \(a link or file this restore did not"):
        restore_files(committed_point.id, disk, known.partition, [known.path], str(destination), repository_block)
    assert victim.read_bytes() == b"not the restore's to overwrite"
    assert partial.is_symlink() and not (destination / known.path.lstrip("/")).exists()

    # once the operator removed the link, the same restore works
    partial.unlink()
    (extracted,) = restore_files(
        committed_point.id, disk, known.partition, [known.path], str(destination), repository_block
    )
    assert hashlib.sha256(extracted.read_bytes()).hexdigest() == known.sha256
    assert live_resources(configured_catalog) == []
