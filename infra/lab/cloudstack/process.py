"""Running the CloudStack simulator as a real process (tests that need a separate server, the lab)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from infra.lab.cloudstack.cloud import KVM_MAX_DATA_VOLUMES
from infra.lab.cloudstack.server import SimulatorInfo
from infra.lab.processes import free_port, process_alive, stop_child, stop_pid

INFO_FILE = "simulator.json"


@dataclass
class SimulatorProcess:
    info: SimulatorInfo
    process: subprocess.Popen[bytes]
    log_path: Path

    def inject_fault(self, command: str, nth: int = 1, kind: str = "error", **options: object) -> dict[str, object]:
        """Same as CloudStackSimulator.inject_fault, through the admin endpoint."""
        response = httpx.post(
            f"{self.info.admin_url}/faults", json={"command": command, "nth": nth, "kind": kind, **options}, timeout=5
        )
        response.raise_for_status()
        answer: dict[str, object] = response.json()
        return answer

    def clear_faults(self) -> None:
        httpx.delete(f"{self.info.admin_url}/faults", timeout=5).raise_for_status()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        stop_child(self.process, sig, timeout)


def start_simulator_process(
    state_dir: Path,
    *,
    port: int | None = None,
    job_delay: float = 0.1,
    max_data_disks: int = KVM_MAX_DATA_VOLUMES,
    hub_vm_id: str | None = None,
    timeout: float = 20,
    boot_vms: bool = False,
) -> SimulatorProcess:
    """Start ``python -m infra.lab.cloudstack`` and wait until its admin endpoint answers."""
    state_dir.mkdir(parents=True, exist_ok=True)
    info_path = state_dir / INFO_FILE
    info_path.unlink(missing_ok=True)
    argv = [
        sys.executable, "-m", "infra.lab.cloudstack",
        "--state-dir", str(state_dir),
        "--port", str(port if port is not None else free_port()),
        "--job-delay", str(job_delay),
        "--max-data-disks", str(max_data_disks),
    ]  # fmt: skip
    if hub_vm_id is not None:
        argv += ["--hub-vm-id", hub_vm_id]
    if boot_vms:
        argv.append("--boot-vms")
    log_path = state_dir / "simulator.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"simulator exited with {process.returncode}: {log_path.read_text()[-2000:]}")
        if info_path.is_file():
            info = SimulatorInfo.from_dict(json.loads(info_path.read_text()))
            try:
                httpx.get(f"{info.admin_url}/info", timeout=1).raise_for_status()
            except httpx.HTTPError:
                time.sleep(0.1)
                continue
            return SimulatorProcess(info, process, log_path)
        time.sleep(0.1)
    process.kill()
    process.wait()
    raise RuntimeError(f"simulator did not come up within {timeout:.0f} s: {log_path.read_text()[-2000:]}")


def simulator_alive(pid: int) -> bool:
    """True when ``pid`` is a running CloudStack simulator (checked by command line, never by pid alone)."""
    return process_alive(pid, b"infra.lab.cloudstack")


def stop_simulator_pid(pid: int, timeout: float = 10) -> None:
    """Stop a simulator started by an earlier process (the lab's), idempotently."""
    stop_pid(pid, b"infra.lab.cloudstack", timeout)
