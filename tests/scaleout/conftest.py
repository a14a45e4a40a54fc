"""Scale-out: a Prefect server of its own on PostgreSQL, process workers, and the catalog on the real MariaDB."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.prefect_server import PrefectServer, running_prefect_server
from tests.databases import fresh_catalog_url


@pytest.fixture(params=[pytest.param("mariadb", marks=pytest.mark.mariadb)])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Several worker processes write the catalog at once: the production backend, MariaDB."""
    with fresh_catalog_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[PrefectServer]:
    """A Prefect server on a fresh PostgreSQL database; its workers, itself and the database go at teardown.

    It is not the session's test harness: the test talks to it by its URL (``server.url``) only.
    """
    with running_prefect_server(tmp_path) as server:
        yield server


@pytest.fixture
def repository_block(tmp_path: Path):
    from blocks.repository import BackupRepository

    return BackupRepository(name="scaleout-repo", path=str(tmp_path / "repository"))
