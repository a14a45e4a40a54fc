"""Scale-out: four backups submitted at once through the deployment, run by two process workers.

The server is a real `prefect server` on PostgreSQL (not the session's test harness), the deployment comes from
deployments/deploy.py, the workers are `prefect worker start --limit 2` processes; the catalog is MariaDB.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import FlowRun

from catalog.exports import exports_for_job, live_exports
from catalog.inventory import get_vm
from catalog.ports import held_leases
from catalog.restore_points import points_in_state
from infra.lab.mutate import read_disk_bytes
from infra.prefect_server import PrefectServer, start_worker, wait_for_workers
from tests.copy.helpers import our_qemu_nbd_pids, vm_snapshot_names

pytestmark = pytest.mark.usefixtures("nbd_port_range")

ROOT = Path(__file__).resolve().parents[2]
POOL = "vmferry-hub"  # deployments/prefect.yaml's pool
DEPLOYMENT = "backup-vm/on-demand"
WORKERS = ("scaleout-a", "scaleout-b")
RUN_TIMEOUT = 100


@contextmanager
def talking_to(server: PrefectServer) -> Iterator[None]:
    """Prefect calls of this process go to ``server`` (the session's harness, if any, is back afterwards)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: server.url}):
        yield


def deploy(server: PrefectServer) -> None:
    """deployments/deploy.py, as an operator runs it: the pool, the limits, then `prefect deploy`."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "deployments" / "deploy.py")],
        cwd=ROOT,
        env=server.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def wait_final(client: SyncPrefectClient, run_ids: list[UUID], timeout: float) -> list[FlowRun]:
    deadline = time.monotonic() + timeout
    while True:
        runs = [client.read_flow_run(run_id) for run_id in run_ids]
        if all(run.state is not None and run.state.is_final() for run in runs) or time.monotonic() > deadline:
            return runs
        time.sleep(0.5)


def test_four_backups_on_two_workers(
    prefect_server,
    lab,
    lab_vcenter_block,
    agent_block,
    repository_block,
    configured_catalog,
    catalog_url,
    nbd_port_range,
    make_scratch_vm,
):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    server = prefect_server
    names = ["pgtest1", "db3", make_scratch_vm(), make_scratch_vm()]
    with talking_to(server):  # the blocks the deployment's parameters name: prod and main
        lab_vcenter_block.save("prod")
        agent_block.save("prod")
        repository_block.save("main")
    deploy(server)

    worker_env = {
        "VMFERRY_HOME": str(ROOT),  # the deployment's pull step changes into it
        "VMFERRY_CATALOG_URL": catalog_url,
        "VMFERRY_NBD_PORT_RANGE": nbd_port_range,
    }
    for name in WORKERS:
        start_worker(server, POOL, name, limit=2, env=worker_env, cwd=ROOT, query_seconds=1)
    wait_for_workers(server, POOL, list(WORKERS))

    with talking_to(server), get_client(sync_client=True) as client:
        submitted = [
            run_deployment(
                DEPLOYMENT,
                parameters={"vm": name, "bandwidth_limit_bytes_per_second": 48 * 2**20},  # the copies overlap
                timeout=0,
            )
            for name in names
        ]
        runs = wait_final(client, [run.id for run in submitted], RUN_TIMEOUT)

    logs = {worker.name: worker.log() for worker in server.workers}
    states = {run.parameters["vm"]: run.state.type.value if run.state else None for run in runs}
    assert all(run.state is not None and run.state.is_completed() for run in runs), (
        states,
        {name: log[-3000:] for name, log in logs.items()},
    )

    # every run on a worker process of its own; both workers took runs
    assert all(run.infrastructure_pid for run in runs)
    assert len({run.infrastructure_pid for run in runs}) == 4
    # both workers may pick a run up; the one the server refuses logs "Aborted submission" and lets it go
    ran_on = {
        str(run.id): [
            name
            for name, log in logs.items()
            if f"submitting flow run '{run.id}'" in log and f"Aborted submission of flow run '{run.id}'" not in log
        ]
        for run in runs
    }
    assert all(len(workers) == 1 for workers in ran_on.values()), ran_on
    assert {workers[0] for workers in ran_on.values()} == set(WORKERS), ran_on

    # four committed points, one per VM, every disk equal to its source
    points = points_in_state(configured_catalog, "committed")
    by_vm = {get_vm(configured_catalog, p.vm_context_id).name: p for p in points}
    assert sorted(by_vm) == sorted(names) and len(points) == 4
    for name, point in by_vm.items():
        for disk in point.disks:
            assert disk.checksum == hashlib.sha256(read_disk_bytes(lab.vcenter, name, disk.device_key)).hexdigest()

    # a port is reused only after the export that held it stopped; the backups really overlapped
    exports = [e for point in points for e in exports_for_job(configured_catalog, point.job_id)]
    assert len(exports) == sum(len(p.disks) for p in points)
    for first in exports:
        for second in exports:
            if first.id < second.id and first.port == second.port:
                assert first.stopped_at <= second.created_at or second.stopped_at <= first.created_at
    assert any(
        a.job_id != b.job_id and a.created_at < b.stopped_at and b.created_at < a.stopped_at
        for a in exports
        for b in exports
    ), "the backups never ran at the same time"

    # nothing left behind
    repository_files = list(Path(repository_block.path).rglob("*"))
    assert our_qemu_nbd_pids(repository_files) == []
    assert held_leases(configured_catalog) == []
    assert live_exports(configured_catalog) == []
    for name in names:
        assert vm_snapshot_names(lab, name) == []
