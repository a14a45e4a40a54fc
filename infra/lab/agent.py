"""Running the reference agent as a real process against the lab vCenter (tests, demo)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from agent.config import NbdTlsSettings
from infra.lab.processes import free_port, stop_child
from infra.lab.vcenter import LabVCenter


@dataclass
class AgentProcess:
    url: str
    token: str
    process: subprocess.Popen[bytes]
    config_path: Path
    log_path: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        stop_child(self.process, sig, timeout)


def start_agent(
    lab: LabVCenter,
    workdir: Path,
    *,
    timeout: float = 30,
    nbd_tls: NbdTlsSettings | None = None,
    max_parallel_disks: int | None = None,
) -> AgentProcess:
    """Write a 0600 config for the lab vCenter, start ``python -m agent``, wait until it answers.

    `nbd_tls` becomes the config's nbd_tls section, for hubs whose exports speak TLS (nbds://).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    config: dict[str, object] = {
        "token": token,
        "vcenter": {
            "host": lab.host,
            "port": lab.port,
            "username": lab.user,
            "password": lab.password,
            "thumbprint": lab.thumbprint,
        },
    }
    if nbd_tls is not None:
        config["nbd_tls"] = nbd_tls.model_dump(exclude_none=True)
    if max_parallel_disks is not None:  # one disk after the other: a test can stop the copy between two disks
        config["max_parallel_disks"] = max_parallel_disks
    config_path = workdir / "agent.json"
    fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(config, handle)
    port = free_port()
    log_path = workdir / "agent.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "agent", "--config", str(config_path), "--host", "127.0.0.1", "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    agent = AgentProcess(f"http://127.0.0.1:{port}", token, process, config_path, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"agent exited with {process.returncode}: {log_path.read_text()[-2000:]}")
        try:
            response = httpx.get(f"{agent.url}/api/v1/health", headers={"Authorization": f"Bearer {token}"}, timeout=1)
            if response.status_code == 200:
                return agent
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    agent.stop()
    raise RuntimeError(f"agent did not answer within {timeout:.0f} s: {log_path.read_text()[-2000:]}")
