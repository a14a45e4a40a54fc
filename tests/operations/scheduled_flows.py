"""Flows that the real-server tests deploy from this directory (a worker loads them by path)."""

from __future__ import annotations

import os
import signal

from prefect import flow


@flow(name="ops-tick")
def tick() -> str:
    return "tick"


@flow(name="ops-fail")
def fail() -> None:
    raise RuntimeError("this run fails on purpose: the alert must say so")


@flow(name="ops-crash")
def crash() -> None:
    """Dies the way an out-of-memory kill ends a run: no exception, no final state from the run itself; the
    worker sees its process gone and reports the run Crashed."""
    os.kill(os.getpid(), signal.SIGKILL)
