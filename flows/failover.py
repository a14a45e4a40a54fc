"""Failover (test and live): a CloudStack VM with the OS volume as root and every data volume after it.

The failover (job row and failover row) is recorded before its first side effect. Order: (live only: power
the source off, final sync) -> deploy the destination VM stopped (its id recorded as CloudStack allocates it)
-> drop its template root -> move each (detached) replicated volume to its planned device (root 0, data 1,
2, 4, ...) -> read the devices back from CloudStack and compare with the plan -> start. Every step done is pushed
on a compensation stack; any failure undoes exactly those steps: volumes are left detached, the destination VM
is destroyed, the VM context is ready for failover again (or, when a live failover had powered the source off,
says so: source-off-failover-unfinished).
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel

from blocks import load_block
from blocks.agent import Agent
from blocks.cloudstack import CloudStack
from blocks.vcenter import VCenter
from catalog import default_catalog
from catalog.failovers import (
    SOURCE_OFF_UNFINISHED,
    FailoverVolumeView,
    get_failover,
    latest_failover,
)
from catalog.inventory import RecordedVM, find_vm
from catalog.replication import volumes_of_vm
from common import names
from common.names import artifact_key, vm_volumes_limit_name
from flows._job import job
from flows.guest_prep import prepare_os_volume
from flows.replicate import replicate_vm
from orchestration.hooks import ON_CANCELLATION, ON_CRASHED, ON_RUNNING
from orchestration.limits import holding
from orchestration.outcome import PUBLISH_OUTCOME
from orchestration.runs import one_job_per_vm, table_rows
from tasks.destination import check_destination
from tasks.failover import (
    attach_to_destination,
    deploy_destination_vm,
    destination_data_volume_limit,
    leave_volume_detached,
    power_off_source,
    power_on_source,
    read_back_devices,
    remove_destination_vm,
    remove_template_root,
    start_destination_vm,
)
from tasks.records import (
    forget_volume_change_id,
    get_installation_id,
    open_failover,
    record_failover_active,
    record_rollback,
    record_source_on_again,
    set_vm_context_state,
)
from vmferry.compensation import quietly
from vmferry.errors import Refused
from vmferry.failover_plan import check_attached, plan_attachments
from vmferry.network_plan import plan_nics


class FailoverDevice(BaseModel):
    disk_id: str
    vm_disk_id: int
    volume_id: str
    device_id: int
    role: str


class FailoverResult(BaseModel):
    failover_id: int
    mode: str
    destination_vm_id: str
    devices: list[FailoverDevice]


class LiveFailoverRefused(Refused):
    """A live failover was not confirmed, or the VM is not in a state to fail over."""


class Destination:
    """The destination VM as far as this failover got, and its compensation."""

    def __init__(self, cloud: CloudStack, failover_id: int, source: SourcePower) -> None:
        self.cloud, self.failover_id, self.source = cloud, failover_id, source
        self.ours: list[str] = []  # the replicated volumes it takes, detached before it is destroyed
        self.vm_id: str | None = None  # once the deploy returned it
        self.may_run = False  # once it was asked to start
        self.left_behind = False  # its removal failed

    def remove(self) -> None:
        """The destination VM, whatever state its deploy left it in: a deploy job that fails leaves a VM in Error,
        recorded on the failover but never returned. Once known, its id is not read back from the catalog, so
        the VM goes even when the catalog is what failed."""
        vm_id = self.vm_id or get_failover(default_catalog(), self.failover_id).destination_vm_id
        if vm_id is None:
            return
        try:
            remove_destination_vm(self.cloud, vm_id, self.ours)
        except BaseException:
            self.left_behind = True
            if self.may_run:  # it may still run: the source stays off, or the VM would run twice
                self.source.keep_off()
            raise


class SourcePower:
    """Remembers whether this failover powered the source off, to power it on again if the failover fails."""

    def __init__(self) -> None:
        self._turned_off: tuple[VCenter, RecordedVM] | None = None

    def power_off(self, vcenter: VCenter, vm: RecordedVM) -> str:
        how = power_off_source(vcenter, vm)
        if how == "powered off":  # a source that was already off stays off
            self._turned_off = (vcenter, vm)
        return how

    def keep_off(self) -> None:
        """The destination VM runs: whatever fails from now on, powering the source on would run the VM twice."""
        self._turned_off = None

    def restore(self) -> None:
        """After a failure: the source back on, so the VM runs somewhere. Never raises over the failure."""
        if self._turned_off is None:
            return
        vcenter, vm = self._turned_off
        logger = get_run_logger()
        try:
            logger.warning("live failover of %s failed: source %s again", vm.name, power_on_source(vcenter, vm))
        except Exception as exc:
            logger.error("live failover of %s failed and the source could not be powered on: %s", vm.name, exc)
            return
        try:  # the source runs again: the VM context is no longer "source off, failover unfinished"
            record_source_on_again(vm.vm_context_id)
        except Exception as exc:
            logger.error("the source of %s runs again, but the catalog could not record it: %s", vm.name, exc)


def refuse_unless_ready(vm: RecordedVM, mode: str, confirm_live: bool) -> None:
    """Nothing is touched for an unconfirmed live failover, or while an earlier failover of the VM is still on."""
    if mode == "live" and not confirm_live:
        raise LiveFailoverRefused(
            f"a live failover powers VM {vm.name!r} off and moves it into CloudStack for good: confirm it "
            "(confirm_live=True, `vmferry failover VM --mode live --yes`)"
        )
    latest = latest_failover(default_catalog(), vm.vm_context_id)
    if latest is not None and latest.state == "active":
        fix = (
            f"commit it (`vmferry commit {vm.name}`) or revert it (`vmferry revert {vm.name} --yes`)"
            if latest.mode == "live"
            else f"clean it up first (`vmferry cleanup {vm.name}`)"
        )
        raise LiveFailoverRefused(
            f"VM {vm.name!r} is already failed over ({latest.mode}, failover {latest.id}, CloudStack VM "
            f"{latest.destination_vm_id}): {fix}"
        )
    if latest is not None and latest.state == "committed":
        raise LiveFailoverRefused(
            f"VM {vm.name!r} was migrated to CloudStack VM {latest.destination_vm_id} (committed failover "
            f"{latest.id}): there is nothing left to fail over"
        )


@flow(
    name="failover-vm",
    flow_run_name=names.FAILOVER_RUN,
    on_running=ON_RUNNING,
    on_crashed=ON_CRASHED,
    on_cancellation=ON_CANCELLATION,
    **PUBLISH_OUTCOME,
)
@one_job_per_vm("failover")
def failover_vm(
    vm: str,
    cloudstack: CloudStack | str,
    mode: Literal["test", "live"] = "test",
    vcenter: VCenter | str | None = None,
    agent: Agent | str | None = None,
    network_map: dict[str, str] | None = None,
    ip_addresses: dict[str, str] | None = None,
    confirm_live: bool = False,
    prepare_guest: bool = True,
    virtio_win: str | None = None,
) -> FailoverResult:
    """Bring ``vm`` up in CloudStack from its replicated volumes.

    ``live`` powers the source off, syncs a last time (needs ``vcenter`` and ``agent``) and must be confirmed
    with ``confirm_live``; if it then fails, the source is powered on again. A live failover ends active: commit
    it (flows/live_failover.py ``commit_failover``) or revert it (``revert_failover``).

    Args:
        vm: The VM: its name in vCenter, its instance UUID or its moref (vm-123).
        cloudstack: Saved CloudStack block name (or a CloudStack block) of the destination zone and its hub VM.
        mode: test starts a copy in CloudStack and leaves the source running (undo it with cleanup-failover);
            live powers the source off, syncs a last time and moves the VM to CloudStack for good.
        vcenter: Saved VCenter block name of the source's vCenter; needed by a live failover (power-off and last
            sync).
        agent: Saved Agent block name for the last sync; needed by a live failover.
        network_map: Source port group -> CloudStack network id, adding to (or overriding) the block's map for
            this VM.
        ip_addresses: Source NIC MAC address -> the static IP its failover NIC gets.
        confirm_live: Must be true for a live failover: it powers the source VM off. Ignored in test mode.
        prepare_guest: Run virt-v2v-in-place on the OS volume first (virtio drivers and initramfs for KVM, VMware
            tools removed); false turns it off for this VM.
        virtio_win: For Windows guests: the virtio-win driver directory (or ISO) on the hub virt-v2v installs from.
    """
    recorded = find_vm(default_catalog(), vm)
    refuse_unless_ready(recorded, mode, confirm_live)
    source = SourcePower()
    try:
        return _fail_over(
            vm, cloudstack, mode, vcenter, agent, source, network_map, ip_addresses, prepare_guest, virtio_win
        )
    except BaseException:
        source.restore()
        raise


def _fail_over(
    vm: str,
    cloudstack: CloudStack | str,
    mode: Literal["test", "live"],
    vcenter: VCenter | str | None,
    agent: Agent | str | None,
    source: SourcePower,
    network_map: dict[str, str] | None,
    ip_addresses: dict[str, str] | None,
    prepare_guest: bool,
    virtio_win: str | None,
) -> FailoverResult:
    logger = get_run_logger()
    cloud = load_block(CloudStack, cloudstack)
    catalog = default_catalog()
    recorded = find_vm(catalog, vm)
    # refused here, before the source is touched or anything is created
    nics = plan_nics(recorded, {**cloud.network_map, **(network_map or {})}, ip_addresses)
    if not nics:
        logger.warning("VM %s has no NIC on record: CloudStack puts its failover VM on the zone's default network", vm)
    data_volume_limit = destination_data_volume_limit(cloud)
    placement = check_destination(
        cloud,
        recorded,
        nics,
        plan_attachments(
            recorded,
            {v.vm_disk_id: v for v in volumes_of_vm(catalog, recorded.vm_context_id)},
            data_volume_limit,
        ),
    )
    logger.info("placement of %s: %s", recorded.name, placement.reason)
    if mode == "live" and (vcenter is None or agent is None):
        raise LiveFailoverRefused(
            f"a live failover powers VM {recorded.name!r} off and syncs a last time: pass vcenter and agent "
            "(`vmferry failover VM --mode live` with the VCenter and Agent blocks). Nothing was changed"
        )
    # Recorded before the first side effect, so cleanup and the reconciler find a failover killed at any point.
    with job("failover", recorded.vm_context_id) as job_id:
        failover_id = open_failover(recorded.vm_context_id, job_id, mode)
        destination = Destination(cloud, failover_id, source)
        try:
            if mode == "live":
                vcenter_block = load_block(VCenter, vcenter)
                logger.info("live failover of %s: source %s", recorded.name, source.power_off(vcenter_block, recorded))
                set_vm_context_state(recorded.vm_context_id, SOURCE_OFF_UNFINISHED)
                replicate_vm(recorded.instance_uuid, cloud, load_block(Agent, agent), vcenter_block, kind="incremental")
                recorded = find_vm(catalog, vm)
            # the volumes are taken detached: wait for a running sync of this VM to finish and detach them
            with holding(vm_volumes_limit_name(get_installation_id(), recorded.vm_context_id), 1, logger):
                volumes = {v.vm_disk_id: v for v in volumes_of_vm(catalog, recorded.vm_context_id)}
                plan = plan_attachments(recorded, volumes, data_volume_limit)
                destination.ours = [item.volume_id for item in plan]
                with ExitStack() as undo:
                    # guest preparation puts the OS volume on a hub for a while: whatever fails, it is left detached
                    undo.callback(quietly(leave_volume_detached, cloud, plan[0].volume_id))
                    prepare_os_volume(cloud, recorded, plan, volumes, enabled=prepare_guest, virtio_win=virtio_win)
                    # before the deploy: a deploy job that fails leaves a VM in Error, recorded but never returned
                    undo.callback(quietly(destination.remove))
                    deployed = deploy_destination_vm(cloud, recorded, mode, failover_id, nics, placement.cluster_id)
                    destination.vm_id = deployed.id
                    remove_template_root(cloud, deployed.id, destination.ours)
                    for item in plan:  # root first, then data in source order
                        undo.callback(quietly(leave_volume_detached, cloud, item.volume_id))
                        # The destination VM writes into its volumes: CBT's "unchanged since the last sync" no longer
                        # describes them, so the next sync compares them whole.
                        forget_volume_change_id(item.volume_id)
                        attach_to_destination(cloud, item, deployed.id)
                    actual = read_back_devices(cloud, deployed.id)
                    check_attached(plan, actual, recorded.name)
                    destination.may_run = True  # from the first attempt on: a start that failed may have started it
                    start_destination_vm(cloud, deployed.id)
                    # Recorded while the compensation still holds: a failover that runs but is still "in progress"
                    # looks interrupted, and cleanup or the reconciler would destroy its VM, production after a
                    # live failover. A write that still fails after its retries undoes the failover instead.
                    record_failover_active(
                        failover_id,
                        [
                            FailoverVolumeView(
                                vm_disk_id=item.vm_disk_id,
                                replicated_volume_id=item.replicated_volume_id,
                                planned_device_id=item.device_id,
                                actual_device_id=actual[item.volume_id][0],
                                is_root=item.is_root,
                            )
                            for item in plan
                        ],
                        f"failed-over-{mode}",
                    )
                    source.keep_off()
                    undo.pop_all()  # success: nothing to undo
        except BaseException:
            # A destination that could not be removed leaves the failover in progress: cleanup and the reconciler
            # remove the VM of a failover in progress (the source of a live one is off, so it is not production).
            if not destination.left_behind:
                record_rollback(failover_id, recorded.vm_context_id)
            raise
    devices = [
        FailoverDevice(
            disk_id=item.disk_id,
            vm_disk_id=item.vm_disk_id,
            volume_id=item.volume_id,
            device_id=actual[item.volume_id][0] or 0,
            role="root (OS)" if item.is_root else "data",
        )
        for item in plan
    ]
    create_table_artifact(
        key=artifact_key("failover", recorded.name),
        table=table_rows(devices),
        description=f"{mode} failover of {recorded.name} into CloudStack VM {deployed.id}"
        + (": active, the source is off; commit it or revert it" if mode == "live" else ""),
    )
    return FailoverResult(failover_id=failover_id, mode=mode, destination_vm_id=deployed.id, devices=devices)
