"""Orphans made for real - a SIGKILLed backup, an expired lease, a stray partial, a leftover snapshot, a foreign
volume on the hub - are cleaned by the reconciler; a running job's resources are left alone."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL
from pyVim.task import WaitForTask

from blocks.agent import Agent
from catalog.exports import exports_for_job, live_exports
from catalog.installation import installation_id
from catalog.inventory import record_vm
from catalog.jobs import create_job, finish_job, get_job, list_jobs
from catalog.ports import held_leases, lease_port
from catalog.replication import record_volume
from catalog.restore_points import find_point, points_in_state
from clients.agent import AgentError
from clients.qemu import create_qcow2
from common.names import owner_tags, volume_name
from flows.backup import backup_vm
from flows.reconcile import reconcile
from flows.verify import verify_restore_point
from infra.lab.agent import start_agent
from infra.lab.seed import require_vm
from infra.lab.vcenter import session
from tests import factories
from tests.copy.helpers import assert_nothing_left, our_qemu_nbd_pids, vm_snapshot_names
from tests.reconcile.run_backup import backup_arguments
from vmferry.settings import PortRange

pytestmark = pytest.mark.usefixtures("prefect_backend", "nbd_port_range")

ROOT = Path(__file__).resolve().parents[2]


def _acted(report, kind):
    """What the reconciler did to resources of one kind (kept ones left out)."""
    return [f for f in report.findings if f.kind == kind and f.action != "kept"]


def _running_backup_status(catalog, agent: Agent):
    """The agent's status of the one running backup job of the catalog, once the agent knows it."""
    running = [j for j in list_jobs(catalog) if j.kind == "backup" and j.state == "running"]
    if not running:
        return None, None
    try:
        with agent.client() as client:
            return running[0], client.status(running[0].id)
    except AgentError:
        return running[0], None


def _wait_until_copying(catalog, agent: Agent, alive, deadline: float):
    """Wait until the running backup has copied its first bytes (the throttled disks go one after the other)."""
    while True:
        job, status = _running_backup_status(catalog, agent)
        if status is not None and status.state == "running" and status.disks:
            done = sum(d.bytes_done for d in status.disks)
            if 0 < done < sum(d.bytes_total for d in status.disks) // 2:
                return job
        assert alive(), "the backup ended before its copy was seen running"
        assert time.monotonic() < deadline, "the copy never started"
        time.sleep(0.05)


def test_a_backup_killed_with_sigkill_leaves_nothing_after_reconcile(
    make_scratch_vm, lab, lab_vcenter_block, repository_block, configured_catalog, tmp_path
):
    name = make_scratch_vm(disks=2, size_mib=24)
    # An agent of its own, killed too: its snapshot stays behind as a crashed agent's would.
    doomed = start_agent(lab.vcenter, tmp_path / "doomed-agent")
    agent = Agent(url=doomed.url, token=doomed.token)
    # 48 MiB of disks at 1 MiB/s: the copy runs for most of a minute
    arguments = backup_arguments(name, repository_block, agent, lab_vcenter_block, 2**20)
    env = {**os.environ, "VMFERRY_CATALOG_URL": configured_catalog.url, "PREFECT_API_URL": PREFECT_API_URL.value()}
    hub = subprocess.Popen(
        [sys.executable, "-m", "tests.reconcile.run_backup"], stdin=subprocess.PIPE, env=env, cwd=ROOT
    )
    try:
        assert hub.stdin is not None
        hub.stdin.write(json.dumps(arguments).encode())
        hub.stdin.close()
        job = _wait_until_copying(configured_catalog, agent, lambda: hub.poll() is None, time.monotonic() + 120)
        # The hub first (were the agent first, the hub would see it die and clean up after itself), then the agent.
        hub.send_signal(signal.SIGKILL)
        hub.wait(30)
        doomed.stop(signal.SIGKILL)
    finally:
        if hub.poll() is None:
            hub.kill()
            hub.wait()
        doomed.stop(signal.SIGKILL)

    repo = repository_block.repository()
    exports = exports_for_job(configured_catalog, job.id)
    files = [Path(e.file_path) for e in exports]
    (point,) = points_in_state(configured_catalog, "pending")
    # the crash really left every kind of orphan behind
    assert len(files) == 2 and len(our_qemu_nbd_pids(files)) == 2
    assert {e.state for e in exports} == {"running"}
    assert len(held_leases(configured_catalog, job.id)) == 2
    assert repo.partial_dirs() == [repo.partial_dir(point.vm_context_id, point.id)]
    assert vm_snapshot_names(lab, name) == [f"vmferry-{job.id}"]
    assert get_job(configured_catalog, job.id).state == "running"

    report = reconcile(repository_block, lab_vcenter_block)

    assert our_qemu_nbd_pids(files) == []
    assert live_exports(configured_catalog) == []
    assert held_leases(configured_catalog) == []
    assert repo.partial_dirs() == []
    assert find_point(configured_catalog, point.id).state == "failed"
    assert vm_snapshot_names(lab, name) == []
    crashed = get_job(configured_catalog, job.id)
    assert crashed.state == "failed"
    assert crashed.error.startswith("crashed: ") and f"process {hub.pid}" in crashed.error and "gone" in crashed.error
    assert [f.action for f in _acted(report, "nbd-export")] == ["stopped qemu-nbd"] * 2
    assert [f.action for f in _acted(report, "port-lease")] == ["released"] * 2
    assert [f.action for f in _acted(report, "partial-directory")] == ["removed"]
    assert [f.action for f in _acted(report, "restore-point")] == ["marked failed"]
    assert [f.action for f in _acted(report, "snapshot")] == ["removed"]
    assert [(f.job_id, f.action) for f in _acted(report, "job")] == [(job.id, "marked failed")]
    assert all(f.owner.startswith("crashed: ") for f in report.findings if f.job_id == job.id)
    assert report.errors == []
    # everything is gone, so a second pass has nothing left to do
    again = reconcile(repository_block, lab_vcenter_block)
    assert [f for f in again.findings if f.action != "kept"] == []


