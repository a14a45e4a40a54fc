"""Protection policies: which VMs (names, name patterns, vCenter folders or tags), on which schedules, kept how long.

A policy is one deployment per action (backup, replication, pruning) whatever the number of its VMs: its run
selects the VMs from vCenter at run time (a VM added to a folder is protected from its next run) and starts one
per-VM run of the per-VM deployment for each, which the concurrency limits then pace (one job per VM, the
repository's and the vCenter's slots). deployments/policies.yaml holds them; deployments/deploy.py deploys them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from common.inventory import ObservedVM
from vmferry.retention import RetentionPolicy

Action = Literal["backup", "replicate", "prune"]
# the flow each action fans out to, and the parameter a schedule may set per run
PER_VM_FLOWS: dict[str, str] = {"backup": "backup-vm", "replicate": "replicate-vm", "prune": "prune-restore-points"}
_UNSAFE_NAME_CHARACTERS = set("/%&><")


class VMTag(BaseModel):
    """A vSphere tag by its category's name and its own (a tag's name is unique only in its category)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    category: str = Field(description="The tag category's name (backup-tier)")
    tag: str = Field(description="The tag's name in that category (gold)")


class VMSelector(BaseModel):
    """The VMs of a policy: any VM matching any of the lists (names, patterns, folders, tags)."""

    model_config = ConfigDict(extra="forbid")

    names: list[str] = Field(default=[], description="VM names, instance UUIDs or morefs, exactly")
    patterns: list[str] = Field(default=[], description="Shell patterns on the VM name: db*, web-0[1-4]")
    folders: list[str] = Field(
        default=[],
        description="vCenter inventory folders as paths (/DC0/vm/prod): the VMs in them and in their subfolders",
    )
    tags: list[VMTag] = Field(default=[], description="vSphere tags (category and tag name): the VMs carrying any")

    @model_validator(mode="after")
    def _not_empty(self) -> VMSelector:
        if not (self.names or self.patterns or self.folders or self.tags):
            raise ValueError("a policy selects no VM: give names, patterns, folders or tags")
        return self

    def matches(self, vm: ObservedVM, folder: str | None, tagged: bool = False) -> bool:
        if tagged or {vm.name, vm.instance_uuid, vm.moref} & set(self.names):
            return True
        if any(fnmatch.fnmatchcase(vm.name, pattern) for pattern in self.patterns):
            return True
        if folder is None:
            return False
        return any(folder == f.rstrip("/") or folder.startswith(f.rstrip("/") + "/") for f in self.folders)


def select_vms(
    selector: VMSelector, vms: Iterable[ObservedVM], folders: dict[str, str], tagged: Iterable[str] = ()
) -> list[ObservedVM]:
    """The VMs ``selector`` names, by name; ``folders`` maps a VM's moref to its folder path, ``tagged`` holds
    the morefs of the VMs carrying one of the selector's tags (vCenter attaches tags to morefs)."""
    tagged = set(tagged)
    return sorted(
        (vm for vm in vms if selector.matches(vm, folders.get(vm.moref), vm.moref in tagged)), key=lambda vm: vm.name
    )


class PolicySchedule(BaseModel):
    """When a policy's action runs: a cron line (or an interval in seconds) and, optionally, its kind."""

    model_config = ConfigDict(extra="forbid")

    cron: str | None = None
    interval: float | None = Field(default=None, gt=0)
    timezone: str = "UTC"
    slug: str | None = None
    kind: str | None = Field(default=None, description="backup: full, incremental or auto; replicate: ...")

    @model_validator(mode="after")
    def _one_clock(self) -> PolicySchedule:
        if (self.cron is None) == (self.interval is None):
            raise ValueError("a schedule has either cron or interval")
        return self

    def prefect(self) -> dict[str, Any]:
        """The schedule as prefect.yaml writes it."""
        schedule: dict[str, Any] = {"cron": self.cron} if self.cron else {"interval": self.interval}
        schedule["timezone"] = self.timezone
        if self.slug:
            schedule["slug"] = self.slug
        if self.kind:
            schedule["parameters"] = {"kind": self.kind}
        return schedule


class PolicyAction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schedules: list[PolicySchedule] = Field(min_length=1)
    parameters: dict[str, Any] = Field(
        default={}, description="more parameters of every per-VM run (a repository or cloudstack block name, ...)"
    )


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str | None = None
    vcenter: str = Field(default="prod", description="the saved VCenter block the VMs are selected from")
    vms: VMSelector
    backup: PolicyAction | None = None
    replicate: PolicyAction | None = None
    prune: PolicyAction | None = None
    retention: RetentionPolicy | None = Field(default=None, description="what pruning keeps (prune's policy)")
    per_vm_deployment: str = Field(default="on-demand", description="the per-VM deployments the runs start")

    @field_validator("name")
    @classmethod
    def _deployable_name(cls, name: str) -> str:
        if not name.strip() or _UNSAFE_NAME_CHARACTERS & set(name):
            raise ValueError(f"policy name {name!r}: a non-empty name without / % & > < (it names deployments)")
        return name

    def actions(self) -> dict[str, PolicyAction]:
        return {a: getattr(self, a) for a in PER_VM_FLOWS if getattr(self, a) is not None}


def load_policies(path: Path) -> list[Policy]:
    """policies.yaml's ``policies``; a mistake is refused naming the policy and the field."""
    entries = (yaml.safe_load(path.read_text()) or {}).get("policies") or []
    policies = []
    for number, entry in enumerate(entries, 1):
        try:
            policies.append(Policy.model_validate(entry))
        except ValidationError as exc:
            name = entry.get("name") if isinstance(entry, dict) else None
            raise SystemExit(f"{path}: policy {name or f'#{number}'!r} is not valid: {exc}") from None
    names = [p.name for p in policies]
    if duplicates := sorted({n for n in names if names.count(n) > 1}):
        raise SystemExit(f"{path}: policy names must be unique: {duplicates}")
    return policies
