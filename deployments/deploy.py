"""Deploy vmferry's flows: the work pool, the global concurrency limits, then ``prefect deploy`` on prefect.yaml.

    .venv/bin/python deployments/deploy.py [--repository-limit 2] [--vcenter-limit 4] [--vm NAME ...] [--no-deploy]

Deployments tagged "per-vm" in prefect.yaml (scheduled backups, retention, replication) are templates: each
VM of protected.yaml (or of --vm) gets its own copy, named after the VM, with its ``vm`` parameter set.

Protection policies (policies.yaml, or --policies-file) get one deployment per policy and action of
flows/policy.py (``protect-policy/<policy>-<action>``); ``--alerts-block SLUG/NAME`` creates the automations
that notify through that saved block when a vmferry run fails, crashes or is late (deployments/alerts.py).
Every deployment is tagged ``vmferry`` (the alerts match on it). See docs/operations.md.

Against the server of PREFECT_API_URL (the active profile's). Safe to run again: the pool is created only when
missing, limits are upserted, deployments are updated in place.

Global concurrency limits (orchestration/limits.py; the flows hold them with ``strict=True``):
``repo-backup-<repository name>`` for every repository the deployments write to and
``vcenter-snapshots-<vCenter host>`` for every vCenter they snapshot, read from the saved blocks the
deployments name. A block saved later gets its limit from its first run, with the default of
VMFERRY_REPOSITORY_BACKUP_LIMIT / VMFERRY_VCENTER_SNAPSHOT_LIMIT; run this again to set yours.
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_PREFECT_FILE = HERE / "prefect.yaml"
DEFAULT_PROTECTED_FILE = HERE / "protected.yaml"
DEFAULT_POLICIES_FILE = HERE / "policies.yaml"
POLICY_ENTRYPOINT = "flows/policy.py:protect_policy"
PER_VM_TAG = "per-vm"
# Prefect refuses these in deployment names (they end up in URLs and limit names).
_UNSAFE_NAME_CHARACTERS = set("/%&><")


@dataclass(frozen=True)
class ProtectedVM:
    name: str
    flows: frozenset[str] | None = None  # flow names (backup-vm, ...) of the per-VM deployments; None: all


def load_config(prefect_file: Path) -> dict[str, Any]:
    """A prefect.yaml, YAML anchors and merge keys resolved."""
    return yaml.safe_load(prefect_file.read_text())


def flow_name(deployment: dict[str, Any]) -> str:
    return deployment["entrypoint"].rsplit(":", 1)[1].replace("_", "-")


def is_per_vm(deployment: dict[str, Any]) -> bool:
    return PER_VM_TAG in (deployment.get("tags") or [])


def check_vm_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise SystemExit(f"protected VM {name!r}: a VM name is a non-empty string")
    if bad := sorted(_UNSAFE_NAME_CHARACTERS & set(name)):
        raise SystemExit(
            f"protected VM {name!r}: its name has {' '.join(bad)}, which a Prefect deployment name cannot hold; "
            "list it by its instance UUID instead"
        )
    return name


def load_protected(path: Path) -> list[ProtectedVM]:
    """protected.yaml's ``vms``: names, or ``{name: ..., flows: [backup-vm, ...]}`` for some of the schedules."""
    entries = (yaml.safe_load(path.read_text()) or {}).get("vms") or []
    protected = []
    for entry in entries:
        if isinstance(entry, dict):
            flows = entry.get("flows")
            protected.append(ProtectedVM(check_vm_name(entry.get("name")), frozenset(flows) if flows else None))
        else:
            protected.append(ProtectedVM(check_vm_name(entry)))
    return protected


