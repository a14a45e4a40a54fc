"""Failover tasks: one CloudStack side effect each, safe to retry (each checks the state it would create)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks.cloudstack import CloudStack
from blocks.vcenter import VCenter
from catalog.inventory import RecordedVM
from clients.cloudstack import CloudStackError, VirtualMachine
from clients.vsphere import VSphereClient, VSphereError, VSphereSnapshots
from tasks.cloudstack import destination_limit
from vmferry.failover_plan import PlannedAttachment


def destination_name(vm: RecordedVM, mode: str) -> str:
    """Deterministic (cleanup finds a VM an interrupted failover created) and made of ids only."""
    return f"vmferry-vm{vm.vm_context_id}-{mode}"


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def deploy_destination_vm(cloudstack: CloudStack, vm: RecordedVM, mode: str) -> VirtualMachine:
    """The destination VM, stopped (startvm=false), with the source's CPUs and memory when the service offering
    is a custom one (a fixed offering decides them itself); an existing one of the same name is reused."""
    name = destination_name(vm, mode)
    with cloudstack.client() as client:
        existing = [
            v for v in client.list_vms(name=name) if v.name == name and v.state not in ("Destroyed", "Expunging")
        ]
        if existing:
            return existing[0]
        offering = client.get_service_offering(cloudstack.service_offering_id)
        sizing: dict[str, int] = {}
        if offering.customized:
            sizing = {
                "cpu_number": vm.cpu_count or 1,
                "cpu_speed_mhz": cloudstack.cpu_speed_mhz,
                "memory_mb": vm.memory_mb or 1024,
            }
        elif (offering.cpu_number or 0) < (vm.cpu_count or 0) or (offering.memory_mb or 0) < (vm.memory_mb or 0):
            get_run_logger().warning(
                "service offering %s (%s CPUs, %s MiB) is smaller than VM %r (%s CPUs, %s MiB); a custom offering "
                "sizes the destination like the source",
                offering.name, offering.cpu_number, offering.memory_mb, vm.name, vm.cpu_count, vm.memory_mb,
            )  # fmt: skip
        return client.deploy_vm(
            zone_id=cloudstack.zone_id,
            service_offering_id=cloudstack.service_offering_id,
            template_id=cloudstack.template_id,
            name=name,
            startvm=False,
            **sizing,
        )


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def remove_template_root(cloudstack: CloudStack, vm_id: str, keep_volume_ids: list[str]) -> list[str]:
    """Detach and delete the VM's template root volume (not one of ours), so our OS volume can be root."""
    removed = []
    with cloudstack.client() as client:
        for volume in client.list_volumes(virtual_machine_id=vm_id):
            if volume.type == "ROOT" and volume.id not in keep_volume_ids:
                client.detach_volume(volume.id)
                client.delete_volume(volume.id)
                removed.append(volume.id)
    return removed


@task(
    retries=2,
    retry_delay_seconds=2,
    cache_policy=NO_CACHE,
    task_run_name="move-{item.disk_id}-to-device-{item.device_id}",
)
def attach_to_destination(cloudstack: CloudStack, item: PlannedAttachment, vm_id: str) -> None:
    """Detach the volume from the hub and attach it at its planned device id (0 makes it ROOT)."""
    with cloudstack.client() as client:
        volume = client.get_volume(item.volume_id)
        if volume.virtual_machine_id == vm_id:
            return
        if volume.virtual_machine_id is not None:
            # between syncs volumes are detached; one left on a hub by an interrupted sync is taken off it
            if volume.virtual_machine_id not in cloudstack.hub_ids():
                raise CloudStackError(
                    "attachVolume", f"volume {item.volume_id} is attached to {volume.virtual_machine_id}, not a hub"
                )
            client.detach_volume(item.volume_id)
        client.attach_volume(item.volume_id, vm_id, item.device_id)


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def read_back_devices(cloudstack: CloudStack, vm_id: str) -> dict[str, tuple[int | None, str]]:
    with cloudstack.client() as client:
        return {v.id: (v.device_id, v.type) for v in client.list_volumes(virtual_machine_id=vm_id)}


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def start_destination_vm(cloudstack: CloudStack, vm_id: str) -> VirtualMachine:
    with cloudstack.client() as client:
        current = client.get_vm(vm_id)
        return current if current.state == "Running" else client.start_vm(vm_id)


@task(retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def power_off_source(vcenter: VCenter, vm: RecordedVM) -> str:
    """Power the source VM off for a live failover; refuses with vCenter's reason when it cannot."""
    from pyVim.task import WaitForTask
    from pyVmomi import vim, vmodl

    with VSphereClient(vcenter.endpoint()) as client:
        source = VSphereSnapshots(client, vm.instance_uuid).vm
        if source.runtime.powerState == vim.VirtualMachinePowerState.poweredOff:
            return "already off"
        try:
            WaitForTask(source.PowerOffVM_Task())
        except vmodl.MethodFault as exc:
            raise VSphereError(
                f"VM {vm.name!r} could not be powered off ({exc.msg or type(exc).__name__}); a live failover needs "
                "the source stopped so the final sync is complete — stop it by hand or fix the cause"
            ) from exc
        return "powered off"


def leave_volume_detached(cloudstack: CloudStack, volume_id: str) -> None:
    """Compensation and cleanup: wherever the volume is, take it off (volumes rest detached between syncs)."""
    with cloudstack.client() as client:
        volume = client.get_volume(volume_id)
        if volume.virtual_machine_id is not None:
            if volume.virtual_machine_id not in cloudstack.hub_ids():
                holder = client.get_vm(volume.virtual_machine_id)
                if holder.state == "Running":  # a root volume only comes off a stopped VM
                    client.stop_vm(holder.id, forced=True)
            client.detach_volume(volume_id)


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def destination_data_volume_limit(cloudstack: CloudStack) -> int:
    with cloudstack.client() as client:
        return destination_limit(client, cloudstack)


def remove_destination_vm(cloudstack: CloudStack, vm_id: str, our_volume_ids: list[str]) -> None:
    """Compensation and cleanup: stop the VM, take our volumes off it, destroy it (expunge)."""
    with cloudstack.client() as client:
        try:
            current = client.get_vm(vm_id)
        except CloudStackError:
            return  # already gone
        if current.state in ("Destroyed", "Expunging"):
            return
        if current.state == "Running":
            client.stop_vm(vm_id, forced=True)
        for volume in client.list_volumes(virtual_machine_id=vm_id):
            if volume.id in our_volume_ids:
                client.detach_volume(volume.id)
        client.destroy_vm(vm_id, expunge=True)
