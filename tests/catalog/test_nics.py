"""Discovered NICs and their port groups: what failover maps to CloudStack networks, in source order."""

from __future__ import annotations

from catalog.inventory import record_vm
from common.inventory import ObservedNic
from tests.factories import disk, vm


def with_nics(*nics: ObservedNic):
    return vm(disk(2000, unit=0)).model_copy(update={"nics": nics})


def test_nics_are_recorded_in_device_key_order_and_a_removed_one_is_not_shown(catalog):
    nics = (
        ObservedNic(device_key=4001, mac_address="00:50:56:00:00:02", network="backup", adapter="e1000e"),
        ObservedNic(device_key=4000, mac_address="00:50:56:00:00:01", network="VM Network", adapter="vmxnet3"),
    )
    first = record_vm(catalog, with_nics(*nics))
    assert [(n.device_key, n.network) for n in first.nics] == [(4000, "VM Network"), (4001, "backup")]
    moved = nics[1].model_copy(update={"network": "prod"})
    second = record_vm(catalog, with_nics(moved))
    assert [(n.device_key, n.network, n.mac_address) for n in second.nics] == [(4000, "prod", "00:50:56:00:00:01")]
    third = record_vm(catalog, with_nics(*nics))  # it came back: same row, present again
    assert [n.device_key for n in third.nics] == [4000, 4001]
