"""Runs one backup in its own process, so a test can SIGKILL that process mid-copy like a crashed hub.

The blocks arrive as JSON on stdin, not in argv, where every user of the machine could read the secrets.
"""

from __future__ import annotations

import json
import sys

from blocks.agent import Agent
from blocks.repository import BackupRepository
from blocks.vcenter import VCenter
from flows.backup import backup_vm

if __name__ == "__main__":
    arguments = json.loads(sys.stdin.read())
    backup_vm(
        arguments["vm"],
        BackupRepository(**arguments["repository"]),
        Agent(**arguments["agent"]),
        VCenter(**arguments["vcenter"]),
        kind="full",
        bandwidth_limit_bytes_per_second=arguments["bandwidth_limit_bytes_per_second"],
    )