def test_expired_leases_and_finished_jobs_leases_are_released(configured_catalog, nbd_port_range):
    ports = PortRange.parse(nbd_port_range)
    # a job that is running as far as the catalog knows, with no flow run to check: its owner is unverifiable
    unverifiable = create_job(configured_catalog, "copy")
    expired = lease_port(configured_catalog, unverifiable, port_range=ports, ttl=dt.timedelta(seconds=1))
    current = lease_port(configured_catalog, unverifiable, port_range=ports, ttl=dt.timedelta(hours=1))
    finished = create_job(configured_catalog, "copy")
    left_behind = lease_port(configured_catalog, finished, port_range=ports, ttl=dt.timedelta(hours=1))
    finish_job(configured_catalog, finished, "failed", "the flow's compensation could not reach the catalog")
    time.sleep(1.1)  # let the first lease expire for real

    dry = reconcile(dry_run=True)
    assert {le.port for le in held_leases(configured_catalog)} == {expired.port, current.port, left_behind.port}
    assert sorted(f.action for f in _acted(dry, "port-lease")) == ["would release", "would release expired lease"]

    report = reconcile()
    assert [le.port for le in held_leases(configured_catalog)] == [current.port]
    actions = {f.subject.split()[1]: f.action for f in report.of("port-lease")}
    assert actions == {
        str(expired.port): "released expired lease",
        str(current.port): "kept",
        str(left_behind.port): "released",
    }
    # an owner that cannot be checked is never declared crashed
    assert get_job(configured_catalog, unverifiable).state == "running"
    assert _acted(report, "job") == []


def test_a_stray_partial_directory_is_removed(repository_block, configured_catalog):
    repo = repository_block.repository()
    stray = repo.prepare_partial(7, 999)  # a point the catalog never heard of
    create_qcow2(stray / "disk-2000.qcow2", 2**20)
    committed_looking = repo.point_dir(7, 998)
    committed_looking.mkdir()
    (committed_looking / "disk-2000.qcow2").write_bytes(b"not ours to judge")

    dry = reconcile(repository_block, dry_run=True)
    assert [f.action for f in dry.of("partial-directory")] == ["would remove"]
    assert stray.exists()

    report = reconcile(repository_block)
    (finding,) = report.of("partial-directory")
    assert finding.action == "removed" and finding.subject == str(stray)
    assert finding.owner.startswith("absent: ")
    assert not stray.exists()
    assert repo.partial_dirs() == []
    assert (committed_looking / "disk-2000.qcow2").read_bytes() == b"not ours to judge"


