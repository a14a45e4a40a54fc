"""The vCenter password and the agent token never reach the catalog, the Prefect logs, the flow runs'
parameters and states, or any artifact - not even in the messages of a failed run."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.sorting import FlowRunSort, LogSort, TaskRunSort
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_LOGGING_TO_API_ENABLED, PREFECT_SERVER_DATABASE_CONNECTION_URL, temporary_settings
from sqlalchemy import MetaData, select
from sqlalchemy.engine import make_url

from blocks.agent import Agent
from clients.agent import AgentError
from common.names import artifact_key
from flows.backup import backup_vm
from flows.discover import discover
from flows.reconcile import reconcile

pytestmark = pytest.mark.usefixtures("prefect_backend", "nbd_port_range")

PAGE = 200


def _every_page(read: Callable[..., list[Any]], **kwargs: Any) -> list[Any]:
    found: list[Any] = []
    while True:
        page = read(limit=PAGE, offset=len(found), **kwargs)
        found += page
        if len(page) < PAGE:
            return found


def _read_artifacts(client, *, limit: int, offset: int) -> list[dict[str, Any]]:
    """Every artifact, unfiltered. The client's read_artifacts cannot say that to this server: it sends null
    filters (422), and empty ones join on task runs, which drops every artifact made by a flow itself."""
    response = client.request("POST", "/artifacts/filter", json={"sort": "ID_DESC", "limit": limit, "offset": offset})
    return response.json()


def _catalog_dump(catalog) -> str:
    """Every row of every table, as text."""
    metadata = MetaData()
    metadata.reflect(bind=catalog.engine)
    assert {"jobs", "vm_contexts", "nbd_exports", "port_leases", "restore_points"} <= set(metadata.tables)
    rows = []
    with catalog.engine.connect() as connection:
        for table in metadata.sorted_tables:
            rows += [f"{table.name}: {tuple(row)}" for row in connection.execute(select(table))]
    return "\n".join(rows)


def _raw_files(database_file: str) -> bytes:
    """A SQLite database as stored, with its write-ahead log: what a thief of the disk would read."""
    return b"".join(
        Path(database_file + suffix).read_bytes() for suffix in ("", "-wal") if Path(database_file + suffix).exists()
    )


def test_secrets_stay_out_of_the_catalog_logs_parameters_and_artifacts(
    make_scratch_vm, lab, agent_block, lab_vcenter_block, repository_block, configured_catalog
):
    wrong_token = f"wrong-{secrets.token_urlsafe(24)}"
    hidden = {
        "vCenter password": lab_vcenter_block.password.get_secret_value(),
        "agent token": agent_block.token.get_secret_value(),
        "a refused agent token": wrong_token,
    }
    assert all(len(value) >= 16 for value in hidden.values())  # long and random: any hit is a leak
    name = make_scratch_vm(disks=2)
    # Log everything the flows say, DEBUG included, to the API (the test backend turns that off for speed).
    loggers = [logging.getLogger(n) for n in ("prefect.flow_runs", "prefect.task_runs")]
    levels = [lg.level for lg in loggers]
    with temporary_settings({PREFECT_LOGGING_TO_API_ENABLED: True}):
        for lg in loggers:
            lg.setLevel(logging.DEBUG)
        try:
            discover(lab_vcenter_block, [name])
            point = backup_vm(name, repository_block, agent_block, lab_vcenter_block)
            # a failing run writes its error into the job row, the flow run's state and the logs
            with pytest.raises(AgentError, match="401"):
                backup_vm(name, repository_block, Agent(url=agent_block.url, token=wrong_token), lab_vcenter_block)
            reconcile(repository_block, lab_vcenter_block)
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)
        APILogWorker.drain_all(timeout=30)

    with get_client(sync_client=True) as client:
        flow_runs = _every_page(client.read_flow_runs, sort=FlowRunSort.ID_DESC)
        task_runs = _every_page(client.read_task_runs, sort=TaskRunSort.EXPECTED_START_TIME_DESC)
        logs = _every_page(client.read_logs, sort=LogSort.TIMESTAMP_ASC)
        artifacts = _every_page(lambda **page: _read_artifacts(client, **page))
    stores = {
        "catalog tables": _catalog_dump(configured_catalog),
        "catalog database file": _raw_files(make_url(configured_catalog.url).database).decode("latin-1"),
        "flow runs (parameters, states)": json.dumps([r.model_dump(mode="json") for r in flow_runs]),
        "task runs": json.dumps([r.model_dump(mode="json") for r in task_runs]),
        "Prefect logs": "\n".join(log.message for log in logs),
        "artifacts": json.dumps(artifacts),
        "Prefect database file": _raw_files(make_url(PREFECT_SERVER_DATABASE_CONNECTION_URL.value()).database).decode(
            "latin-1"
        ),
    }
    # The search looked where the runs wrote: each store holds what these flows put there.
    ours = {str(r.id): r for r in flow_runs if name in (r.parameters.get("vm"), *(r.parameters.get("vms") or []))}
    assert len(ours) == 3  # discovery and two backups
    assert all(r.parameters.get("vcenter") for r in ours.values())  # the VCenter block is a parameter of each
    assert name in stores["catalog tables"] and "401" in stores["catalog tables"]
    assert f"backing up {name}" in stores["Prefect logs"]
    assert any(str(log.flow_run_id) in ours for log in logs if log.level >= logging.ERROR)  # the failed run's
    assert artifact_key("backup", name) in stores["artifacts"] and "Reconciliation" in stores["artifacts"]
    assert point.disks[0].checksum in stores["Prefect database file"]

    leaks = [(what, where) for what, value in hidden.items() for where, text in stores.items() if value in text]
    assert leaks == []
