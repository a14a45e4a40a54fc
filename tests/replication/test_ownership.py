"""Replication never writes a volume it cannot prove is its own, never skips zeros into a volume whose content
it does not know, and gives a replaced disk a volume of its own. Bytes are compared end to end."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time

import pytest

import catalog as catalog_package
from blocks.agent import Agent
from catalog.installation import installation_id
from catalog.inventory import find_vm
from catalog.replication import volumes_of_vm
from common.names import TAG_INSTALLATION, volume_name
from flows.cleanup import cleanup_failover
from flows.discover import discover
from flows.failover import failover_vm
from flows.replicate import replicate_vm
from infra.lab.agent import start_agent
from infra.lab.mutate import add_readable_disk, find_disk, read_disk_bytes, remove_disk, write_disk_bytes
from infra.lab.seed import disk_capacity_bytes, require_vm
from infra.lab.vcenter import session
from tasks.cloudstack import VolumeOwnershipError
from tests.copy.helpers import running_agent_jobs
from tests.replication.test_replicate import assert_volumes_equal_sources, never_written

pytestmark = pytest.mark.usefixtures("prefect_backend", "nbd_port_range")


def volume_sha(sim, volume_id: str, length: int) -> str:
    with open(sim.volume_file(volume_id), "rb") as handle:
        return hashlib.sha256(handle.read(length)).hexdigest()


def use_catalog(monkeypatch, url: str):
    """Flows open the catalog named by VMFERRY_CATALOG_URL: point them at another one (another site)."""
    monkeypatch.setenv("VMFERRY_CATALOG_URL", url)
    return catalog_package.default_catalog()


@pytest.fixture
def other_catalogs(monkeypatch):
    opened: list[str] = []

    def switch(url: str):
        opened.append(url)
        return use_catalog(monkeypatch, url)

    yield switch
    for url in opened:
        found = catalog_package._opened.pop(url, None)
        if found is not None:
            found.dispose()


def test_two_catalogs_write_only_their_own_volumes(
    lab, cloudstack_sim, cloudstack_block, agent_block, lab_vcenter_block, configured_catalog, make_scratch_vm,
    other_catalogs, tmp_path,
):  # fmt: skip
    name = make_scratch_vm(disks=2)
    site_a = replicate_vm(name, cloudstack_block, agent_block, lab_vcenter_block)
    a_shas = {d.volume_id: volume_sha(cloudstack_sim, d.volume_id, 4 * 2**20) for d in site_a.disks}
    data_key = int(site_a.disks[1].disk_id.removeprefix("disk-"))
    write_disk_bytes(lab.vcenter, name, data_key, 2 * 2**20, os.urandom(256 * 1024))

    # site B: a catalog of its own (rebuilt, or a second site) whose VM and disk rows get the same ids
    site_b_catalog = other_catalogs(f"sqlite:///{tmp_path / 'site-b.db'}")
    site_b = replicate_vm(name, cloudstack_block, agent_block, lab_vcenter_block)
    assert site_b.vm_context_id == site_a.vm_context_id
    assert [d.vm_disk_id for d in site_b.disks] == [d.vm_disk_id for d in site_a.disks]
    assert not {d.volume_id for d in site_b.disks} & set(a_shas)
    assert_volumes_equal_sources(cloudstack_sim, lab, name, site_b)
    # site A's volumes still hold what site A wrote, byte for byte
    assert {v: volume_sha(cloudstack_sim, v, 4 * 2**20) for v in a_shas} == a_shas
    installations = {cloudstack_sim.volume_tags(d.volume_id)[TAG_INSTALLATION] for d in [*site_a.disks, *site_b.disks]}
    assert installations == {installation_id(configured_catalog), installation_id(site_b_catalog)}


def test_a_volume_matching_only_by_name_is_refused_and_left_untouched(
    lab, cloudstack_sim, cloudstack_block, agent_block, lab_vcenter_block, configured_catalog, make_scratch_vm
):
    name = make_scratch_vm(disks=2)
    discover(lab_vcenter_block, [name])
    vm = find_vm(configured_catalog, name)
    disk = vm.present_disks()[0]
    squatted = volume_name(installation_id(configured_catalog), vm.vm_context_id, disk.disk_id, disk.vm_disk_id)
    info = cloudstack_sim.info()
    with cloudstack_block.client() as client:
        impostor = client.create_volume(squatted, 1, info.zone_id, info.custom_disk_offering_id)
        client.create_tags("Volume", [impostor.id], {TAG_INSTALLATION: "another-site", "vmferry-disk-row": "1"})
        changes = {c: cloudstack_sim.calls[c] for c in ("createVolume", "attachVolume", "createTags", "deleteTags")}
        with pytest.raises(VolumeOwnershipError, match=f"volume {impostor.id} is named {squatted}") as caught:
            replicate_vm(name, cloudstack_block, agent_block, lab_vcenter_block)
        assert "vmferry-installation=another-site" in str(caught.value)
        # untagged, it is refused just the same: a name alone proves nothing
        client.delete_tags("Volume", [impostor.id], [TAG_INSTALLATION, "vmferry-disk-row"])
        changes["deleteTags"] += 1
        with pytest.raises(VolumeOwnershipError, match="carries no vmferry owner tags"):
            replicate_vm(name, cloudstack_block, agent_block, lab_vcenter_block)
        after = client.get_volume(impostor.id)
    assert {c: cloudstack_sim.calls[c] for c in changes} == changes  # nothing created, attached or tagged
    assert after.virtual_machine_id is None and after.tag_map == {}
    assert never_written(cloudstack_sim.volume_file(impostor.id))
    assert volumes_of_vm(configured_catalog, vm.vm_context_id) == []


def test_an_interrupted_initial_sync_resumes_correctly(
    lab, cloudstack_sim, cloudstack_block, agent_block, lab_vcenter_block, configured_catalog, make_scratch_vm, tmp_path
):
    name = make_scratch_vm(disks=2, size_mib=8)
    doomed = start_agent(lab.vcenter, tmp_path / "doomed", max_parallel_disks=1)
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            replicate_vm(
                name, cloudstack_block, Agent(url=doomed.url, token=doomed.token), lab_vcenter_block,
                bandwidth_limit_bytes_per_second=2**20,
            )  # fmt: skip
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    try:
        deadline = time.monotonic() + 90
        with Agent(url=doomed.url, token=doomed.token).client() as client:
            while True:  # the first disk fully written, the second one under way
                jobs = running_agent_jobs(client, "replication")
                disks = sorted(jobs[0].disks, key=lambda d: d.device_key) if jobs else []
                # the agent marks disks done when the whole job is: watch the bytes (one disk at a time here)
                if len(disks) == 2 and disks[0].bytes_done == disks[0].bytes_total > disks[1].bytes_done:
                    break
                assert time.monotonic() < deadline and thread.is_alive(), f"never got there: {outcome} {disks}"
                time.sleep(0.05)
        doomed.stop(signal.SIGKILL)
        thread.join(120)
    finally:
        doomed.stop(signal.SIGKILL)
    assert "error" in outcome
    vm = find_vm(configured_catalog, name)
    assert {v.content_state for v in volumes_of_vm(configured_catalog, vm.vm_context_id)} == {"unknown"}

    # the disk that was completely copied changes, zeroed regions included
    first_key = vm.present_disks()[0].device_key
    source = read_disk_bytes(lab.vcenter, name, first_key)
    data_at = next(i for i in range(0, len(source), 65536) if source[i : i + 65536].count(0) < 65536)
    write_disk_bytes(lab.vcenter, name, first_key, data_at, bytes(2**20))
    write_disk_bytes(lab.vcenter, name, first_key, 6 * 2**20, os.urandom(64 * 1024))
    rerun = replicate_vm(name, cloudstack_block, agent_block, lab_vcenter_block)
    assert rerun.kind == "full"
    assert_volumes_equal_sources(cloudstack_sim, lab, name, rerun)


@pytest.mark.parametrize("reuse_file_name", [False, True], ids=["key-and-size", "key-file-name-and-size"])
def test_a_replaced_disk_gets_a_new_volume_and_the_old_one_is_retired(
    lab, cloudstack_sim, cloudstack_block, agent_block, lab_vcenter_block, configured_catalog, make_scratch_vm,
    vmferry_status, reuse_file_name,
):  # fmt: skip
    name = make_scratch_vm(disks=3)
    first = replicate_vm(name, cloudstack_block, agent_block, lab_vcenter_block)
    old = first.disks[-1]
    key = int(old.disk_id.removeprefix("disk-"))
    old_sha = volume_sha(cloudstack_sim, old.volume_id, 4 * 2**20)
    with session(lab.vcenter) as si:
        removed = find_disk(require_vm(si, name), key).backing
        remove_disk(si, name, key)
        file_name = removed.fileName if reuse_file_name else None
        # vSphere hands the new disk the old key
        assert add_readable_disk(si, lab.vcenter, name, 4 * 2**20, file_name=file_name) == key
        added = find_disk(require_vm(si, name), key)
    assert disk_capacity_bytes(added) == 4 * 2**20
    assert (added.backing.fileName == removed.fileName) is reuse_file_name
    # only the backing uuid tells the two disks apart when the key, file name and size are the same
    assert added.backing.uuid and removed.uuid and added.backing.uuid != removed.uuid
    write_disk_bytes(lab.vcenter, name, key, 2**20, os.urandom(512 * 1024))
    second = replicate_vm(name, cloudstack_block, agent_block, lab_vcenter_block)
    new = next(d for d in second.disks if d.disk_id == old.disk_id)
    vm = find_vm(configured_catalog, name)
    assert new.vm_disk_id != old.vm_disk_id and new.volume_id != old.volume_id
    assert_volumes_equal_sources(cloudstack_sim, lab, name, second)
    (retired,) = volumes_of_vm(configured_catalog, vm.vm_context_id, retired=True)
    assert retired.volume_id == old.volume_id and retired.state == "retired"
    assert volume_sha(cloudstack_sim, old.volume_id, 4 * 2**20) == old_sha  # untouched
    assert old.volume_id in vmferry_status(name)

    result = failover_vm(name, cloudstack_block)
    assert [(d.disk_id, d.device_id) for d in result.devices] == [
        (d.disk_id, i) for d, i in zip(first.disks, [0, 1, 2])
    ]
    assert next(d for d in result.devices if d.disk_id == old.disk_id).volume_id == new.volume_id
    for device in result.devices:
        source = read_disk_bytes(lab.vcenter, name, int(device.disk_id.removeprefix("disk-")))
        assert volume_sha(cloudstack_sim, device.volume_id, len(source)) == hashlib.sha256(source).hexdigest()
    cleanup_failover(name, cloudstack_block)
    with cloudstack_block.client() as client:
        assert client.get_volume(old.volume_id).virtual_machine_id is None
    assert volume_sha(cloudstack_sim, old.volume_id, 4 * 2**20) == old_sha


@pytest.fixture
def vmferry_status(configured_catalog):
    """``vmferry status VM`` as an operator runs it, its output as text."""
    import prefect  # noqa: F401 - configure Prefect's logging before the runner swaps sys.stderr
    from typer.testing import CliRunner

    from vmferry.cli import app

    def run(vm: str) -> str:
        result = CliRunner().invoke(app, ["status", vm, "--json"])
        assert result.exit_code == 0, result.output
        return result.stdout

    return run
