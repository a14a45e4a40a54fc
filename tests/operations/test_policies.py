"""Protection policies: which VMs a policy selects, how a policies file is checked, what deploy.py renders."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from common.inventory import ObservedVM
from deployments.deploy import POLICY_ENTRYPOINT, load_config, render_per_vm, render_policies
from flows.policy import protect_policy
from vmferry.policies import VMSelector, load_policies, select_vms

ROOT = Path(__file__).resolve().parents[2]


def vm(name: str, uuid: str, moref: str) -> ObservedVM:
    return ObservedVM(vcenter="vc", instance_uuid=uuid, moref=moref, name=name)


VMS = [vm("db1", "u1", "vm-1"), vm("db2", "u2", "vm-2"), vm("web1", "u3", "vm-3"), vm("mail", "u4", "vm-4")]
FOLDERS = {"vm-1": "/DC0/vm/prod/db", "vm-2": "/DC0/vm/test", "vm-3": "/DC0/vm/prod", "vm-4": "/DC0/vm/production"}


def names(selector: VMSelector) -> list[str]:
    return [v.name for v in select_vms(selector, VMS, FOLDERS)]


def test_a_policy_selects_by_name_pattern_and_folder():
    assert names(VMSelector(names=["mail", "u2"])) == ["db2", "mail"]
    assert names(VMSelector(patterns=["db*"])) == ["db1", "db2"]
    # a folder holds its subfolders' VMs, and /prod is not /production
    assert names(VMSelector(folders=["/DC0/vm/prod/"])) == ["db1", "web1"]
    assert names(VMSelector(names=["vm-4"], patterns=["web?"], folders=["/DC0/vm/test"])) == ["db2", "mail", "web1"]
    assert names(VMSelector(patterns=["DB*"])) == []  # names are case-sensitive, as vCenter's are


def write(tmp_path: Path, policies: list[dict]) -> Path:
    path = tmp_path / "policies.yaml"
    path.write_text(yaml.safe_dump({"policies": policies}))
    return path


@pytest.mark.parametrize(
    ("policy", "says"),
    [
        ({"name": "p", "vms": {}}, "selects no VM"),
        ({"name": "a/b", "vms": {"names": ["x"]}}, "without / % & > <"),
        (
            {"name": "p", "vms": {"names": ["x"]}, "backup": {"schedules": [{"cron": "0 1 * * *", "interval": 60}]}},
            "either cron or interval",
        ),
        ({"name": "p", "vms": {"names": ["x"]}, "backup": {"schedules": []}}, "at least 1"),
        ({"name": "p", "vms": {"name": ["x"]}}, "Extra inputs"),
    ],
)
def test_a_wrong_policy_is_refused_by_name(tmp_path, policy, says):
    with pytest.raises(SystemExit, match="policy") as raised:
        load_policies(write(tmp_path, [policy]))
    assert says in str(raised.value) and repr(policy["name"]) in str(raised.value)


def test_one_deployment_per_policy_and_action_with_the_per_vm_parameters(tmp_path):
    path = write(
        tmp_path,
        [
            {
                "name": "gold",
                "vms": {"patterns": ["db*"], "folders": ["/DC0/vm/prod"]},
                "backup": {
                    "parameters": {"repository": "main"},
                    "schedules": [{"cron": "0 1 * * 1-6", "kind": "auto"}, {"cron": "0 1 * * 0", "kind": "full"}],
                },
                "prune": {"schedules": [{"cron": "0 5 * * *"}]},
                "retention": {"keep_last": 3},
            }
        ],
    )
    config = render_per_vm(load_config(ROOT / "deployments" / "prefect.yaml"), [])
    rendered = render_policies(config, path)["deployments"]
    ours = {d["name"]: d for d in rendered if d["entrypoint"] == POLICY_ENTRYPOINT and d["name"] != "on-demand"}
    assert sorted(ours) == ["gold-backup", "gold-prune"]
    backup = ours["gold-backup"]
    assert backup["parameters"] == {
        "policy": "gold",
        "action": "backup",
        "vms": {"patterns": ["db*"], "folders": ["/DC0/vm/prod"]},
        "vcenter": "prod",
        "parameters": {"repository": "main"},
        "per_vm_deployment": "on-demand",
    }
    assert [s["parameters"] for s in backup["schedules"]] == [{"kind": "auto"}, {"kind": "full"}]
    assert ours["gold-prune"]["parameters"]["retention"]["keep_last"] == 3
    assert backup["work_pool"]["name"] == "vmferry-hub" and "policy:gold" in backup["tags"]
    # the parameters are the flow's own and valid for it
    for deployment in ours.values():
        protect_policy.validate_parameters(deployment["parameters"])
    # every deployment carries the tag the alerts match, and the per-VM ones the policy starts exist
    assert all("vmferry" in d["tags"] for d in rendered)
    on_demand = {(d["entrypoint"], d["name"]) for d in rendered}
    assert ("flows/backup.py:backup_vm", "on-demand") in on_demand
    assert ("flows/retention.py:prune_restore_points", "on-demand") in on_demand
    assert ("flows/replicate.py:replicate_vm", "on-demand") in on_demand


def test_the_shipped_policies_file_loads():
    assert load_policies(ROOT / "deployments" / "policies.yaml") == []


def test_the_example_in_the_policies_file_is_a_valid_policy(tmp_path):
    text = (ROOT / "deployments" / "policies.yaml").read_text().splitlines()
    start = text.index("# policies:")
    example = [line.removeprefix("# ") for line in text[start:] if line.startswith("# ")]
    (tmp_path / "example.yaml").write_text("\n".join(example))
    (policy,) = load_policies(tmp_path / "example.yaml")
    assert sorted(policy.actions()) == ["backup", "prune", "replicate"] and policy.vms.folders
