"""Runs one failover in its own process, so a test can kill that process in the middle (SIGKILL)."""

from __future__ import annotations

import json
import sys

from blocks.cloudstack import CloudStack
from flows.failover import failover_vm

if __name__ == "__main__":
    arguments = json.loads(sys.argv[1])
    failover_vm(arguments["vm"], CloudStack(**arguments["cloudstack"]), mode="test")
