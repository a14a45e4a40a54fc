"""A volume attached to the hub shows up as <dev>/disk/by-id/virtio-<serial>, pointing at its sparse file."""

from __future__ import annotations

import os
from pathlib import Path

from clients.cloudstack import device_path_for_volume, volume_serial
from tests.cloudstack.helpers import new_vm, new_volume


def test_device_path_is_the_virtio_serial_of_the_volume_uuid():
    volume_id = "5d29ed49-ebfe-4eb7-81b9-0ca524980375"
    assert volume_serial(volume_id) == "5d29ed49ebfe4eb781b9"
    assert device_path_for_volume(Path("/dev"), volume_id) == Path("/dev/disk/by-id/virtio-5d29ed49ebfe4eb781b9")


def test_link_appears_on_attach_points_at_the_sparse_file_and_goes_on_detach(cs, cloudstack_sim):
    volume = new_volume(cs, cloudstack_sim, size_gb=4)
    device = device_path_for_volume(cloudstack_sim.dev_root, volume.id)
    assert not device.exists()

    cs.attach_volume(volume.id, cloudstack_sim.hub_vm_id)
    backing = cloudstack_sim.volume_file(volume.id)
    assert device.is_symlink() and device.resolve() == backing.resolve()
    assert backing.stat().st_size == 4 * 1024**3
    assert backing.stat().st_blocks * 512 < 1024**2  # sparse: nothing allocated yet

    payload = b"vmferry wrote this through the hub's device"
    with open(device, "r+b") as disk:
        disk.seek(3 * 1024**3)
        disk.write(payload)
    with open(backing, "rb") as file:
        file.seek(3 * 1024**3)
        assert file.read(len(payload)) == payload

    cs.detach_volume(volume.id)
    assert not os.path.lexists(device)
    assert backing.exists()

    cs.attach_volume(volume.id, cloudstack_sim.hub_vm_id)
    with open(device, "rb") as disk:
        disk.seek(3 * 1024**3)
        assert disk.read(len(payload)) == payload
    cs.detach_volume(volume.id)
    cs.delete_volume(volume.id)
    assert not backing.exists()


def test_each_attached_volume_gets_its_own_link(cs, cloudstack_sim):
    volumes = [new_volume(cs, cloudstack_sim, f"d{i}") for i in range(3)]
    for volume in volumes:
        cs.attach_volume(volume.id, cloudstack_sim.hub_vm_id)
    for volume in volumes:
        assert device_path_for_volume(cloudstack_sim.dev_root, volume.id).resolve() == (
            cloudstack_sim.volume_file(volume.id).resolve()
        )
    links = {p.name for p in (cloudstack_sim.dev_root / "disk" / "by-id").iterdir()}
    # the hub's own root disk is there too, as in a real guest
    assert {f"virtio-{volume_serial(v.id)}" for v in volumes} < links


def test_volumes_of_other_vms_get_no_link(cs, cloudstack_sim):
    vm = new_vm(cs, cloudstack_sim, startvm=True)
    volume = cs.attach_volume(new_volume(cs, cloudstack_sim).id, vm.id)
    assert volume.state == "Ready"
    assert not os.path.lexists(device_path_for_volume(cloudstack_sim.dev_root, volume.id))


def test_links_follow_the_hub_being_stopped_and_started(cs, cloudstack_sim):
    volume = cs.attach_volume(new_volume(cs, cloudstack_sim).id, cloudstack_sim.hub_vm_id)
    device = device_path_for_volume(cloudstack_sim.dev_root, volume.id)
    cs.stop_vm(cloudstack_sim.hub_vm_id)
    assert not os.path.lexists(device)
    cs.start_vm(cloudstack_sim.hub_vm_id)
    assert device.exists()
