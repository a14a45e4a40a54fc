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


@pytest.fixture
def cloudstack_block(cloudstack_block, cloudstack_sim):
    """Failover VMs take their size from the source: the simulator's custom (dynamic) service offering."""
    return cloudstack_block.model_copy(update={"service_offering_id": cloudstack_sim.info().custom_service_offering_id})


@pytest.fixture
def replicated(lab, cloudstack_block, agent_block, lab_vcenter_block, configured_catalog, make_scratch_vm):
    from flows.replicate import replicate_vm

    def make(vm_name: str | None = None, disks: int = 3) -> str:
        name = vm_name or make_scratch_vm(disks=disks)
        replicate_vm(name, cloudstack_block, agent_block, lab_vcenter_block)
        return name

    return make
