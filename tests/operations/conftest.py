"""Operations: schedules, alerts, policies and one job per VM, on the session harness or on a real Prefect server."""

from __future__ import annotations

import pytest

# The data-path tests' SQLite catalog and their repository block, shared rather than copied.
from tests.backup.conftest import catalog_url, repository_block  # noqa: F401

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
