"""Resource tags and hypervisor capabilities, as CloudStack answers them (TaggedResourceManagerImpl,
QueryManagerImpl's tag filters, ListHypervisorCapabilitiesCmd), and the attach limit that follows them."""

from __future__ import annotations

import pytest

from clients.cloudstack import CloudStackError, CloudStackJobFailed
from tests.cloudstack.helpers import base_params, new_vm, new_volume, raw_call


def test_tags_are_created_listed_shown_on_volumes_and_deleted(cs, cloudstack_sim):
    first, second = new_volume(cs, cloudstack_sim, "a"), new_volume(cs, cloudstack_sim, "b")
    cs.create_tags("Volume", [first.id], {"owner": "site-a", "disk": "7"})
    cs.create_tags("volume", [second.id], {"owner": "site-b"})  # the type is matched case-insensitively
    assert cs.list_tags("Volume", first.id) == {"owner": "site-a", "disk": "7"}
    assert cs.get_volume(first.id).tag_map == {"owner": "site-a", "disk": "7"}
    assert cs.get_volume(second.id).tags[0].resource_id == second.id
    assert new_volume(cs, cloudstack_sim, "c").tags == ()

    cs.delete_tags("Volume", [first.id], ["disk"])
    assert cs.get_volume(first.id).tag_map == {"owner": "site-a"}
    cs.delete_volume(first.id)  # a removed volume takes its tags with it
    assert cs.list_tags("Volume", first.id) == {}


def test_list_volumes_by_tags_matches_any_pair(cs, cloudstack_sim):
    """QueryManagerImpl joins resource_tags with an OR of key=value pairs: one matching pair lists a volume."""
    a, b, c = (new_volume(cs, cloudstack_sim, name) for name in "abc")
    cs.create_tags("Volume", [a.id], {"site": "one", "disk": "1"})
    cs.create_tags("Volume", [b.id], {"site": "two", "disk": "1"})
    cs.create_tags("Volume", [c.id], {"site": "one", "disk": "2"})
    assert {v.id for v in cs.list_volumes(tags={"site": "one"})} == {a.id, c.id}
    assert {v.id for v in cs.list_volumes(tags={"site": "one", "disk": "1"})} == {a.id, b.id, c.id}
    assert {v.id for v in cs.list_volumes(tags={"SITE": "TWO"})} == {b.id}  # MySQL's collation
    answer = raw_call(cloudstack_sim, base_params(cloudstack_sim, "listVolumes", **{"tags[0].key": "site"})).json()[
        "listvolumesresponse"
    ]
    assert answer["errortext"] == "No value is passed in for key site"


def test_create_tags_refuses_what_cloudstack_refuses(cs, cloudstack_sim):
    volume = new_volume(cs, cloudstack_sim)
    cs.create_tags("Volume", [volume.id], {"owner": "me"})
    with pytest.raises(CloudStackJobFailed, match=f"tag owner already on Volume with id {volume.id}") as caught:
        cs.create_tags("Volume", [volume.id], {"owner": "someone else", "extra": "x"})
    assert caught.value.errorcode == 530
    assert cs.list_tags("Volume", volume.id) == {"owner": "me"}  # all or nothing: "extra" was not added
    with pytest.raises(CloudStackError, match="Invalid resource type Volumes"):
        cs.create_tags("Volumes", [volume.id], {"a": "b"})
    with pytest.raises(CloudStackJobFailed, match="Unable to find resource by uuid nope and type Volume"):
        cs.create_tags("Volume", ["nope"], {"a": "b"})
    with pytest.raises(CloudStackJobFailed, match="Value for the key a is either null or empty"):
        cs.call_async("createTags", resourcetype="Volume", resourceids=volume.id, **{"tags[0].key": "a"})
    with pytest.raises(CloudStackError, match="missing parameter tags"):
        cs.call_async("createTags", resourcetype="Volume", resourceids=volume.id)
    with pytest.raises(CloudStackJobFailed, match="Failed to delete tags"):
        cs.delete_tags("Volume", [volume.id], ["absent"])


def test_hypervisor_capabilities_give_the_attach_limit(cs, cloudstack_sim):
    (kvm,) = cs.hypervisor_capabilities("kvm")
    assert (kvm.hypervisor, kvm.version, kvm.max_data_volumes) == ("KVM", "default", 32)
    assert cs.hypervisor_capabilities("Hyper-V") == []
    assert cs.get_vm(cloudstack_sim.hub_vm_id).hypervisor == "KVM"
    assert cs.template_hypervisor(cloudstack_sim.info().template_id) == "KVM"

    with cloudstack_sim._lock:  # an operator's updateHypervisorCapabilities maxdatavolumeslimit=2
        cloudstack_sim.cloud.set_max_data_volumes("KVM", 2)
    assert cs.hypervisor_capabilities("KVM")[0].max_data_volumes == 2
    vm = new_vm(cs, cloudstack_sim)
    assert [cs.attach_volume(new_volume(cs, cloudstack_sim).id, vm.id).device_id for _ in range(2)] == [1, 2]
    with pytest.raises(CloudStackJobFailed, match=r"maximum number of data disks \(2\)"):
        cs.attach_volume(new_volume(cs, cloudstack_sim).id, vm.id)


def test_a_hub_pool_shows_every_hubs_volumes(cs, cloudstack_sim):
    second_hub = cloudstack_sim.add_hub("vmferry-hub-2")
    volume = new_volume(cs, cloudstack_sim)
    cs.attach_volume(volume.id, second_hub)
    assert (cloudstack_sim.dev_root / "disk" / "by-id" / f"virtio-{volume.id.replace('-', '')[:20]}").exists()
