"""Data-path tests exercise the catalog lightly: they run on SQLite, and the ones that say so on MariaDB too."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.databases import fresh_catalog_url


@pytest.fixture(params=["sqlite"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_catalog_url(request.param, tmp_path) as url:
        yield url