def render_per_vm(config: dict[str, Any], protected: list[ProtectedVM]) -> dict[str, Any]:
    """The config with each per-VM deployment replaced by one copy per protected VM, named after it."""
    templates = [d for d in config.get("deployments") or [] if is_per_vm(d)]
    known = {flow_name(d) for d in templates}
    for vm in protected:
        if vm.flows and (unknown := vm.flows - known):
            raise SystemExit(
                f"protected VM {vm.name!r}: no per-VM deployment of {sorted(unknown)}; known: {sorted(known)}"
            )
    deployments = [d for d in config.get("deployments") or [] if not is_per_vm(d)]
    for template in templates:
        for vm in protected:
            if vm.flows is not None and flow_name(template) not in vm.flows:
                continue
            deployment = copy.deepcopy(template)
            deployment["name"] = vm.name
            deployment["parameters"] = {**(deployment.get("parameters") or {}), "vm": vm.name}
            deployments.append(deployment)
    for deployment in deployments:
        # the alerts (deployments/alerts.py) match runs by this tag; runs inherit their deployment's tags
        deployment["tags"] = [t for t in deployment.get("tags") or [] if t != "vmferry"] + ["vmferry"]
    rendered = {key: value for key, value in config.items() if key != "definitions"}
    rendered["deployments"] = deployments
    return rendered


def render_policies(config: dict[str, Any], policies_file: Path) -> dict[str, Any]:
    """The config with one deployment of the policy flow per policy and action of ``policies_file``."""
    from vmferry.policies import load_policies

    policies = load_policies(policies_file)
    pool = next((d["work_pool"] for d in config["deployments"] if d.get("work_pool")), None)
    rendered = []
    for policy in policies:
        for action, spec in policy.actions().items():
            parameters: dict[str, Any] = {
                "policy": policy.name,
                "action": action,
                "vms": policy.vms.model_dump(exclude_defaults=True),
                "vcenter": policy.vcenter,
                "parameters": spec.parameters,
                "per_vm_deployment": policy.per_vm_deployment,
            }
            if action == "prune" and policy.retention is not None:
                parameters["retention"] = policy.retention.model_dump()
            deployment: dict[str, Any] = {
                "name": f"{policy.name}-{action}",
                "entrypoint": POLICY_ENTRYPOINT,
                "description": f"Policy {policy.name}: {action} of its VMs, one per-VM run each. "
                + (policy.description or ""),
                "tags": ["policy", f"policy:{policy.name}", "vmferry"],
                "parameters": parameters,
                "schedules": [schedule.prefect() for schedule in spec.schedules],
            }
            if pool:
                deployment["work_pool"] = copy.deepcopy(pool)
            rendered.append(deployment)
    return {**config, "deployments": [*config["deployments"], *rendered]}


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def write_rendered(config: dict[str, Any], directory: Path) -> Path:
    path = directory / "prefect.yaml"
    path.write_text(yaml.dump(config, Dumper=_NoAliasDumper, sort_keys=False))
    return path


def parameter_values(deployments: Iterable[dict[str, Any]], name: str) -> list[str]:
    values = {d.get("parameters", {}).get(name) for d in deployments}
    return sorted(v for v in values if isinstance(v, str))


def repository_limit_of(block_name: str) -> str | None:
    """The limit of a saved BackupRepository block: it is keyed on the repository's ``name`` field."""
    from blocks import BackupRepository
    from common.names import repository_limit_name

    try:
        return repository_limit_name(BackupRepository.load(block_name).name)
    except ValueError:
        print(f"BackupRepository block {block_name!r} is not saved yet: no limit set for it")
        return None


def vcenter_limit_of(block_name: str) -> str | None:
    """The limit of a saved VCenter block: it is keyed on the vCenter's host, shared by every block naming it."""
    from blocks import VCenter
    from common.names import vcenter_limit_name

    try:
        vcenter = VCenter.load(block_name)
    except ValueError:
        print(f"VCenter block {block_name!r} is not saved yet: no limit set for it")
        return None
    return vcenter_limit_name(vcenter.host, vcenter.port)


