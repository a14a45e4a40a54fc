"""Starting and stopping the hub's qemu-nbd exports, with the catalog ledger kept in step.

Prefect-free, so a flow's compensation stack can call ``stop_export`` even when the Prefect API is gone.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

from catalog.db import Catalog
from catalog.exports import ExportView, live_exports, mark_export_running, mark_export_stopped, record_export
from catalog.ports import release_port
from clients.qemu import QemuError, is_our_qemu_nbd, start_qemu_nbd, stop_qemu_nbd
from common.nbd import NBDAddress


def export_url(export: ExportView, tls: bool | None = None) -> str:
    """The URL the agent writes to: ``nbds://`` (TLS required) when the hub's exports use TLS.

    `tls` defaults to the hub's settings (VMFERRY_NBD_TLS_DIR), which started the export in the same run.
    """
    if tls is None:
        from vmferry.settings import get_settings

        tls = get_settings().nbd_tls_dir is not None
    return NBDAddress(export=export.export_name, host=export.bind_address, port=export.port, tls=tls).url


def port_served(catalog: Catalog, bind_address: str) -> Callable[[int], bool]:
    """For the port allocator: True for a port an export recorded as live still serves (its qemu-nbd runs, pid
    and command line checked) or that anything listens on at ``bind_address``. An expired lease is abandoned
    only when nothing serves its port any more; reusing it would point an agent at the old export."""
    live = {export.port: export for export in live_exports(catalog)}

    def served(port: int) -> bool:
        export = live.get(port)
        if export is not None and export.pid is not None and is_our_qemu_nbd(export.pid, export.file_path, port):
            return True
        try:
            with socket.create_connection((bind_address, port), timeout=0.5):
                return True
        except OSError:
            return False

    return served


def start_export(
    catalog: Catalog,
    *,
    job_id: str,
    vm_disk_id: int,
    export_name: str,
    file_path: Path,
    bind_address: str,
    port: int,
    image_format: str = "qcow2",
    log_path: Path | None = None,
    tls_creds_dir: Path | None = None,
    tls_verify_client: bool = True,
    tls_allowed_clients: list[str] | None = None,
) -> ExportView:
    """Record the export, start qemu-nbd for it, record its pid. A failed start is recorded as failed.

    With `tls_creds_dir` (qemu's x509 layout) the export speaks TLS only; see `clients.qemu.start_qemu_nbd`.
    """
    export = record_export(
        catalog,
        vm_disk_id=vm_disk_id,
        job_id=job_id,
        export_name=export_name,
        bind_address=bind_address,
        port=port,
        file_path=str(file_path),
    )
    try:
        server = start_qemu_nbd(
            file_path,
            export_name=export_name,
            bind_address=bind_address,
            port=port,
            image_format=image_format,
            log_path=log_path,
            tls_creds_dir=tls_creds_dir,
            tls_verify_peer=tls_verify_client,
            tls_allowed_clients=tls_allowed_clients,
        )
    except (QemuError, OSError, ValueError):
        mark_export_stopped(catalog, export.id, state="failed")
        raise
    return mark_export_running(catalog, export.id, server.pid)


def stop_export(catalog: Catalog, export: ExportView) -> None:
    """Stop the export's qemu-nbd (if it runs), mark it stopped, release its port. Idempotent."""
    if export.pid is not None:
        stop_qemu_nbd(export.pid, export.file_path)
    mark_export_stopped(catalog, export.id)
    release_port(catalog, export.port, export.job_id)
