"""The job row every flow leaves (flows/_job.py ``job()``): how it ends, what it says, and when it is closed."""

from __future__ import annotations

import pytest
from prefect import flow

from catalog.jobs import get_job, list_jobs
from flows._job import job

pytestmark = pytest.mark.usefixtures("prefect_backend")


class Injected(Exception):
    pass


def test_a_block_that_ends_closes_its_job_succeeded(configured_catalog):
    @flow
    def works() -> str:
        with job("discovery") as job_id:
            assert get_job(configured_catalog, job_id).state == "running"
        return job_id

    row = get_job(configured_catalog, works())
    assert (row.kind, row.state, row.error) == ("discovery", "succeeded", None)
    assert row.finished_at is not None and row.flow_run_id is not None


def test_a_failure_closes_the_job_failed_after_the_compensation_and_propagates_unchanged(configured_catalog):
    raised = Injected("the agent refused the job for VM 'db3'")
    seen: list[str] = []

    @flow
    def fails() -> None:
        with job("copy") as job_id:
            try:
                raise raised
            except BaseException:
                seen.append(get_job(configured_catalog, job_id).state)  # the flow's compensation runs first
                raise

    with pytest.raises(Injected) as caught:
        fails()
    assert caught.value is raised
    (row,) = list_jobs(configured_catalog)
    assert seen == ["running"]
    assert (row.kind, row.state, row.error) == ("copy", "failed", "the agent refused the job for VM 'db3'")


def test_a_failure_without_words_and_a_custom_error_text(configured_catalog):
    @flow
    def silent() -> None:
        with job("restore"):
            raise Injected()

    @flow
    def counted() -> None:
        with job("reconcile", error_text=lambda exc: f"counted: {type(exc).__name__}"):
            raise Injected("three orphans")

    for run in (silent, counted):
        with pytest.raises(Injected):
            run()
    rows = {row.kind: row for row in list_jobs(configured_catalog)}
    assert rows["restore"].state == "failed" and "Injected" in (rows["restore"].error or "")
    assert rows["reconcile"].error == "counted: Injected"