def ensure_work_pool(name: str) -> bool:
    """Create a process work pool with Prefect's default job template; True when it had to be created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(
                    name=name, type="process", base_job_template=ProcessWorker.get_default_base_job_template()
                )
            )
            return True
    if pool.type != "process":
        raise SystemExit(f"work pool {name!r} exists with type {pool.type!r}; vmferry's flows need a process pool")
    return False


def upsert_limits(limits: dict[str, int]) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for name, limit in limits.items():
            client.upsert_global_concurrency_limit_by_name(name, limit)


def concurrency_limits(deployments: list[dict[str, Any]], repository_limit: int, vcenter_limit: int) -> dict[str, int]:
    """Limits for the blocks the deployments name; a block not saved yet gets its limit on its first run."""
    limits = {}
    for block in parameter_values(deployments, "repository"):
        if name := repository_limit_of(block):
            limits[name] = repository_limit
    for block in parameter_values(deployments, "vcenter"):
        if name := vcenter_limit_of(block):
            limits[name] = vcenter_limit
    return limits


def run_prefect_deploy(prefect_file: Path) -> int:
    from prefect.settings import get_current_settings

    argv = [sys.executable, "-m", "prefect", "deploy", "--all", "--prefect-file", str(prefect_file)]
    env = {**os.environ, "PREFECT_CLI_PROMPT": "false"}
    # The API this process talks to, even when it came from a temporary setting rather than the environment.
    api_url = get_current_settings().api.url
    if api_url:
        env["PREFECT_API_URL"] = api_url
    # Entrypoints are relative to the repository root.
    return subprocess.run(argv, cwd=ROOT, env=env, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefect-file", type=Path, default=DEFAULT_PREFECT_FILE)
    parser.add_argument(
        "--repository-limit", type=int, default=2, help="concurrent backups writing to one repository (default 2)"
    )
    parser.add_argument(
        "--vcenter-limit", type=int, default=4, help="VMs of one vCenter with a snapshot open at once (default 4)"
    )
    parser.add_argument(
        "--protected-file",
        type=Path,
        default=DEFAULT_PROTECTED_FILE,
        help="the VMs that get the per-VM scheduled deployments (default deployments/protected.yaml)",
    )
    parser.add_argument(
        "--policies-file",
        type=Path,
        default=DEFAULT_POLICIES_FILE,
        help="protection policies: one deployment per policy and action (default deployments/policies.yaml)",
    )
    parser.add_argument(
        "--vm",
        action="append",
        default=None,
        help="a VM to give the per-VM deployments to, instead of those of the protected file (repeatable)",
    )
    parser.add_argument(
        "--alerts-block",
        metavar="SLUG/NAME",
        help="a saved notification block (e.g. slack-webhook/ops): create the automations that notify through it "
        "when a vmferry run fails, crashes or is late",
    )
    parser.add_argument("--no-deploy", action="store_true", help="only the work pool, the limits and the alerts")
    args = parser.parse_args(argv)

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # `blocks` when run as a script from a checkout that is not installed
    protected = (
        [ProtectedVM(check_vm_name(name)) for name in args.vm] if args.vm else load_protected(args.protected_file)
    )
    config = render_policies(render_per_vm(load_config(args.prefect_file), protected), args.policies_file)
    deployments = config["deployments"]
    print(f"per-VM deployments for: {', '.join(vm.name for vm in protected) or 'no VM'}")
    for pool in sorted({d["work_pool"]["name"] for d in deployments if d.get("work_pool")}):
        print(f"work pool {pool}: {'created' if ensure_work_pool(pool) else 'exists'}")
    limits = concurrency_limits(deployments, args.repository_limit, args.vcenter_limit)
    upsert_limits(limits)
    for name, limit in limits.items():
        print(f"global concurrency limit {name}: {limit}")
    if args.alerts_block:
        from deployments.alerts import ensure_alerts

        for name in ensure_alerts(args.alerts_block):
            print(f"automation {name!r}: notifies through {args.alerts_block}")
    if args.no_deploy:
        return 0
    with tempfile.TemporaryDirectory(prefix="vmferry-deploy-") as scratch:
        return run_prefect_deploy(write_rendered(config, Path(scratch)))


if __name__ == "__main__":
    sys.exit(main())
