"""Protection policies: which VMs a policy selects, how a policies file is checked, what deploy.py renders."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from common.inventory import ObservedVM
from deployments.deploy import POLICY_ENTRYPOINT, load_config, render_per_vm, render_policies
from flows.policy import protect_policy
from vmferry.policies import VMSelector, VMTag, load_policies, select_vms

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


def test_a_policy_selects_the_vms_a_tag_is_attached_to():
    selector = VMSelector(tags=[VMTag(category="tier", tag="gold")], patterns=["mail"])
    assert [v.name for v in select_vms(selector, VMS, {}, tagged=["vm-3", "vm-9"])] == ["mail", "web1"]
    assert [v.name for v in select_vms(selector, VMS, {})] == ["mail"]


def test_a_policy_over_lab_vms_selects_exactly_those_carrying_its_tag(lab, lab_vcenter_block):
    """Tags live in vCenter's vAPI (REST), not in the SOAP inventory: attached there, read there, by moref."""
    from uuid import uuid4

    from clients.vsphere_tags import TagNotFound
    from infra.lab.vcenter import tag_vms
    from tasks.discovery import read_tagged_vms, read_vcenter_inventory

    inventory = read_vcenter_inventory.fn(lab_vcenter_block)
    lab_names = sorted(v.name for v in inventory)
    assert len(lab_names) >= 4, lab_names
    # categories of their own: the lab is shared by the session's tests
    tier, owner = f"tier-{uuid4().hex[:8]}", f"owner-{uuid4().hex[:8]}"
    gold = lab_names[:2]
    morefs = tag_vms(lab.vcenter, tier, "gold", gold)
    tag_vms(lab.vcenter, tier, "silver", [lab_names[2]])
    tag_vms(lab.vcenter, owner, "gold", [lab_names[3]])  # the same tag name in another category
    assert sorted(morefs) == sorted(v.moref for v in inventory if v.name in gold)

    selector = VMSelector(tags=[VMTag(category=tier, tag="gold")])
    tagged = read_tagged_vms.fn(lab_vcenter_block, selector.tags)
    assert sorted(tagged) == sorted(morefs)
    assert [v.name for v in select_vms(selector, inventory, {}, tagged)] == gold

    both = VMSelector(tags=[VMTag(category=tier, tag="gold"), VMTag(category=tier, tag="silver")])
    selected = select_vms(both, inventory, {}, read_tagged_vms.fn(lab_vcenter_block, both.tags))
    assert [v.name for v in selected] == lab_names[:3]

    # a tag that does not exist is an error naming it, not a policy that silently protects nothing
    with pytest.raises(TagNotFound, match=f"no tag 'bronze' in category '{tier}'"):
        read_tagged_vms.fn(lab_vcenter_block, [VMTag(category=tier, tag="bronze")])


def test_the_tagging_login_refuses_a_wrong_password(lab_vcenter_block):
    from pydantic import SecretStr

    from clients.vsphere_tags import VSphereTags
    from common.vsphere import VSphereError

    with VSphereTags(lab_vcenter_block.endpoint()) as tags:
        assert isinstance(tags.categories(), dict)
    wrong = lab_vcenter_block.model_copy(update={"password": SecretStr("not-the-password")})
    with pytest.raises(VSphereError, match="refused the tagging login"), VSphereTags(wrong.endpoint()):
        pass
