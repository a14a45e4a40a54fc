"""The destination VM's sizing policy (vmferry.failover_plan.plan_sizing): pure, so every branch is checked here."""

from __future__ import annotations

from catalog.inventory import RecordedVM
from vmferry.failover_plan import DestinationSizing, plan_sizing


def _vm(cpus: int | None, memory_mb: int | None) -> RecordedVM:
    return RecordedVM(
        vm_context_id=1, name="db3", instance_uuid="5012-a", moref="vm-1", boot_disk_id=None,
        boot_disk_source=None, cpu_count=cpus, memory_mb=memory_mb, disks=[],
    )  # fmt: skip


def _plan(vm: RecordedVM, customized: bool, cpus: int | None = None, memory_mb: int | None = None):
    return plan_sizing(
        vm, offering_name="Small", customized=customized, offering_cpus=cpus, offering_memory_mb=memory_mb,
        cpu_speed_mhz=1800,
    )  # fmt: skip


def test_a_custom_offering_sizes_the_destination_like_the_source() -> None:
    sizing = _plan(_vm(4, 8192), customized=True)
    assert sizing.deploy_arguments() == {"cpu_number": 4, "cpu_speed_mhz": 1800, "memory_mb": 8192}
    assert sizing.warning is None


def test_a_custom_offering_for_a_source_of_unknown_size_gets_the_minimum() -> None:
    assert _plan(_vm(None, None), customized=True).deploy_arguments() == {
        "cpu_number": 1,
        "cpu_speed_mhz": 1800,
        "memory_mb": 1024,
    }


def test_a_fixed_offering_decides_itself_and_warns_only_when_smaller() -> None:
    big_enough = _plan(_vm(2, 2048), customized=False, cpus=2, memory_mb=4096)
    assert big_enough == DestinationSizing() and big_enough.deploy_arguments() == {}
    fewer_cpus = _plan(_vm(4, 2048), customized=False, cpus=2, memory_mb=4096)
    less_memory = _plan(_vm(2, 8192), customized=False, cpus=2, memory_mb=4096)
    for sizing in (fewer_cpus, less_memory):
        assert sizing.deploy_arguments() == {}
        assert sizing.warning and "smaller than VM 'db3'" in sizing.warning and "Small" in sizing.warning
    # a fixed offering that does not report its size is smaller than any known source
    assert _plan(_vm(1, 512), customized=False).warning
    assert _plan(_vm(None, None), customized=False).warning is None
