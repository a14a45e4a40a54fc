"""The simulator's KVM host (a lab option): VMs it starts really run in qemu, so a guest can tell what it sees.

A VM runs as CloudStack's KVM agent defines it through libvirt: every attached volume a virtio-blk disk, in device
id order, with the volume's serial (the uuid without dashes, 20 characters: what /dev/disk/by-id shows); the root
volume boots; no network here. Stopping or destroying the VM ends its qemu. The hub VM is never run: it stands for
the machine the tests run on.

Console, firmware log and screen of each VM stay readable under ``<state_dir>/vms/<vm id>/``.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clients.qemu_boot import BootDisk, QemuVM, choose_accel, start_vm

log = logging.getLogger("vmferry.cloudstack_simulator.hypervisor")


@dataclass(frozen=True)
class VMDisk:
    device_id: int
    path: Path
    serial: str


class QemuHypervisor:
    """Runs the simulator's VMs in qemu-system-x86_64 (KVM when a probe works, else TCG)."""

    def __init__(self, runs_dir: Path, *, memory_mib: int = 256, accel: str | None = None) -> None:
        self.runs_dir = runs_dir
        self.memory_mib = memory_mib
        self._accel = accel
        self._running: dict[str, QemuVM] = {}
        self._lock = threading.Lock()

    @property
    def accel(self) -> str:
        if self._accel is None:
            self._accel, why = choose_accel()
            log.info("simulator hypervisor runs VMs with %s: %s", self._accel, why)
        return self._accel

    def run_dir(self, vm_id: str) -> Path:
        return self.runs_dir / vm_id

    def start(self, vm_id: str, disks: Sequence[VMDisk]) -> None:
        """Power the VM on; raises BootError (qemu's own words) when qemu cannot start."""
        ordered = sorted(disks, key=lambda d: d.device_id)
        with self._lock:
            if vm_id in self._running and self._running[vm_id].running():
                return
            run_dir = self.run_dir(vm_id)
            if run_dir.exists():
                shutil.rmtree(run_dir)  # a new power-on is a new console
            vm = start_vm(
                [BootDisk(d.path, "raw", d.serial) for d in ordered],
                run_dir,
                accel=self.accel,
                memory_mib=self.memory_mib,
            )
            self._running[vm_id] = vm
            log.info("VM %s powered on in qemu pid %s with %d disks", vm_id, vm.pid, len(ordered))

    def stop(self, vm_id: str) -> None:
        with self._lock:
            vm = self._running.pop(vm_id, None)
        if vm is not None:
            vm.stop()
            log.info("VM %s powered off", vm_id)

    def stop_all(self) -> None:
        with self._lock:
            running, self._running = dict(self._running), {}
        for vm in running.values():
            vm.stop()

    def vm(self, vm_id: str) -> QemuVM | None:
        with self._lock:
            return self._running.get(vm_id)

    def console(self, vm_id: str) -> str:
        """What the VM printed on its serial console since its last power-on (kept after power-off)."""
        path = self.run_dir(vm_id) / "console.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def firmware_log(self, vm_id: str) -> str:
        path = self.run_dir(vm_id) / "firmware.log"
        return path.read_text(errors="replace") if path.exists() else ""
