"""Runs one failover in its own process, so a test can kill that process in the middle (SIGKILL)."""

from __future__ import annotations

import json
import sys

from blocks.agent import Agent
from blocks.cloudstack import CloudStack
from blocks.vcenter import VCenter
from flows.failover import failover_vm

if __name__ == "__main__":
    arguments = json.loads(sys.argv[1])
    mode = arguments.get("mode", "test")
    failover_vm(
        arguments["vm"],
        CloudStack(**arguments["cloudstack"]),
        mode=mode,
        vcenter=VCenter(**arguments["vcenter"]) if "vcenter" in arguments else None,
        agent=Agent(**arguments["agent"]) if "agent" in arguments else None,
        confirm_live=arguments.get("confirm_live", False),
    )
