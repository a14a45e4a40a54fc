"""Holds one slot of a global concurrency limit inside a flow run until killed (the limit's name on argv)."""

from __future__ import annotations

import sys
import time

from prefect import flow

from orchestration.limits import holding


@flow(name="hold-slot")
def hold_slot(name: str) -> None:
    with holding(name, 1):
        print("holding", flush=True)
        while True:
            time.sleep(60)


if __name__ == "__main__":
    hold_slot(sys.argv[1])
