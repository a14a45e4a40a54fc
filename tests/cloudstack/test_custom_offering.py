"""Custom (dynamic) service offerings: CPU and memory given at deploy time, as UserVmManagerImpl checks them."""

from __future__ import annotations

import pytest

from clients.cloudstack import CloudStackClient, CloudStackError
from infra.lab.cloudstack import CloudStackSimulator


def _deploy(cs: CloudStackClient, sim: CloudStackSimulator, offering: str, **sizing: int):
    info = sim.info()
    return cs.deploy_vm(zone_id=info.zone_id, service_offering_id=offering, template_id=info.template_id, **sizing)


def test_a_custom_offering_takes_cpu_and_memory_from_the_request(cs, cloudstack_sim):
    custom = cloudstack_sim.info().custom_service_offering_id
    offering = cs.get_service_offering(custom)
    assert offering.customized and offering.cpu_number is None and offering.memory_mb is None
    vm = _deploy(cs, cloudstack_sim, custom, cpu_number=3, cpu_speed_mhz=1500, memory_mb=3072)
    assert (vm.cpu_number, vm.memory_mb) == (3, 3072)
    assert (cs.get_vm(vm.id).cpu_number, cs.get_vm(vm.id).memory_mb) == (3, 3072)


def test_a_custom_offering_without_sizes_is_refused(cs, cloudstack_sim):
    custom = cloudstack_sim.info().custom_service_offering_id
    with pytest.raises(CloudStackError, match="Need to specify custom parameter values cpu, cpu speed and memory"):
        _deploy(cs, cloudstack_sim, custom)
    with pytest.raises(CloudStackError, match="Invalid memory value, specify a value between 32 and"):
        _deploy(cs, cloudstack_sim, custom, cpu_number=1, cpu_speed_mhz=1000, memory_mb=16)
    with pytest.raises(CloudStackError, match="Invalid cpu speed value"):
        _deploy(cs, cloudstack_sim, custom, cpu_number=1, memory_mb=512)


def test_a_fixed_offering_refuses_sizes(cs, cloudstack_sim):
    fixed = cloudstack_sim.info().service_offering_id
    assert not cs.get_service_offering(fixed).customized
    with pytest.raises(CloudStackError, match=f"The cpu cores of this offering id:{fixed} is not customizable"):
        _deploy(cs, cloudstack_sim, fixed, cpu_number=4)
    vm = _deploy(cs, cloudstack_sim, fixed)
    assert (vm.cpu_number, vm.memory_mb) == (2, 2048)
