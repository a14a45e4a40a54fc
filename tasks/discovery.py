"""Tasks of discovery: read the vCenter, record what was read. One side effect each."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.vcenter import VCenter
from catalog import default_catalog
from catalog.errors import UnknownRecord
from catalog.inventory import RecordedVM, mark_vms_missing, record_vm
from catalog.inventory import find_vm as find_recorded_vm
from clients.vsphere_tags import TagName, VSphereTags
from common.inventory import ObservedVM
from common.vsphere import VSphereClient, VSphereError
from vmferry.errors import retry_unless_permanent
from vmferry.policies import VMTag


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE, retry_condition_fn=retry_unless_permanent)
def read_vcenter_inventory(vcenter: VCenter, vm_names: list[str] | None = None) -> list[ObservedVM]:
    """Every VM of the vCenter (or just ``vm_names``, by name, instance UUID or moref) with its disks."""
    with VSphereClient(vcenter.endpoint()) as client:
        if vm_names:
            return [_find_vm(client, name) for name in vm_names]
        return client.list_vms()


def _find_vm(client: VSphereClient, handle: str) -> ObservedVM:
    """A name the catalog already knows is looked up by its instance UUID (the search index: one object,
    whatever the estate's size) and accepted if vCenter still gives it that name; else by name (a name-only
    query over every VM)."""
    try:
        known = find_recorded_vm(default_catalog(), handle, vcenter=client.vcenter_id())
    except UnknownRecord:
        return client.find_vm(handle)
    if handle != known.name:
        return client.find_vm(handle)  # an instance UUID or moref: already a direct lookup
    try:
        seen = client.find_vm(known.instance_uuid)
    except VSphereError:
        return client.find_vm(handle)
    return seen if seen.name == handle else client.find_vm(handle)


@task(
    retries=2,
    retry_delay_seconds=2,
    cache_policy=NO_CACHE,
    retry_condition_fn=retry_unless_permanent,
    task_run_name="enable-cbt-{vm_name}",
)
def enable_change_tracking(vcenter: VCenter, vm_name: str) -> bool:
    """Safe to retry: a VM whose CBT is already on is left alone (False)."""
    with VSphereClient(vcenter.endpoint()) as client:
        return client.enable_change_tracking(vm_name)


@task(retries=3, retry_delay_seconds=1, cache_policy=NO_CACHE, task_run_name="record-{vm.name}")
def record_vm_inventory(vm: ObservedVM) -> RecordedVM:
    return record_vm(default_catalog(), vm)


@task(retries=3, retry_delay_seconds=1, cache_policy=NO_CACHE)
def mark_missing_vms(vcenter_id: str, seen_instance_uuids: list[str]) -> list[str]:
    return mark_vms_missing(default_catalog(), vcenter_id, set(seen_instance_uuids))


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE, retry_condition_fn=retry_unless_permanent)
def read_vm_folders(vcenter: VCenter) -> dict[str, str]:
    """Every VM's inventory folder path (``/DC0/vm/prod``), keyed on its moref."""
    with VSphereClient(vcenter.endpoint()) as client:
        return client.vm_folders()


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE, retry_condition_fn=retry_unless_permanent)
def read_tagged_vms(vcenter: VCenter, tags: list[VMTag]) -> list[str]:
    """The morefs of the VMs carrying any of ``tags`` (vCenter's vAPI tagging service)."""
    with VSphereTags(vcenter.endpoint()) as client:
        return sorted(client.vms_tagged([TagName(t.category, t.tag) for t in tags]))
