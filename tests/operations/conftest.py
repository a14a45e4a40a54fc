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
