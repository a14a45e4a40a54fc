"""Flows of the hook tests: each opens a job row and then never closes it, so only a hook can."""

from __future__ import annotations

import time

from prefect import flow

from orchestration.hooks import ON_CANCELLATION, ON_CRASHED, ON_RUNNING
from tasks.jobs import open_job


class Meltdown(BaseException):
    """Not an Exception: Prefect reports a flow run that raises it as Crashed, not Failed."""


@flow(name="crashing-job", on_running=ON_RUNNING, on_crashed=ON_CRASHED, on_cancellation=ON_CANCELLATION)
def crashing_job() -> None:
    open_job("copy")
    raise Meltdown("the hub lost its mind")


@flow(name="stuck-job", on_running=ON_RUNNING, on_crashed=ON_CRASHED, on_cancellation=ON_CANCELLATION)
def stuck_job() -> None:
    open_job("copy")
    while True:  # until cancelled
        time.sleep(0.2)