def test_a_leftover_agent_snapshot_is_removed(make_scratch_vm, lab, lab_vcenter_block, configured_catalog):
    name = make_scratch_vm(disks=1)
    crashed = create_job(configured_catalog, "backup")
    finish_job(configured_catalog, crashed, "failed", "the agent died before removing its snapshot")
    leftover = f"vmferry-{crashed}"
    # a vmferry- name of a job this catalog never had: another hub's job, perhaps still copying from it
    foreign = f"vmferry-{uuid.uuid4()}"
    with session(lab.vcenter) as si:
        vm = require_vm(si, name)
        WaitForTask(vm.CreateSnapshot_Task(name=leftover, description="a crashed agent's", memory=False, quiesce=False))
        WaitForTask(vm.CreateSnapshot_Task(name=foreign, description="another hub's", memory=False, quiesce=False))
        WaitForTask(
            vm.CreateSnapshot_Task(name="before-upgrade", description="an operator's", memory=False, quiesce=False)
        )
    assert sorted(vm_snapshot_names(lab, name)) == sorted([leftover, foreign, "before-upgrade"])

    report = reconcile(vcenter=lab_vcenter_block)

    # only a snapshot of a job this catalog knows is over is ours; a name alone proves nothing
    assert sorted(vm_snapshot_names(lab, name)) == sorted([foreign, "before-upgrade"])
    acted = {f.subject.split()[0]: f for f in report.of("snapshot")}
    assert acted[leftover].action == "removed" and name in acted[leftover].subject
    assert acted[leftover].owner == "finished: job failed"
    assert acted[foreign].action == "kept" and acted[foreign].owner == "absent: no such job in the catalog"
    with session(lab.vcenter) as si:
        vm = require_vm(si, name)
        WaitForTask(vm.RemoveAllSnapshots_Task())


def test_a_foreign_volume_on_the_hub_is_detached(cloudstack_sim, cloudstack_block, configured_catalog):
    hub = cloudstack_block.hub_vm_id
    recorded = factories.vm(factories.disk(2000, capacity_mib=64), name="replicated", uuid="5012-rep")
    (disk,) = record_vm(configured_catalog, recorded).present_disks()
    with cloudstack_block.client() as client:
        ours = client.create_volume(
            "vmferry-vm1-disk-2000", 1, cloudstack_block.zone_id, cloudstack_block.disk_offering_id
        )
        record_volume(
            configured_catalog,
            vm_disk_id=disk.vm_disk_id,
            volume_id=ours.id,
            zone_id=cloudstack_block.zone_id,
            size_bytes=ours.size,
            disk_generation=1,
        )
        client.attach_volume(ours.id, hub)
        foreign = client.create_volume("somebody-elses", 1, cloudstack_block.zone_id, cloudstack_block.disk_offering_id)
        client.attach_volume(foreign.id, hub)
        before = {v.id: v.type for v in client.list_volumes(virtual_machine_id=hub)}
    assert len(before) == 3 and sorted(before.values()) == ["DATADISK", "DATADISK", "ROOT"]

    dry = reconcile(cloudstack=cloudstack_block, dry_run=True)
    foreign_finding, ours_finding = sorted(dry.of("hub-volume"), key=lambda f: ours.id in f.subject)
    assert foreign_finding.action == "would detach" and foreign.id in foreign_finding.subject
    assert ours_finding.action == "would detach" and ours_finding.owner == "no running sync of its VM"
    with cloudstack_block.client() as client:
        assert {v.id for v in client.list_volumes(virtual_machine_id=hub)} == set(before)

    report = reconcile(cloudstack=cloudstack_block)
    foreign_finding, ours_finding = sorted(report.of("hub-volume"), key=lambda f: ours.id in f.subject)
    assert foreign_finding.action == "detached" and foreign.id in foreign_finding.subject
    assert foreign_finding.owner == "no vm context owns it"
    # a replicated volume left on the hub by a sync that died is detached too: volumes rest detached
    assert ours_finding.action == "detached" and ours.id in ours_finding.subject
    with cloudstack_block.client() as client:
        after = {v.id for v in client.list_volumes(virtual_machine_id=hub)}
        assert client.get_volume(foreign.id).virtual_machine_id is None  # detached, never deleted
        assert client.get_volume(ours.id).virtual_machine_id is None
    assert after == set(before) - {foreign.id, ours.id}  # the hub's ROOT stays


