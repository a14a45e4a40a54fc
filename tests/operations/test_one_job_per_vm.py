"""One job per VM at a time: a second flow on a VM waits for the first and says so; a nested one takes nothing."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from sqlalchemy import select

from catalog.inventory import find_vm
from catalog.models import Job
from common.names import artifact_key, slug, vm_limit_name
from flows.backup import backup_vm
from flows.replicate import replicate_vm
from orchestration.runs import one_job_per_vm

pytestmark = pytest.mark.usefixtures("prefect_backend")


@dataclass
class FakeVM:
    name: str
    instance_uuid: str


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def flow_run_logs():
    handler = Records()
    logger = logging.getLogger("prefect.flow_runs")
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


def run_together(*calls: Any) -> tuple[list[Any], list[BaseException]]:
    results: list[Any] = []
    errors: list[BaseException] = []

    def run(call: Any) -> None:
        try:
            results.append(call())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not any(t.is_alive() for t in threads)
    return results, errors


def test_names_and_keys_are_what_prefect_accepts():
    assert slug("DB 3/prod_%x") == "db-3-prod-x"
    assert artifact_key("backup", "DB3.example") == "backup-db3-example"
    assert vm_limit_name("421C3F0E-AAAA-bbbb-cccc-0123456789AB") == "vm-421c3f0e-aaaa-bbbb-cccc-0123456789ab"


def test_jobs_on_one_vm_run_one_after_the_other_and_a_nested_one_takes_nothing(flow_run_logs):
    vm = FakeVM("waits-vm", "5c0a0000-0000-4000-8000-000000000001")
    spans: list[tuple[str, float, float]] = []
    first_inside = threading.Event()

    @flow(name="inner-on-vm")
    @one_job_per_vm("inner", lambda arguments: vm)
    def inner(label: str) -> None:
        time.sleep(0.1)

    @flow(name="outer-on-vm")
    @one_job_per_vm("outer", lambda arguments: vm)
    def outer(label: str) -> None:
        started = time.monotonic()
        first_inside.set()
        time.sleep(2)
        inner(label)  # the same VM: this flow holds its slot already and must not wait for itself
        spans.append((label, started, time.monotonic()))

    def second() -> None:
        assert first_inside.wait(60)
        outer("b")

    _, errors = run_together(lambda: outer("a"), second)

    assert errors == []
    assert [label for label, *_ in spans] == ["a", "b"]
    (_, _, a_end), (_, b_start, _) = spans
    assert b_start >= a_end, "two jobs held the VM at once"
    assert any("VM waits-vm is busy with another vmferry job: this outer waits" in m for m in flow_run_logs)
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(vm_limit_name(vm.instance_uuid)).active_slots == 0
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["vm:waits-vm"])))
    assert {tuple(sorted(r.tags)) for r in runs} == {("outer", "vm:waits-vm"), ("inner", "vm:waits-vm")}
    assert len(runs) == 4


@pytest.mark.usefixtures("nbd_port_range")
def test_backup_and_replication_of_one_vm_started_together_both_succeed_one_after_the_other(
    make_scratch_vm,
    lab,
    agent_block,
    lab_vcenter_block,
    cloudstack_block,
    repository_block,
    configured_catalog,
    flow_run_logs,
):
    vm_name = make_scratch_vm(disks=2)
    limit = 2**20  # both copies take seconds (1 MiB of data per disk): without the slot they would meet at the agent
    results, errors = run_together(
        lambda: backup_vm(
            vm_name, repository_block, agent_block, lab_vcenter_block, bandwidth_limit_bytes_per_second=limit
        ),
        lambda: replicate_vm(
            vm_name, cloudstack_block, agent_block, lab_vcenter_block, bandwidth_limit_bytes_per_second=limit
        ),
    )

    assert errors == [], errors
    assert len(results) == 2
    recorded = find_vm(configured_catalog, vm_name)
    with configured_catalog.session() as session:
        jobs = session.scalars(
            select(Job).where(Job.vm_context_id == recorded.vm_context_id).order_by(Job.started_at)
        ).all()
        spans = [(job.kind, job.state, job.started_at, job.finished_at) for job in jobs]
    assert sorted(kind for kind, *_ in spans) == ["backup", "replication"], spans
    assert all(state == "succeeded" for _, state, *_ in spans), spans
    (_, _, _, first_end), (_, _, second_start, _) = spans
    assert second_start >= first_end, f"the jobs overlapped: {spans}"
    assert any(f"VM {vm_name} is busy with another vmferry job" in m for m in flow_run_logs), "\n".join(flow_run_logs)
