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


def backup_arguments(
    vm: str, repository: BackupRepository, agent: Agent, vcenter: VCenter, bandwidth_limit_bytes_per_second: int
) -> dict:
    """What this script reads on stdin, secrets included."""
    return {
        "vm": vm,
        "repository": {"name": repository.name, "path": repository.path},
        "agent": {"url": agent.url, "token": agent.token.get_secret_value()},
        "vcenter": {
            "host": vcenter.host,
            "port": vcenter.port,
            "username": vcenter.username,
            "password": vcenter.password.get_secret_value(),
            "thumbprint": vcenter.thumbprint,
        },
        "bandwidth_limit_bytes_per_second": bandwidth_limit_bytes_per_second,
    }


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