def test_an_unrecorded_volume_is_kept_for_a_running_sync_by_its_tags_never_by_its_name(
    cloudstack_sim, cloudstack_block, configured_catalog
):
    """A sync records its volume after createVolume and createTags: between the two, the reconciler must keep a
    volume whose owner tags name this installation and a disk of a VM with a running job. A volume that only
    carries our name, or another installation's tags, is detached like any foreign one."""
    hub = cloudstack_block.hub_vm_id
    recorded = record_vm(
        configured_catalog,
        factories.vm(factories.disk(2000, unit=0), factories.disk(2001, unit=1), name="syncing", uuid="5012-syn"),
    )
    first, second = recorded.present_disks()
    installation = installation_id(configured_catalog)
    job_id = create_job(configured_catalog, "replication", vm_context_id=recorded.vm_context_id)  # no run: alive

    def volume(name: str, tags: dict[str, str] | None) -> str:
        with cloudstack_block.client() as client:
            made = client.create_volume(name, 1, cloudstack_block.zone_id, cloudstack_block.disk_offering_id)
            if tags:
                client.create_tags("Volume", [made.id], tags)
            client.attach_volume(made.id, hub)
            return made.id

    tagged = volume(
        "renamed-by-an-operator", owner_tags(installation, recorded.instance_uuid, first.vm_disk_id, first.generation)
    )
    named_only = volume(volume_name(installation, recorded.vm_context_id, second.disk_id, second.vm_disk_id), None)
    other_site = volume(
        volume_name(installation, recorded.vm_context_id, second.disk_id, second.vm_disk_id),
        owner_tags("another-installation", recorded.instance_uuid, second.vm_disk_id, second.generation),
    )
    try:
        report = reconcile(cloudstack=cloudstack_block)
        found = {f.subject.split()[1]: f for f in report.of("hub-volume")}
        assert found[tagged].action == "kept" and found[tagged].job_id == job_id
        assert found[tagged].owner == "running job of its VM"
        for foreign in (named_only, other_site):
            assert found[foreign].action == "detached" and found[foreign].owner == "no vm context owns it"
        with cloudstack_block.client() as client:
            assert client.get_volume(tagged).virtual_machine_id == hub
            assert client.get_volume(named_only).virtual_machine_id is None
            assert client.get_volume(other_site).virtual_machine_id is None

        finish_job(configured_catalog, job_id, "failed", "the sync died before recording its volume")
        again = {f.subject.split()[1]: f for f in reconcile(cloudstack=cloudstack_block).of("hub-volume")}
        assert again[tagged].action == "detached"  # no running job of its VM any more
    finally:
        with cloudstack_block.client() as client:
            for volume_id in (tagged, named_only, other_site):
                if client.get_volume(volume_id).virtual_machine_id is not None:
                    client.detach_volume(volume_id)


def test_a_running_jobs_resources_are_left_alone(
    make_scratch_vm, lab, agent_block, lab_vcenter_block, repository_block, configured_catalog
):
    name = make_scratch_vm(disks=2, size_mib=24)
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["point"] = backup_vm(
                name,
                repository_block,
                agent_block,
                lab_vcenter_block,
                kind="full",
                bandwidth_limit_bytes_per_second=2 * 2**20,  # about 24 s for both disks
            )
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    try:
        job = _wait_until_copying(configured_catalog, agent_block, thread.is_alive, time.monotonic() + 120)
        exports = exports_for_job(configured_catalog, job.id)
        files = [Path(e.file_path) for e in exports]
        pids = sorted(our_qemu_nbd_pids(files))

        report = reconcile(repository_block, lab_vcenter_block)

        # still copying, and everything it holds is where it was
        assert thread.is_alive()
        assert sorted(our_qemu_nbd_pids(files)) == pids and len(pids) == 2
        assert len(held_leases(configured_catalog, job.id)) == 2
        assert exports_for_job(configured_catalog, job.id) == exports
        assert len(repository_block.repository().partial_dirs()) == 1
        assert vm_snapshot_names(lab, name) == [f"vmferry-{job.id}"]
        assert get_job(configured_catalog, job.id).state == "running"
        mine = [f for f in report.findings if f.job_id == job.id]
        held = ["nbd-export", "nbd-export", "port-lease", "port-lease", "partial-directory", "restore-point"]
        # and the snapshot, and the qemu-nbd log directory
        assert sorted(f.kind for f in mine) == sorted([*held, "snapshot", "job-resource"])
        assert {f.action for f in mine} == {"kept"}
        assert all(f.owner.startswith("running: ") for f in mine)
    finally:
        thread.join(180)
    assert "error" not in outcome, outcome
    point = outcome["point"]
    assert point.state == "committed"
    assert all(v.ok for v in verify_restore_point(point.id, repository_block))
    assert get_job(configured_catalog, job.id).state == "succeeded"
    assert_nothing_left(configured_catalog, lab, name, files)
