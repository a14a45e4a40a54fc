"""The allocator never hands out a port whose export is alive, even when its lease expired; once that qemu-nbd
is gone, the expired lease is taken over as before."""

from __future__ import annotations

import datetime as dt
import os

import pytest
from sqlalchemy import update

from catalog.errors import PortRangeExhausted
from catalog.exports import mark_export_running, record_export
from catalog.inventory import record_vm
from catalog.jobs import create_job
from catalog.models import PortLease, utcnow
from catalog.ports import held_leases, lease_port
from clients.qemu import create_qcow2, start_qemu_nbd, stop_qemu_nbd
from tasks.nbd import lease_nbd_port
from tests import factories
from vmferry.settings import PortRange
from vmferry.targets import DiskTarget

HOUR = dt.timedelta(hours=1)


@pytest.fixture(params=["sqlite"])
def catalog_url(request, tmp_path):
    from tests.databases import fresh_catalog_url

    with fresh_catalog_url(request.param, tmp_path) as url:
        yield url


def test_an_expired_lease_whose_qemu_nbd_runs_is_not_reused(configured_catalog, tmp_path, monkeypatch):
    port = int(os.environ.get("VMFERRY_TEST_NBD_PORT_RANGE", "21100-21199").split("-")[1])
    monkeypatch.setenv("VMFERRY_NBD_PORT_RANGE", f"{port}-{port}")
    vm = record_vm(configured_catalog, factories.vm(factories.disk(2000)))
    (disk,) = vm.present_disks()
    crashed, fresh = create_job(configured_catalog, "backup"), create_job(configured_catalog, "backup")
    image = tmp_path / "old-target.qcow2"
    create_qcow2(image, disk.capacity_bytes)
    # a crashed job's export: leased, recorded, its qemu-nbd still serving, its lease run out
    lease_port(configured_catalog, crashed, port_range=PortRange(port, port), ttl=HOUR)
    export = record_export(
        configured_catalog, vm_disk_id=disk.vm_disk_id, job_id=crashed,
        export_name=f"vm{vm.vm_context_id}-{disk.disk_id}",
        bind_address="127.0.0.1", port=port, file_path=str(image),
    )  # fmt: skip
    server = start_qemu_nbd(image, export_name=export.export_name, bind_address="127.0.0.1", port=port)
    try:
        mark_export_running(configured_catalog, export.id, server.pid)
        with configured_catalog.session() as session:
            session.execute(update(PortLease).values(expires_at=utcnow() - dt.timedelta(seconds=1)))
        target = DiskTarget(
            vm_disk_id=disk.vm_disk_id, disk_id=disk.disk_id, device_key=disk.device_key,
            capacity_bytes=disk.capacity_bytes,
            file_path=tmp_path / "new-target.qcow2", target_is_zero=True,
        )  # fmt: skip
        with pytest.raises(PortRangeExhausted, match="still served"):
            lease_nbd_port.fn(fresh, target)
        assert [(held.port, held.job_id) for held in held_leases(configured_catalog)] == [(port, crashed)]
    finally:
        stop_qemu_nbd(server.pid, image)
    # nothing serves it any more: the expired lease is abandoned and taken over
    assert lease_nbd_port.fn(fresh, target) == port
    assert [(held.port, held.job_id) for held in held_leases(configured_catalog)] == [(port, fresh)]
