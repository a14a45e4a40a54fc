"""CloudStack simulator fixtures: one in-process simulator per test, fast jobs, a client that polls quickly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from clients.cloudstack import CloudStackClient
from infra.lab.cloudstack import CloudStackSimulator


@pytest.fixture
def cloudstack_sim(tmp_path: Path) -> Iterator[CloudStackSimulator]:
    with CloudStackSimulator(tmp_path / "cloudstack", job_delay=0.02) as sim:
        yield sim


@pytest.fixture
def cs(cloudstack_sim: CloudStackSimulator) -> Iterator[CloudStackClient]:
    client = CloudStackClient(
        cloudstack_sim.url,
        cloudstack_sim.api_key,
        cloudstack_sim.secret_key,
        timeout=5,
        poll_interval=0.01,
        max_poll_interval=0.05,
        job_timeout=10,
    )
    yield client
    client.close()
