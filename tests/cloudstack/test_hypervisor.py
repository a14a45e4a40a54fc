"""The simulator's KVM host (lab option boot_vms): a started VM runs in qemu until it is stopped or destroyed."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from clients.cloudstack import CloudStackClient
from clients.qemu_boot import firmware_failure
from infra.lab.cloudstack import CloudStackSimulator


def test_a_started_vm_runs_in_qemu_until_stopped_or_destroyed(tmp_path: Path) -> None:
    with CloudStackSimulator(tmp_path / "cs", job_delay=0.02, boot_vms=True) as sim:
        info = sim.info()
        hypervisor = sim.cloud.hypervisor
        assert hypervisor is not None
        with CloudStackClient(info.url, info.api_key, info.secret_key, poll_interval=0.01, job_timeout=30) as cs:
            vm = cs.deploy_vm(
                zone_id=info.zone_id, service_offering_id=info.service_offering_id, template_id=info.template_id,
                name="booted", startvm=True,
            )  # fmt: skip
            running = hypervisor.vm(vm.id)
            assert running is not None and running.running()
            assert hypervisor.vm(info.hub_vm_id) is None  # the hub stands for this machine: never run
            # the template's root volume is empty: the firmware says so on its debug port
            deadline = time.monotonic() + 30
            while firmware_failure(hypervisor.firmware_log(vm.id)) is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert "not a bootable disk" in (firmware_failure(hypervisor.firmware_log(vm.id)) or "")
            answer = httpx.get(f"{info.admin_url}/vms/{vm.id}/console", timeout=5).json()
            assert answer["running"] is True and isinstance(answer["console"], str)

            cs.stop_vm(vm.id)
            assert hypervisor.vm(vm.id) is None and not running.running()
            cs.start_vm(vm.id)
            again = hypervisor.vm(vm.id)
            assert again is not None and again.running() and again.pid != running.pid
            cs.destroy_vm(vm.id)
            assert hypervisor.vm(vm.id) is None and not again.running()


def test_without_the_option_no_vm_runs(cloudstack_sim: CloudStackSimulator) -> None:
    assert cloudstack_sim.cloud.hypervisor is None
    answer = httpx.get(f"{cloudstack_sim.admin_url}/vms/x/console", timeout=5)
    assert answer.status_code == 404 and "--boot-vms" in answer.json()["error"]
