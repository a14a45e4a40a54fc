"""The rule that decides whether a job's owner is still at work, case by case (no Prefect needed)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid

import pytest

from catalog.jobs import create_job, finish_job
from vmferry.reconcile import FlowRunFacts, OwnerJudge, parse_process_identity, process_identity

HERE = socket.gethostname()


def _judge(catalog, facts: dict[str, FlowRunFacts]) -> OwnerJudge:
    calls: list[list[str]] = []

    def lookup(ids):
        calls.append(list(ids))
        return {i: facts[i] for i in ids if i in facts}

    judge = OwnerJudge(catalog, lookup, hostname=HERE)
    judge.calls = calls  # type: ignore[attr-defined]
    return judge


def _job(catalog, facts: dict[str, FlowRunFacts], fact: FlowRunFacts | None) -> str:
    run_id = str(uuid.uuid4())
    if fact is not None:
        facts[run_id] = fact
    return create_job(catalog, "backup", flow_run_id=run_id)


def _dead_pid_identity() -> str:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    identity = process_identity(child.pid)
    child.wait()
    return identity


def test_the_owner_rules(catalog):
    facts: dict[str, FlowRunFacts] = {}
    me = process_identity()
    host, pid, ticks = parse_process_identity(me)
    assert (host, pid) == (HERE, os.getpid())
    cases = {
        "alive": _job(catalog, facts, FlowRunFacts("RUNNING", "Running", me)),
        "final run": _job(catalog, facts, FlowRunFacts("CRASHED", "Crashed", me)),
        "completed run": _job(catalog, facts, FlowRunFacts("COMPLETED", "Completed", me)),
        "process gone": _job(catalog, facts, FlowRunFacts("RUNNING", "Running", _dead_pid_identity())),
        "pid reused": _job(catalog, facts, FlowRunFacts("RUNNING", "Running", f"{HERE}:{pid}:{ticks + 1}")),
        "other host": _job(catalog, facts, FlowRunFacts("RUNNING", "Running", f"elsewhere:{pid}:{ticks}")),
        "worker's pid": _job(catalog, facts, FlowRunFacts("RUNNING", "Running", "12345")),
        "no process": _job(catalog, facts, FlowRunFacts("RUNNING", "Running", None)),
        "unknown run": _job(catalog, facts, None),
        "no run": create_job(catalog, "backup"),
        "finished": _job(catalog, facts, FlowRunFacts("COMPLETED", "Completed", me)),
    }
    finish_job(catalog, cases["finished"], "succeeded")
    judge = _judge(catalog, facts)
    judge.prefetch()
    verdicts = {case: judge.owner(job_id).status for case, job_id in cases.items()}
    assert verdicts == {
        "alive": "running",
        "final run": "crashed",
        "completed run": "crashed",  # a flow closes its job before its run ends
        "process gone": "crashed",
        "pid reused": "crashed",
        "other host": "unverifiable",
        "worker's pid": "unverifiable",
        "no process": "unverifiable",
        "unknown run": "unverifiable",
        "no run": "unverifiable",
        "finished": "finished",
    }
    assert judge.owner("no-such-job").status == "absent"
    assert len(judge.calls) == 1  # one question to Prefect for every running job
    assert {case for case, job_id in cases.items() if judge.owner(job_id).alive} == {
        "alive",
        "other host",
        "worker's pid",
        "no process",
        "unknown run",
        "no run",
    }


@pytest.mark.parametrize("value", [None, "", "12345", "host:12", "host:x:1", "a:b:c"])
def test_identities_we_did_not_write_are_not_parsed(value):
    assert parse_process_identity(value) is None
