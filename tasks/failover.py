"""Failover tasks: one CloudStack side effect each, safe to retry (each checks the state it would create)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks.cloudstack import CloudStack
from blocks.vcenter import VCenter
from catalog import default_catalog
from catalog.failovers import FailoverView, context_after_rollback, finish_failover, get_failover, set_destination
from catalog.inventory import RecordedVM
from catalog.replication import VolumeView, forget_change_id, record_attachment, volumes_of_vm
from clients.cloudstack import CloudStackError, CloudStackNotFound, VirtualMachine
from common.names import destination_vm_name
from common.vsphere import PowerChangeFailed, VSphereClient, VSphereError
from tasks.cloudstack import VolumeRefused, destination_limit
from vmferry.errors import VmferryError, retry_unless_permanent
from vmferry.failover_plan import FailoverRefused, PlannedAttachment, plan_sizing
from vmferry.network_plan import PlannedNic


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE, retry_condition_fn=retry_unless_permanent)
def deploy_destination_vm(
    cloudstack: CloudStack,
    vm: RecordedVM,
    mode: str,
    failover_id: int,
    nics: list[PlannedNic] | None = None,
    cluster_id: str | None = None,
) -> VirtualMachine:
    """The destination VM, stopped (startvm=false), with the source's CPUs and memory when the service offering
    is a custom one (a fixed offering decides them itself), one NIC per planned NIC in order, in ``cluster_id``
    when given.

    Its id is recorded on the failover the moment CloudStack allocates it, so cleanup and the reconciler find it
    after any crash. On a retry, the VM this failover deployed is reused, or removed when its deploy job left it
    in Error; a VM of that name this failover did not deploy is not ours and is never reused.
    """
    name = destination_vm_name(vm.vm_context_id, mode)
    catalog = default_catalog()
    with cloudstack.client() as client:
        ours = get_failover(catalog, failover_id).destination_vm_id
        for existing in client.list_vms(name=name):
            if existing.name != name or existing.state in ("Destroyed", "Expunging"):
                continue
            if existing.id != ours:
                raise FailoverRefused(
                    f"CloudStack already has a VM {name!r} ({existing.id}, {existing.state}) that this failover did "
                    f"not create: an interrupted failover of {vm.name!r} left it; run cleanup_failover or the "
                    "reconciler, then fail over again"
                )
            if existing.state != "Error":
                return existing
            # a failed deploy job leaves its VM in Error: useless, and in the way of the next attempt
            remove_destination_vm(cloudstack, existing.id, [])
        offering = client.get_service_offering(cloudstack.service_offering_id)
        sizing = plan_sizing(
            vm,
            offering_name=offering.name,
            customized=offering.customized,
            offering_cpus=offering.cpu_number,
            offering_memory_mb=offering.memory_mb,
            cpu_speed_mhz=cloudstack.cpu_speed_mhz,
        )
        if sizing.warning:
            get_run_logger().warning(sizing.warning)
        return client.deploy_vm(
            zone_id=cloudstack.zone_id,
            service_offering_id=cloudstack.service_offering_id,
            template_id=cloudstack.template_id,
            name=name,
            startvm=False,
            networks=[(nic.network_id, nic.ip_address) for nic in nics] if nics else None,
            cluster_id=cluster_id,
            on_submitted=lambda vm_id: set_destination(catalog, failover_id, vm_id),
            **sizing.deploy_arguments(),
        )


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE, retry_condition_fn=retry_unless_permanent)
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
    retry_condition_fn=retry_unless_permanent,
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
                raise VolumeRefused(
                    f"volume {item.volume_id} ({item.disk_id}) is attached to VM {volume.virtual_machine_id}, not "
                    "a hub: another failover holds it; clean that up or revert it first"
                )
            client.detach_volume(item.volume_id)
        client.attach_volume(item.volume_id, vm_id, item.device_id)


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE, retry_condition_fn=retry_unless_permanent)
def read_back_devices(cloudstack: CloudStack, vm_id: str) -> dict[str, tuple[int | None, str]]:
    with cloudstack.client() as client:
        return {v.id: (v.device_id, v.type) for v in client.list_volumes(virtual_machine_id=vm_id)}


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE, retry_condition_fn=retry_unless_permanent)
def start_destination_vm(cloudstack: CloudStack, vm_id: str) -> VirtualMachine:
    with cloudstack.client() as client:
        current = client.get_vm(vm_id)
        return current if current.state == "Running" else client.start_vm(vm_id)


def _set_power(vcenter: VCenter, vm: RecordedVM, on: bool, fix: str) -> str:
    """Power the source VM on or off (nothing when it already is); vCenter's reason and ``fix`` when it cannot."""
    word = "on" if on else "off"
    with VSphereClient(vcenter.endpoint()) as client:
        try:
            changed = client.set_power(vm.instance_uuid, on)
        except PowerChangeFailed as exc:
            raise VSphereError(f"VM {vm.name!r} could not be powered {word} ({exc.reason}); {fix}") from exc
    return f"powered {word}" if changed else f"already {word}"


@task(retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE, retry_condition_fn=retry_unless_permanent)
def power_off_source(vcenter: VCenter, vm: RecordedVM) -> str:
    """Power the source VM off for a live failover; refuses with vCenter's reason when it cannot."""
    fix = "a live failover needs the source stopped so the final sync is complete — stop it by hand or fix the cause"
    return _set_power(vcenter, vm, False, fix)


