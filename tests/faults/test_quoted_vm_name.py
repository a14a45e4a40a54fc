"""A VM whose name holds characters vSphere allows but quoting trips over (``"``, ``|``) backs up, restores and
replicates: its disk files carry the name, and its VMDK descriptors escape it as VMware does (``|22``)."""

from __future__ import annotations

import hashlib
import uuid

import pytest

from flows.backup import backup_vm
from flows.replicate import replicate_vm
from flows.restore import restore_vm
from infra.lab.dsfiles import DatastorePath
from infra.lab.mutate import read_disk_bytes
from infra.lab.seed import require_vm
from infra.lab.vcenter import session

pytestmark = pytest.mark.usefixtures("prefect_backend", "nbd_port_range")


def test_a_vm_named_with_a_double_quote_backs_up_restores_and_replicates(
    make_scratch_vm, lab, agent_block, lab_vcenter_block, repository_block, cloudstack_sim, cloudstack_block,
    configured_catalog, tmp_path,
):  # fmt: skip
    name = make_scratch_vm(disks=2, name=f'db "quoted" |{uuid.uuid4().hex[:6]}')
    with session(lab.vcenter) as si:
        disks = {
            d.key: d.backing.fileName for d in require_vm(si, name).config.hardware.device if hasattr(d, "capacityInKB")
        }
    assert len(disks) == 2 and all('"' in DatastorePath.parse(f).path for f in disks.values())  # named after it
    content = {f"disk-{key}": read_disk_bytes(lab.vcenter, name, key) for key in disks}
    sources = {disk_id: hashlib.sha256(data).hexdigest() for disk_id, data in content.items()}

    point = backup_vm(name, repository_block, agent_block, lab_vcenter_block)
    assert {d.disk_id: d.checksum for d in point.disks} == sources
    restored = restore_vm(point.id, str(tmp_path / "restore"), repository_block)
    assert {r.disk_id: hashlib.sha256(r.path.read_bytes()).hexdigest() for r in restored} == sources

    result = replicate_vm(name, cloudstack_block, agent_block, lab_vcenter_block)
    assert sorted(d.disk_id for d in result.disks) == sorted(sources)
    for disk in result.disks:
        with open(cloudstack_sim.volume_file(disk.volume_id), "rb") as volume:
            assert hashlib.sha256(volume.read(len(content[disk.disk_id]))).hexdigest() == sources[disk.disk_id]
