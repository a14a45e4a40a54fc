"""What a command works on: the blocks (saved ones by name, or the running lab's with --lab), VMs and points.

The product never reaches the lab on its own: a command that needs a block takes it from ``--vcenter``,
``--agent``, ``--repository`` or ``--cloudstack`` (saved Prefect blocks), or from the running lab when
``--lab`` is given; with neither it is a usage error (exit 2) naming both. ``--lab`` reads the description the
lab writes when it starts (``lab.json`` in ``$VMFERRY_LAB_DIR``, by default the per-user data dir's
``vmferry/lab``): the lab vCenter, the CloudStack simulator, and the long-lived agent ``vmferry lab up``
starts. It is read as data; the lab's code (``infra``) is never imported by the product.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import platformdirs
import typer

from catalog import default_catalog
from catalog.errors import UnknownRecord
from catalog.inventory import RecordedVM, find_vm
from catalog.restore_points import PointView, get_point
from vmferry.cli.app import NotFound
from vmferry.errors import EXIT_USAGE, Refused, VmferryError
from vmferry.settings import get_settings

if TYPE_CHECKING:
    from prefect.blocks.core import Block

    from blocks import Agent, BackupRepository, CloudStack, VCenter

B = TypeVar("B", bound="Block")

# The repository the lab demo writes (infra/lab/demo.py), so the lab's points are listed and restorable here.
LAB_REPOSITORY_NAME = "demo"
LAB_STATE_FILE = "lab.json"
BLOCK_OPTIONS = {"vcenter": "--vcenter", "agent": "--agent", "repository": "--repository", "cloudstack": "--cloudstack"}


class BlocksNotNamed(VmferryError):
    """A command needs a block that is neither named nor asked of the lab: a usage error (exit 2)."""

    exit_code = EXIT_USAGE
    label = "usage error"


class LabNotRunning(Refused):
    """--lab was asked for, and there is no running lab (or it lacks what the command needs): exit 4."""


def lab_dir() -> Path:
    """Where the lab describes itself; the same rule as the lab's own (infra/lab/paths.py)."""
    override = os.environ.get("VMFERRY_LAB_DIR")
    return Path(override) if override else Path(platformdirs.user_data_dir("vmferry")) / "lab"


def lab_state() -> dict[str, Any]:
    """The running lab's description; refused when there is none or its vCenter does not answer."""
    path = lab_dir() / LAB_STATE_FILE
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        raise LabNotRunning(f"--lab: no running lab is described in {path}: start it with `vmferry lab up`") from None
    vcenter = state["vcenter"]
    try:
        socket.create_connection((vcenter["host"], int(vcenter["port"])), timeout=2).close()
    except OSError:
        raise LabNotRunning(
            f"--lab: the lab's vCenter at {vcenter['host']}:{vcenter['port']} does not answer: "
            "start the lab again with `vmferry lab up`"
        ) from None
    return state


def lab_vcenter_block(vcenter: dict[str, Any]) -> VCenter:
    """The lab vCenter (as lab.json records it) as a VCenter block, pinned by its certificate thumbprint."""
    from blocks import VCenter

    return VCenter(
        host=vcenter["host"],
        port=vcenter["port"],
        username=vcenter["user"],
        password=vcenter["password"],
        thumbprint=vcenter["thumbprint"],
    )


def lab_cloudstack_block(info: dict[str, object]) -> CloudStack:
    """The lab's CloudStack simulator (its connection details as lab.json records them) as a CloudStack block."""
    from blocks import CloudStack

    return CloudStack(
        endpoint=str(info["url"]),
        api_key=str(info["api_key"]),
        secret_key=str(info["secret_key"]),
        zone_id=str(info["zone_id"]),
        disk_offering_id=str(info["custom_disk_offering_id"]),
        # the custom offering: failover VMs get the source's CPUs and memory
        service_offering_id=str(info.get("custom_service_offering_id") or info["service_offering_id"]),
        template_id=str(info["template_id"]),
        hub_vm_id=str(info["hub_vm_id"]),
        device_root=str(info["dev_root"]),
    )


def lab_repository_block() -> BackupRepository:
    from blocks import BackupRepository

    return BackupRepository(name=LAB_REPOSITORY_NAME, path=str(get_settings().data_dir / "repository"))


def load_saved(block_type: type[B], name: str) -> B:
    from prefect.exceptions import ObjectNotFound

    try:
        return block_type.load(name)
    except ValueError as exc:
        if isinstance(exc.__cause__, ObjectNotFound):
            raise NotFound(f"no saved {block_type.get_block_type_slug()} block named {name!r}") from exc
        raise


