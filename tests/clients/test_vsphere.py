"""The vSphere client against the lab's vcsim: powering a VM on and off, removing a job's snapshot by its name."""

from __future__ import annotations

from common.names import job_snapshot_name
from common.vsphere import VSphereClient, VSphereSnapshots
from infra.lab.seed import require_vm
from infra.lab.vcenter import session


def _power_state(lab, name: str) -> str:
    with session(lab.vcenter) as si:
        return str(require_vm(si, name).runtime.powerState)


def test_set_power_changes_the_state_once(lab, lab_vcenter_block, make_scratch_vm) -> None:
    name = make_scratch_vm()
    with VSphereClient(lab_vcenter_block.endpoint()) as client:
        uuid = client.find_vm(name).instance_uuid
        on = _power_state(lab, name) == "poweredOn"
        assert client.set_power(uuid, not on) is True
        assert _power_state(lab, name) == ("poweredOff" if on else "poweredOn")
        assert client.set_power(uuid, not on) is False  # already there: nothing asked of vCenter
        assert client.set_power(uuid, on) is True
        assert _power_state(lab, name) == ("poweredOn" if on else "poweredOff")


def test_remove_snapshots_named_takes_that_name_only(lab_vcenter_block, make_scratch_vm) -> None:
    name = make_scratch_vm()
    ours, neighbour = job_snapshot_name("job-1"), job_snapshot_name("job-10")  # a prefix of the other's name
    with VSphereClient(lab_vcenter_block.endpoint()) as client:
        vm = VSphereSnapshots(client, client.find_vm(name).instance_uuid)
        mine = vm.create_snapshot(ours, "", quiesce=False)
        theirs = vm.create_snapshot(neighbour, "", quiesce=False)
        operators = vm.create_snapshot("before-upgrade", "", quiesce=False)
        assert vm.remove_snapshots_named(ours) == [mine]
        assert sorted(s.moref for s in vm.snapshots()) == sorted([theirs, operators])
        assert vm.remove_snapshots_named(ours) == []  # idempotent
        for moref in (theirs, operators):
            vm.remove_snapshot(moref)
