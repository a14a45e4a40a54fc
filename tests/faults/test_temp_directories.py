"""Temporary directories belong to a job: recorded in the ledger before they exist, gone when the job ends."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from catalog.resources import resources_of_job

pytestmark = pytest.mark.usefixtures("prefect_backend", "nbd_port_range")


def test_a_backup_leaves_no_temp_directory(committed_point, configured_catalog):
    job_id = committed_point.job_id
    (logs,) = [r for r in resources_of_job(configured_catalog, job_id) if r.kind == "directory"]
    assert logs.state == "removed" and Path(logs.path).name.startswith(f"vmferry-{job_id}-nbd-logs-")
    assert list(Path(tempfile.gettempdir()).glob(f"vmferry-{job_id}-*")) == []
