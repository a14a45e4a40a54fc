"""Operations: schedules, alerts, policies and one job per VM, on the session harness or on a real Prefect server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.databases import fresh_catalog_url


@pytest.fixture(params=["sqlite"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_catalog_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def repository_block(tmp_path: Path):
    from blocks.repository import BackupRepository

    return BackupRepository(name="operations-repo", path=str(tmp_path / "repository"))


# A Prefect server with its services on, shared by a module's tests (each start costs ~15 s): the scheduler on
# a short loop, and the late-runs, triggers and actions services that alerts need.
FAST_SERVICES = {
    "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
    "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "2",
    "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_RUNS": "2",
    "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS": "3",
    "PREFECT_SERVER_SERVICES_LATE_RUNS_LOOP_SECONDS": "2",
}


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory):
    from infra.prefect_server import running_prefect_server

    with running_prefect_server(tmp_path_factory.mktemp("prefect"), services_off=(), settings=FAST_SERVICES) as server:
        yield server


@pytest.fixture
def talking_to_live_server(live_server):
    """Prefect calls of this process go to the live server (not the session's harness)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: live_server.url}):
        yield live_server
