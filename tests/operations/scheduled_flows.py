"""Flows that the real-server tests deploy from this directory (a worker loads them by path)."""

from __future__ import annotations

from prefect import flow


@flow(name="ops-tick")
def tick() -> str:
    return "tick"


@flow(name="ops-fail")
def fail() -> None:
    raise RuntimeError("this run fails on purpose: the alert must say so")