@task(retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE, retry_condition_fn=retry_unless_permanent)
def power_on_source(vcenter: VCenter, vm: RecordedVM) -> str:
    """Power the source VM on again: after a live failover that failed once it was off, or on a revert."""
    return _set_power(vcenter, vm, True, "it stays off: power it on by hand in vCenter")


def leave_volume_detached(cloudstack: CloudStack, volume_id: str) -> bool:
    """Compensation and cleanup: wherever the volume is, take it off (volumes rest detached between syncs).

    True when a VM other than a hub held it (it was written there), so a cleanup reports only what it did and
    the next sync does not trust the volume's change id."""
    with cloudstack.client() as client:
        volume = client.get_volume(volume_id)
        if volume.virtual_machine_id is None:
            return False
        written_elsewhere = volume.virtual_machine_id not in cloudstack.hub_ids()
        if written_elsewhere:
            holder = client.get_vm(volume.virtual_machine_id)
            if holder.state == "Running":  # a root volume only comes off a stopped VM
                client.stop_vm(holder.id, forced=True)
        client.detach_volume(volume_id)
    return written_elsewhere


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE, retry_condition_fn=retry_unless_permanent)
def destination_data_volume_limit(cloudstack: CloudStack) -> int:
    with cloudstack.client() as client:
        return destination_limit(client, cloudstack)


class DestinationVmUnknown(VmferryError):
    """CloudStack did not say whether a destination VM exists (unreachable, refused our keys): exit 1, retry later."""


def remove_destination_vm(cloudstack: CloudStack, vm_id: str, our_volume_ids: list[str]) -> bool:
    """Compensation and cleanup: stop the VM, take our volumes off it, destroy it (expunge).

    True when there was a VM to destroy, so a cleanup reports only what it did. Only CloudStack's own answer
    that the VM does not exist means "already gone": an unreachable CloudStack or refused credentials say
    nothing about the VM, so the cleanup fails (DestinationVmUnknown) and leaves the failover to a retry."""
    with cloudstack.client() as client:
        try:
            current = client.get_vm(vm_id)
        except CloudStackNotFound:
            return False  # already gone
        except CloudStackError as exc:
            unknown = DestinationVmUnknown(
                f"could not tell whether destination VM {vm_id} still exists, so it was not removed and the "
                f"failover stays recorded: {exc}. Run the cleanup again once CloudStack answers (check its "
                "endpoint and the API keys of the CloudStack block)"
            )
            # the client's attempts and verdict carry over: the task retries only what its client did not
            unknown.client_attempts = exc.client_attempts
            unknown.retryable = exc.retryable
            raise unknown from exc
        if current.state in ("Destroyed", "Expunging"):
            return False
        if current.state == "Running":
            client.stop_vm(vm_id, forced=True)
        for volume in client.list_volumes(virtual_machine_id=vm_id):
            if volume.id in our_volume_ids:
                client.detach_volume(volume.id)
        client.destroy_vm(vm_id, expunge=True)
    return True


def volumes_held_elsewhere(cloudstack: CloudStack, volume_ids: list[str]) -> list[str]:
    """Those of ``volume_ids`` a VM other than a hub holds now (a test VM ran on them)."""
    with cloudstack.client() as client:
        return [
            volume_id
            for volume_id in volume_ids
            if client.get_volume(volume_id).virtual_machine_id not in (None, *cloudstack.hub_ids())
        ]


def leave_volumes_detached(cloudstack: CloudStack, volumes: dict[int, VolumeView]) -> tuple[list[str], list[str]]:
    """Cleanup and the reconciler: every replicated volume of the VM off whatever VM holds it (volumes rest
    detached between syncs); returns (the VM's volumes, those this call took off a VM other than a hub). Those
    were written there, so their next sync compares every block rather than trusting the change id."""
    catalog = default_catalog()
    moved = []
    for vm_disk_id in sorted(volumes):
        volume = volumes[vm_disk_id]
        if leave_volume_detached(cloudstack, volume.volume_id):
            moved.append(volume.volume_id)
            forget_change_id(catalog, volume.volume_id)
        record_attachment(catalog, volume.volume_id, vm_id=None, device_id=None, device_path=None, state="detached")
    return [volumes[i].volume_id for i in sorted(volumes)], moved


def roll_back_interrupted_failover(cloudstack: CloudStack, failover: FailoverView) -> None:
    """The reconciler, for a failover whose process died: its recorded destination VM goes, every volume is left
    detached, and the context says what is true (ready, or the source is off)."""
    catalog = default_catalog()
    volumes = {v.vm_disk_id: v for v in volumes_of_vm(catalog, failover.vm_context_id)}
    if failover.destination_vm_id:
        remove_destination_vm(cloudstack, failover.destination_vm_id, [v.volume_id for v in volumes.values()])
    leave_volumes_detached(cloudstack, volumes)
    finish_failover(catalog, failover.id, "interrupted", context_after_rollback(catalog, failover.vm_context_id))


# The helpers above as tasks, for the steps of cleanup and revert: retried, and visible in the flow run. Each
# looks at what CloudStack has first, so a retry does not repeat what an earlier attempt did. Compensations,
# tasks and the reconciler call the helpers themselves (a compensation must work while the flow is cancelled).
cloudstack_step = task(
    retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE, retry_condition_fn=retry_unless_permanent
)
destroy_destination_vm = cloudstack_step(remove_destination_vm)
detach_vm_volumes = cloudstack_step(leave_volumes_detached)
find_volumes_held_elsewhere = cloudstack_step(volumes_held_elsewhere)
