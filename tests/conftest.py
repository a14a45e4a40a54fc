"""Shared fixtures: catalogs on SQLite and on the real MariaDB, and one Prefect test backend per session.

Each fixture imports the hub inside itself: the agent's tests load this file in a venv that has the agent alone
(tests/packaging/test_agent_alone.py).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Prefect reads PREFECT_HOME when first imported: keep every test run's Prefect state out of the user's home.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="vmferry-prefect-home-"))
os.environ.pop("PREFECT_API_URL", None)  # unset, never "": an empty URL breaks Prefect's event worker

import pytest

from tests.databases import CATALOG_BACKENDS, fresh_catalog_url


@pytest.fixture(params=CATALOG_BACKENDS)
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty, migrated catalog on each backend (SQLite file, then a fresh MariaDB database)."""
    with fresh_catalog_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def catalog(catalog_url: str):
    from catalog.db import open_catalog

    opened = open_catalog(catalog_url)
    yield opened
    opened.dispose()


@pytest.fixture
def configured_catalog(catalog_url: str, monkeypatch: pytest.MonkeyPatch):
    """The catalog that flows and tasks will open through the settings (VMFERRY_CATALOG_URL)."""
    import catalog as catalog_package

    monkeypatch.setenv("VMFERRY_CATALOG_URL", catalog_url)
    yield catalog_package.default_catalog()
    opened = catalog_package._opened.pop(catalog_url, None)
    if opened is not None:
        opened.dispose()


@pytest.fixture(scope="session")
def prefect_backend() -> Iterator[None]:
    """One Prefect test server per session, with heartbeats and server services off (0.2 s per flow run)."""
    import prefect.settings as ps
    from prefect.testing.utilities import prefect_test_harness

    off = ["SERVER_ANALYTICS_ENABLED", "LOGGING_TO_API_ENABLED"] + [
        f"API_SERVICES_{name}_ENABLED"
        for name in ("SCHEDULER", "LATE_RUNS", "FOREMAN", "TRIGGERS", "EVENT_PERSISTER", "TASK_RUN_RECORDER")
    ]
    updates = {
        ps.PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None,
        **{getattr(ps, "PREFECT_" + n): False for n in off},
    }
    with ps.temporary_settings(updates), prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory):
    """One seeded vcsim lab (pgtest1, db3) per test session; stopped at the end whatever happened."""
    from infra.lab.fixtures import running_lab

    with running_lab(tmp_path_factory.mktemp("lab")) as running:
        yield running


@pytest.fixture
def lab_vcenter_block(lab):
    """A VCenter block for the lab vCenter, trusting it by its pinned certificate thumbprint."""
    from blocks.vcenter import VCenter

    vc = lab.vcenter
    return VCenter(host=vc.host, port=vc.port, username=vc.user, password=vc.password, thumbprint=vc.thumbprint)


@pytest.fixture(scope="session")
def agent_process(lab, tmp_path_factory: pytest.TempPathFactory):
    """The reference agent as a real process (python -m agent) reading from the lab vCenter."""
    from infra.lab.agent import start_agent

    running = start_agent(lab.vcenter, tmp_path_factory.mktemp("agent"))
    yield running
    running.stop()


@pytest.fixture
def agent_block(agent_process):
    from blocks.agent import Agent

    return Agent(url=agent_process.url, token=agent_process.token)


@pytest.fixture
def nbd_port_range(monkeypatch: pytest.MonkeyPatch) -> str:
    """A port range of the tests' own, away from a lab demo that may run on the same machine.

    VMFERRY_TEST_NBD_PORT_RANGE moves it, so two test runs on one machine do not take each other's ports.
    """
    port_range = os.environ.get("VMFERRY_TEST_NBD_PORT_RANGE", "21100-21199")
    monkeypatch.setenv("VMFERRY_NBD_PORT_RANGE", port_range)
    return port_range


@pytest.fixture
def make_scratch_vm(lab):
    """Throw-away lab VMs with small disks, so tests that change or rename VMs leave pgtest1 and db3 alone."""
    import uuid

    from infra.lab.disks import DiskImageSpec, PartitionSpec
    from infra.lab.dsfiles import session_cookie
    from infra.lab.seed import LabDiskSpec, LabVMSpec, seed_vm
    from infra.lab.vcenter import session

    def make(disks: int = 1, size_mib: int = 4, name: str | None = None) -> str:
        name = name or f"scratch-{uuid.uuid4().hex[:8]}"
        specs = tuple(
            LabDiskSpec(
                label=f"d{unit}",
                bus=0,
                unit=unit,
                boot=unit == 0,
                image=DiskImageSpec(
                    size_bytes=size_mib * 2**20,
                    label="dos",
                    label_id=f"0x5c0a{unit:04x}",
                    seed=7 + unit,
                    partitions=(PartitionSpec(size_mib=None, type="83", content="random", random_mib=1),),
                ),
            )
            for unit in range(disks)
        )
        with session(lab.vcenter) as si:
            seed_vm(
                si,
                lab.vcenter,
                LabVMSpec(name=name, controllers=1, disks=specs),
                lab.workdir / name,
                session_cookie(si),
            )
        return name

    return make


@pytest.fixture
def cloudstack_sim(tmp_path: Path):
    """Our CloudStack simulator in-process, with its hub VM and volumes as sparse files under tmp_path."""
    from infra.lab.cloudstack import CloudStackSimulator

    with CloudStackSimulator(tmp_path / "cloudstack", job_delay=0.02) as sim:
        yield sim


@pytest.fixture
def cloudstack_block(cloudstack_sim):
    from blocks.cloudstack import CloudStack

    i = cloudstack_sim.info()
    return CloudStack(
        endpoint=i.url,
        api_key=i.api_key,
        secret_key=i.secret_key,
        zone_id=i.zone_id,
        disk_offering_id=i.custom_disk_offering_id,
        service_offering_id=i.service_offering_id,
        template_id=i.template_id,
        hub_vm_id=i.hub_vm_id,
        device_root=i.dev_root,
        poll_interval=0.01,
    )