@dataclass
class BlockChoice:
    """Which blocks a command uses: the named saved blocks, else with ``lab`` the running lab's, else none."""

    command: str  # for the usage error: "backup"
    vcenter: str | None = None
    agent: str | None = None
    repository: str | None = None
    cloudstack: str | None = None
    lab: bool = False

    def parameters(self, *names: str) -> dict[str, str]:
        """The named blocks as flow parameters (a deployment's defaults fill the rest)."""
        if self.lab:
            raise BlocksNotNamed(
                "--lab takes blocks from the lab of this machine: with --submit, name saved blocks or let the "
                "deployment's defaults stand"
            )
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def require(self, *names: str) -> None:
        """Usage error (exit 2) unless each of ``names`` is named or --lab is given: never the lab silently."""
        missing = [BLOCK_OPTIONS[name] for name in names if getattr(self, name) is None]
        if missing and not self.lab:
            raise BlocksNotNamed(
                f"`vmferry {self.command}` needs {', '.join(missing)} BLOCK (saved Prefect blocks), "
                "or --lab to use the running lab (`vmferry lab up`)"
            )

    @cached_property
    def _lab(self) -> dict[str, Any]:
        return lab_state()

    def vcenter_block(self) -> VCenter:
        from blocks import VCenter

        self.require("vcenter")
        if self.vcenter is not None:
            return load_saved(VCenter, self.vcenter)
        return lab_vcenter_block(self._lab["vcenter"])

    def repository_block(self) -> BackupRepository:
        from blocks import BackupRepository

        self.require("repository")
        if self.repository is not None:
            return load_saved(BackupRepository, self.repository)
        return lab_repository_block()

    def cloudstack_block(self) -> CloudStack:
        from blocks import CloudStack

        self.require("cloudstack")
        if self.cloudstack is not None:
            return load_saved(CloudStack, self.cloudstack)
        if "cloudstack" not in self._lab:
            raise LabNotRunning("--lab: the running lab has no CloudStack simulator: run `vmferry lab up` again")
        return lab_cloudstack_block(self._lab["cloudstack"]["info"])

    def optional(self, name: str) -> Any:
        """The block if named, else the lab's when --lab is given and the lab has it, else None (reconcile)."""
        if getattr(self, name) is None and not self.lab:
            return None
        try:
            return getattr(self, f"{name}_block")()
        except LabNotRunning:
            return None

    @contextmanager
    def agent_block(self) -> Iterator[Agent]:
        """The named agent, or with --lab the lab's long-lived agent (started by `vmferry lab up`)."""
        from blocks import Agent

        self.require("agent")
        if self.agent is not None:
            yield load_saved(Agent, self.agent)
            return
        if self.vcenter is not None:
            # The lab's agent reads the lab vCenter: it cannot serve a saved vCenter block.
            raise typer.BadParameter("name the agent for that vCenter too", param_hint="--agent")
        agent = self._lab.get("agent")
        if agent is None:
            raise LabNotRunning("--lab: the running lab has no agent: run `vmferry lab up` (it starts one)")
        yield Agent(url=agent["url"], token=agent["token"])


def _block_option(flag: str, kind: str, lab_default: str) -> Any:
    return typer.Option(flag, metavar="BLOCK", help=f"Saved {kind} block (with --lab: {lab_default}).")


VCenterOption = Annotated[str | None, _block_option("--vcenter", "VCenter", "the lab's vCenter")]
AgentOption = Annotated[str | None, _block_option("--agent", "Agent", "the agent `vmferry lab up` started")]
RepositoryOption = Annotated[
    str | None, _block_option("--repository", "BackupRepository", f"the lab's {LAB_REPOSITORY_NAME!r}")
]
CloudStackOption = Annotated[str | None, _block_option("--cloudstack", "CloudStack", "the lab's simulator")]
LabOption = Annotated[
    bool,
    typer.Option(
        "--lab",
        help="Use the running lab (`vmferry lab up`) for every block not named. Without it, name saved blocks.",
    ),
]


# --- VMs and points: not found is exit 3, at once ------------------------------------------------------------------


def require_in_vcenter(vcenter: VCenter, names: list[str]) -> None:
    """Check the names against vCenter before a flow runs: its read task retries, so a typo would take a while."""
    from common.vsphere import VSphereClient

    unknown = []
    for name in names:
        try:
            find_vm(default_catalog(), name)
        except UnknownRecord:
            unknown.append(name)
    if not unknown:
        return  # the flow reads the VM from vCenter itself; a VM gone since then fails there
    with VSphereClient(vcenter.endpoint()) as client:
        seen = client.list_vms()
    for name in unknown:
        if not any(name in (vm.name, vm.instance_uuid, vm.moref) for vm in seen):
            raise NotFound(f"vCenter {vcenter.host} has no VM named {name!r}")


def recorded_vm(name: str) -> RecordedVM:
    return find_vm(default_catalog(), name)


def point_in(point_id: int, blocks: BlockChoice, submit: str | None) -> tuple[PointView, BackupRepository | None]:
    """The point (unknown: exit 3) and the repository block to read it from (None when a deployment names it)."""
    point = get_point(default_catalog(), point_id)
    if submit is not None and blocks.repository is None:
        return point, None
    block = blocks.repository_block()
    if block.name != point.repository:
        raise typer.BadParameter(
            f"restore point {point_id} is in repository {point.repository!r}, not {block.name!r}: name its block",
            param_hint="--repository",
        )
    return point, block
