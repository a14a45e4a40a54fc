"""Hub-side NBD tasks: lease a port, make the exports' log directory, start a qemu-nbd export, stop it."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from catalog import default_catalog
from catalog.exports import ExportView
from catalog.ports import lease_port
from clients.qemu import image_info, scan_image
from common import digests, names
from common.contract import BlockDigests
from common.names import export_name
from vmferry.exports import port_served, start_export, stop_export
from vmferry.ledger import JobLedger
from vmferry.settings import get_settings
from vmferry.targets import DiskTarget, check_target_size


@task(retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE, task_run_name="lease-port-{target.disk_id}")
def lease_nbd_port(job_id: str, target: DiskTarget) -> int:
    settings = get_settings()
    catalog = default_catalog()
    lease = lease_port(
        catalog,
        job_id,
        port_range=settings.port_range,
        ttl=dt.timedelta(seconds=settings.port_lease_seconds),
        purpose=f"nbd export of vm_disk {target.vm_disk_id} ({target.disk_id})",
        in_use=port_served(catalog, settings.nbd_bind_address),
    )
    return lease.port


@task(cache_policy=NO_CACHE, task_run_name="check-target-{target.disk_id}")
def check_target_file(vm_name: str, target: DiskTarget) -> None:
    """The target file exists and is at least as large as its disk."""
    info = image_info(target.file_path)
    check_target_size(vm_name, target, int(info["virtual-size"]))


@task(cache_policy=NO_CACHE, task_run_name="digests-of-{targets[0].disk_id}-and-others")
def target_digests(targets: list[DiskTarget]) -> dict[int, BlockDigests]:
    """Per-block digests of every target, by device key: read here, where the targets lie, all disks at once.

    Run before the exports start (qemu-nbd locks an image it serves read-write). Reads only; safe to retry.
    """

    def one(target: DiskTarget) -> BlockDigests:
        size = int(image_info(target.file_path)["virtual-size"])
        block = digests.digest_block_size(size)
        scan = scan_image(
            target.file_path, image_format=target.image_format, whole_sha256=False, digest_block_size=block
        )
        assert scan.block_digests is not None
        return BlockDigests(block_size=block, digests=digests.encode(scan.block_digests.digests))

    if not targets:
        return {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(targets), thread_name_prefix="digests") as pool:
        return dict(zip([t.device_key for t in targets], pool.map(one, targets), strict=True))


@task(cache_policy=NO_CACHE, task_run_name="log-directory-{purpose}")
def make_job_log_directory(job_id: str, purpose: str) -> tuple[int, Path]:
    """A private directory for the job's logs, recorded in its ledger first: (its resource id, its path).

    No retries: an attempt that failed after recording leaves a recorded directory the reconciler removes, and a
    second attempt would make another."""
    return JobLedger(default_catalog(), job_id).temp_directory(purpose)


@task(cache_policy=NO_CACHE, task_run_name="start-nbd-{target.disk_id}")
def start_nbd_export(job_id: str, vm_context_id: int, target: DiskTarget, port: int, log_dir: Path) -> ExportView:
    """No retries: a half-started export is stopped by the flow's compensation, not started twice."""
    settings = get_settings()
    return start_export(
        default_catalog(),
        job_id=job_id,
        vm_disk_id=target.vm_disk_id,
        export_name=export_name(vm_context_id, target.disk_id),
        file_path=target.file_path,
        bind_address=settings.nbd_bind_address,
        port=port,
        image_format=target.image_format,
        log_path=log_dir / names.export_log_file_name(target.disk_id),
        tls_creds_dir=settings.nbd_tls_dir,
        tls_verify_client=settings.nbd_tls_verify_client,
        tls_allowed_clients=settings.nbd_tls_allowed_clients,
    )


@task(retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE, task_run_name="stop-nbd-{export.export_name}")
def stop_nbd_export(export: ExportView) -> None:
    stop_export(default_catalog(), export)
