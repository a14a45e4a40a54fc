"""Fault tests: processes killed mid-work, services failing at each step, hostile inputs. SQLite catalogs unless a
test says otherwise."""

from __future__ import annotations

import os
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

    return BackupRepository(name="test-repo", path=str(tmp_path / "repository"))


@pytest.fixture
def test_ports(nbd_port_range: str) -> list[int]:
    """Ports of this test run's own range (VMFERRY_TEST_NBD_PORT_RANGE), from its top end down, for servers a
    test starts itself: the flows lease from the bottom end."""
    low, high = (int(p) for p in nbd_port_range.split("-"))
    return list(range(high, max(low, high - 20), -1))


@pytest.fixture
def committed_point(lab, agent_block, lab_vcenter_block, repository_block, configured_catalog):
    """A full backup of the lab's pgtest1 (a disk with known files)."""
    from flows.backup import backup_vm

    return backup_vm("pgtest1", repository_block, agent_block, lab_vcenter_block, kind="full")


ROOT = Path(__file__).resolve().parents[2]


def subprocess_env(catalog_url: str) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "VMFERRY_CATALOG_URL": catalog_url, "PREFECT_API_URL": PREFECT_API_URL.value()}
