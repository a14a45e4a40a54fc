"""The ``vmferry`` command: discover, back up, restore, replicate, fail over and clean up VMs from a shell.

Every command runs its flow in this process (the flow run still shows in the Prefect UI of the configured
PREFECT_API_URL). Blocks come from the running lab (``vmferry lab up``) unless saved blocks are named with
``--vcenter/--agent/--repository/--cloudstack``. ``--submit DEPLOYMENT`` on backup and replicate hands the
run to a worker instead.

Exit codes: 0 success, 1 the operation failed, 2 usage error, 3 something named does not exist (a VM, a
restore point, a disk, a saved block, a deployment).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

if TYPE_CHECKING:
    from prefect.blocks.core import Block

    from blocks import Agent, BackupRepository, CloudStack, VCenter
    from catalog.inventory import RecordedVM
    from clients.agent import AgentClient

EXIT_FAILED = 1
EXIT_NOT_FOUND = 3

EXIT_CODES = (
    "Exit codes: 0 success; 1 the operation failed (reason on stderr); 2 usage error; "
    "3 not found (unknown VM, restore point, disk, saved block or deployment)."
)
# The repository the lab demo writes (vmferry/demo.py), so the lab's points are listed and restorable here.
LAB_REPOSITORY_NAME = "demo"

log = logging.getLogger(__name__)
B = TypeVar("B", bound="Block")
T = TypeVar("T")


class NotFound(Exception):
    """Something the operator named does not exist: exit 3."""


class LabNotRunning(Exception):
    """No saved block was named and there is no running lab to build one from."""


app = typer.Typer(
    name="vmferry",
    help="Back up, replicate and fail over VMware VMs into CloudStack. " + EXIT_CODES,
    no_args_is_help=True,
    add_completion=False,
    # Our own handler prints one line per failure; a traceback only with --debug.
    pretty_exceptions_enable=False,
)
lab_app = typer.Typer(help="The built-in lab: vcsim (a vCenter simulator) and our CloudStack simulator.")
app.add_typer(lab_app, name="lab", no_args_is_help=True)


@dataclass
class Cli:
    """Per-invocation state (global options and consoles), kept on the typer context."""

    debug: bool
    verbose: bool
    out: Console
    err: Console = field(default_factory=lambda: Console(stderr=True))


def _cli(ctx: typer.Context) -> Cli:
    cli = ctx.find_root().obj
    assert isinstance(cli, Cli), "main() sets it before any command runs"
    return cli


@app.callback()
def main(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and Prefect's log lines.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's log lines (stderr).")] = False,
) -> None:
    """Back up, replicate and fail over VMware VMs into CloudStack."""
    # Not a terminal (pipes, CI logs): wide enough that disk file names are not cut.
    out = Console()
    if not out.is_terminal:
        out = Console(width=160)
    ctx.obj = Cli(debug=debug, verbose=verbose or debug, out=out)


# --- errors and exit codes -------------------------------------------------------------------------------------


def _is_not_found(exc: BaseException) -> bool:
    from catalog.errors import UnknownRecord

    return isinstance(exc, NotFound | UnknownRecord)


@contextmanager
def _operation(ctx: typer.Context, what: str) -> Iterator[None]:
    """Turn any failure into one stderr line and the exit code a script can trust."""
    cli = _cli(ctx)
    try:
        yield
    except (typer.Exit, typer.Abort, typer.TyperException):
        raise
    except KeyboardInterrupt:
        cli.err.print(f"[red]vmferry {what}: interrupted[/red]")
        raise typer.Exit(130) from None
    except Exception as exc:
        if cli.debug:
            traceback.print_exc()
        message = str(exc) or type(exc).__name__
        code = EXIT_NOT_FOUND if _is_not_found(exc) else EXIT_FAILED
        label = "not found" if code == EXIT_NOT_FOUND else f"failed ({type(exc).__name__})"
        # markup off: messages quote paths and ids with brackets ("[datastore] vm/disk.vmdk")
        cli.err.print(f"vmferry {what}: {label}: {message}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(code) from None


class _PrefectConsoleMute(logging.Filter):
    """On Prefect's console handler: drops every record while ``active``."""

    active = False

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.active


_MUTE = _PrefectConsoleMute()


def _quiet_prefect_console(verbose: bool) -> None:
    """Without --verbose, Prefect's console log lines (and the tracebacks it logs on failure) stay off stderr.

    Only the console handler is muted: the records still reach the Prefect API, so the UI keeps the run's logs.
    A filter rather than a level, because Prefect re-applies its logging config (handler levels included); it
    stays on after the command, because Prefect still logs while its event worker drains at exit.
    """
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    ensure_logging_setup()  # Prefect configures logging lazily: make the handler exist before muting it
    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and _MUTE not in handler.filters:
            handler.addFilter(_MUTE)
    _MUTE.active = not verbose


def _emit_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json")


# --- blocks: saved ones by name, or built from the running lab ---------------------------------------------------


def _load_saved(block_type: type[B], name: str) -> B:
    from prefect.exceptions import ObjectNotFound

    try:
        return block_type.load(name)
    except ValueError as exc:
        if isinstance(exc.__cause__, ObjectNotFound):
            raise NotFound(f"no saved {block_type.get_block_type_slug()} block named {name!r}") from exc
        raise


@dataclass
class BlockChoice:
    """Which blocks a command uses: the named saved blocks, else the running lab's."""

    vcenter: str | None = None
    agent: str | None = None
    repository: str | None = None
    cloudstack: str | None = None

    def parameters(self, *names: str) -> dict[str, str]:
        """The named blocks as flow parameters (a deployment's defaults fill the rest)."""
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    @cached_property
    def _lab(self) -> dict[str, Any]:
        from infra.lab.__main__ import load_state
        from infra.lab.vcenter import LabVCenter, is_running

        state = load_state()
        if state is None or not is_running(LabVCenter.from_dict(state["vcenter"])):
            raise LabNotRunning(
                "no running lab to take blocks from: start it with `vmferry lab up`, or name saved blocks with "
                "--vcenter/--agent/--repository/--cloudstack"
            )
        return state

    def vcenter_block(self) -> VCenter:
        from blocks import VCenter
        from infra.lab.vcenter import LabVCenter
        from vmferry.demo import lab_vcenter_block

        if self.vcenter is not None:
            return _load_saved(VCenter, self.vcenter)
        return lab_vcenter_block(LabVCenter.from_dict(self._lab["vcenter"]))

    def repository_block(self) -> BackupRepository:
        from blocks import BackupRepository
        from vmferry.settings import get_settings

        if self.repository is not None:
            return _load_saved(BackupRepository, self.repository)
        return BackupRepository(name=LAB_REPOSITORY_NAME, path=str(get_settings().data_dir / "repository"))

    def cloudstack_block(self) -> CloudStack:
        from blocks import CloudStack
        from vmferry.demo import lab_cloudstack_block

        if self.cloudstack is not None:
            return _load_saved(CloudStack, self.cloudstack)
        state = self._lab
        if "cloudstack" not in state:
            raise LabNotRunning("the running lab has no CloudStack simulator: run `vmferry lab up` again")
        return lab_cloudstack_block(state["cloudstack"]["info"])

    @contextmanager
    def agent_block(self) -> Iterator[Agent]:
        """The named agent, or a reference agent started against the lab vCenter for this command only."""
        from blocks import Agent
        from infra.lab.agent import start_agent
        from infra.lab.paths import lab_dir
        from infra.lab.vcenter import LabVCenter

        if self.agent is not None:
            yield _load_saved(Agent, self.agent)
            return
        if self.vcenter is not None:
            # A lab agent reads the lab vCenter: it cannot serve a saved vCenter block.
            raise typer.BadParameter("name the agent for that vCenter too", param_hint="--agent")
        lab = LabVCenter.from_dict(self._lab["vcenter"])
        workdir = Path(tempfile.mkdtemp(prefix="cli-agent-", dir=lab_dir()))
        process = start_agent(lab, workdir)
        try:
            yield Agent(url=process.url, token=process.token)
        finally:
            process.stop()
            shutil.rmtree(workdir, ignore_errors=True)


VCenterOption = Annotated[
    str | None,
    typer.Option("--vcenter", metavar="BLOCK", help="Saved VCenter block (default: the running lab's vCenter)."),
]
AgentOption = Annotated[
    str | None,
    typer.Option(
        "--agent", metavar="BLOCK", help="Saved Agent block (default: a reference agent started for this command)."
    ),
]
RepositoryOption = Annotated[
    str | None,
    typer.Option(
        "--repository",
        metavar="BLOCK",
        help=f"Saved BackupRepository block (default: the lab's {LAB_REPOSITORY_NAME!r}).",
    ),
]
CloudStackOption = Annotated[
    str | None,
    typer.Option("--cloudstack", metavar="BLOCK", help="Saved CloudStack block (default: the lab's simulator)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (for scripts).")]
ProgressOption = Annotated[
    bool | None,
    typer.Option("--progress/--no-progress", help="Per-disk progress bars on stderr (default: when it is a terminal)."),
]
SubmitOption = Annotated[
    str | None,
    typer.Option(
        "--submit",
        metavar="DEPLOYMENT",
        help="Run through this Prefect deployment on a worker instead of in-process ('on-demand' or "
        "'<flow>/<deployment>'); only the block names given are passed, the deployment's defaults fill the rest.",
    ),
]
WaitOption = Annotated[
    bool, typer.Option("--wait", help="With --submit: wait for the flow run and exit 1 unless it completed.")
]


# --- VM names: not found is exit 3, at once ------------------------------------------------------------------------


def _require_in_vcenter(vcenter: VCenter, names: list[str]) -> None:
    """Check the names against vCenter before a flow runs: its read task retries, so a typo would take a while."""
    from catalog import default_catalog
    from catalog.errors import UnknownRecord
    from catalog.inventory import find_vm
    from clients.vsphere import VSphereClient

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


def _recorded_vm(name: str) -> RecordedVM:
    from catalog import default_catalog
    from catalog.inventory import find_vm

    return find_vm(default_catalog(), name)


# --- progress: poll the agent's job while the flow runs ---------------------------------------------------------


class AgentJobProgress:
    """Per-disk bars for the agent job a flow starts, read from the agent while the flow runs.

    The flow reports progress to the Prefect UI only; this thread finds the flow's job in the catalog (the
    newest job of that kind for the VM that was not there before) and polls the agent's status of it, which
    carries bytes done and total per disk. It never fails the operation: a poll error only stops the bars.
    """

    def __init__(self, agent: Agent, vm: str, job_kind: str, console: Console, *, interval: float = 0.5) -> None:
        self.agent = agent
        self.vm = vm
        self.job_kind = job_kind
        self.interval = interval
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="vmferry-progress", daemon=True)
        self._job_id: str | None = None
        self._tasks: dict[int, TaskID] = {}
        self._earlier: set[str] = set()

    def __enter__(self) -> AgentJobProgress:
        from catalog import default_catalog
        from catalog.jobs import list_jobs

        self._earlier = {job.id for job in list_jobs(default_catalog(), limit=200)}
        self.progress.start()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        try:
            with self.agent.client() as client:
                self._poll(client)  # the final numbers, even for a copy faster than one poll
        except Exception:
            log.debug("final progress poll failed", exc_info=True)
        self.progress.stop()

    def _find_job(self) -> str | None:
        from catalog import default_catalog
        from catalog.errors import CatalogError
        from catalog.inventory import find_vm
        from catalog.jobs import list_jobs

        catalog = default_catalog()
        try:
            context_id = find_vm(catalog, self.vm).vm_context_id
        except CatalogError:
            return None  # not recorded yet: the flow records the VM before it opens its job
        for job in list_jobs(catalog, limit=50):  # newest first
            if job.kind == self.job_kind and job.vm_context_id == context_id and job.id not in self._earlier:
                return job.id
        return None

    def _poll(self, client: AgentClient) -> bool:
        """Update the bars; True once the agent's job has finished."""
        from clients.agent import AgentError

        self._job_id = self._job_id or self._find_job()
        if self._job_id is None:
            return False
        try:
            status = client.status(self._job_id)
        except AgentError:
            return False  # not submitted yet (404), or a passing error: the flow reports real failures
        for disk in status.disks:
            total = disk.bytes_total or None
            if disk.disk_key not in self._tasks:
                self._tasks[disk.disk_key] = self.progress.add_task(f"{self.vm} disk-{disk.disk_key}", total=total)
            self.progress.update(self._tasks[disk.disk_key], completed=disk.bytes_done, total=total)
        return status.finished

    def _follow(self) -> None:
        try:
            with self.agent.client() as client:
                while not self._stop.wait(self.interval):
                    if self._poll(client):
                        return
        except Exception:
            log.debug("progress polling stopped", exc_info=True)


def _with_progress(cli: Cli, show: bool | None, agent: Agent, vm: str, job_kind: str, run: Callable[[], T]) -> T:
    if show is None:
        show = cli.err.is_terminal
    if not show:
        return run()
    with AgentJobProgress(agent, vm, job_kind, cli.err):
        return run()


# --- --submit: a flow run on a worker ------------------------------------------------------------------------


def submit_to_deployment(
    cli: Cli, deployment: str, flow_name: str, parameters: dict[str, Any], *, wait: bool, as_json: bool
) -> None:
    """``run_deployment`` of ``<flow>/<deployment>`` (a bare name is the flow's deployment of that name).

    Without ``wait`` it returns once the run is created (a worker runs it); with it, the run's final state
    decides the exit code.
    """
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    name = deployment if "/" in deployment else f"{flow_name}/{deployment}"
    try:
        run = run_deployment(name=name, parameters=parameters, timeout=None if wait else 0, as_subflow=False)
    except ObjectNotFound as exc:
        raise NotFound(f"no deployment {name!r} on the Prefect server") from exc
    state = run.state.type.value if run.state else "UNKNOWN"
    if as_json:
        _emit_json({"flow_run_id": str(run.id), "flow_run_name": run.name, "deployment": name, "state": state})
    else:
        cli.out.print(f"flow run {run.name} ({run.id}) of deployment {name}: {state}")
    if wait and not (run.state and run.state.is_completed()):
        message = run.state.message if run.state and run.state.message else state
        raise RuntimeError(f"flow run {run.name} ({run.id}) ended {state}: {message}")


@dataclass(frozen=True)
class VMCopyRun:
    """What backup and replicate share: submit to a deployment, or check the VM and run the flow with progress."""

    command: str  # as the operation names itself in errors: "backup db3"
    vm: str
    job_kind: str  # the agent job's kind the progress bars follow
    flow_name: str  # the deployment's flow, for --submit
    parameters: dict[str, Any]  # flow parameters besides the VM and the blocks
    blocks: BlockChoice
    block_parameters: tuple[str, ...]


def _run_vm_copy(
    ctx: typer.Context,
    what: VMCopyRun,
    run: Callable[[VCenter, Agent], T],
    show: Callable[[T], Any],
    *,
    submit: str | None,
    wait: bool,
    progress: bool | None,
    as_json: bool,
) -> None:
    cli = _cli(ctx)
    with _operation(ctx, f"{what.command} {what.vm}"):
        _quiet_prefect_console(cli.verbose)
        if submit is not None:
            parameters = {"vm": what.vm, **what.parameters, **what.blocks.parameters(*what.block_parameters)}
            submit_to_deployment(cli, submit, what.flow_name, parameters, wait=wait, as_json=as_json)
            return
        vcenter_block = what.blocks.vcenter_block()
        _require_in_vcenter(vcenter_block, [what.vm])
        with what.blocks.agent_block() as agent_block:
            result = _with_progress(
                cli, progress, agent_block, what.vm, what.job_kind, lambda: run(vcenter_block, agent_block)
            )
        if as_json:
            _emit_json(_dump(result))
            return
        cli.out.print(show(result))


# --- commands ----------------------------------------------------------------------------------------------------


class BackupKind(StrEnum):
    auto = "auto"
    full = "full"
    incremental = "incremental"


class ReplicationKind(StrEnum):
    auto = "auto"
    initial = "initial"
    incremental = "incremental"


class ImageFormat(StrEnum):
    raw = "raw"
    qcow2 = "qcow2"


class FailoverMode(StrEnum):
    test = "test"
    live = "live"


@app.command(epilog=EXIT_CODES)
def discover(
    ctx: typer.Context,
    vms: Annotated[
        list[str] | None, typer.Argument(metavar="VM", help="VM names, instance UUIDs or morefs (default: all).")
    ] = None,
    vcenter: VCenterOption = None,
    submit: SubmitOption = None,
    wait: WaitOption = False,
    as_json: JsonOption = False,
) -> None:
    """Read VMs and their disks from vCenter into the catalog and print each VM's disks.

    A disk keeps its catalog id across runs; a removed disk is marked absent.
    Without VM names every VM is read, and VMs vCenter no longer has are marked absent.
    """
    cli = _cli(ctx)
    with _operation(ctx, "discover"):
        _quiet_prefect_console(cli.verbose)
        blocks = BlockChoice(vcenter=vcenter)
        if submit is not None:
            parameters = {"vms": list(vms) if vms else None, **blocks.parameters("vcenter")}
            submit_to_deployment(cli, submit, "discover", parameters, wait=wait, as_json=as_json)
            return
        from flows.discover import discover as discover_flow
        from vmferry.demo import disks_table

        block = blocks.vcenter_block()
        if vms:
            _require_in_vcenter(block, vms)
        recorded = discover_flow(block, list(vms) if vms else None)
        if as_json:
            _emit_json([_dump(vm) for vm in recorded])
            return
        for vm in recorded:
            cli.out.print(disks_table(vm))


@app.command(epilog=EXIT_CODES)
def backup(
    ctx: typer.Context,
    vm: Annotated[str, typer.Argument(metavar="VM", help="VM name, instance UUID or moref.")],
    kind: Annotated[BackupKind, typer.Option(help="auto: incremental on a valid chain, else full.")] = BackupKind.auto,
    repository: RepositoryOption = None,
    agent: AgentOption = None,
    vcenter: VCenterOption = None,
    submit: SubmitOption = None,
    wait: WaitOption = False,
    progress: ProgressOption = None,
    as_json: JsonOption = False,
) -> None:
    """Back up every disk of a VM from one snapshot into a repository; prints the new restore point.

    The restore point is committed only when every disk was copied and checksummed.
    A failure leaves no partial file, NBD export, port lease or snapshot behind.
    """
    blocks = BlockChoice(vcenter=vcenter, agent=agent, repository=repository)

    def run(vcenter_block: VCenter, agent_block: Agent) -> Any:
        from flows.backup import backup_vm

        return backup_vm(vm, blocks.repository_block(), agent_block, vcenter_block, kind=kind.value)

    def show(point: Any) -> Any:
        from vmferry.demo import points_table

        return points_table(f"{vm}: restore point {point.id} ({point.kind}) in {point.repository}", [point])

    what = VMCopyRun(
        "backup", vm, "backup", "backup-vm", {"kind": kind.value}, blocks, ("repository", "agent", "vcenter")
    )
    _run_vm_copy(ctx, what, run, show, submit=submit, wait=wait, progress=progress, as_json=as_json)


@app.command(epilog=EXIT_CODES)
def restore(
    ctx: typer.Context,
    point_id: Annotated[int, typer.Argument(metavar="POINT", help="Restore point id (see `vmferry status`).")],
    to: Annotated[Path, typer.Option("--to", help="Directory the disks or files are written into.")],
    disk: Annotated[str | None, typer.Option(help="Only this disk (disk id like disk-2000, or catalog id).")] = None,
    image_format: Annotated[ImageFormat, typer.Option("--format", help="Disk image format.")] = ImageFormat.raw,
    files: Annotated[
        list[str] | None,
        typer.Option(
            "--file", metavar="PATH", help="Restore this file instead of disks (repeatable); needs --partition."
        ),
    ] = None,
    partition: Annotated[int | None, typer.Option(help="Partition number the --file paths are on (1 = first).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace files that already exist.")] = False,
    repository: RepositoryOption = None,
    submit: SubmitOption = None,
    wait: WaitOption = False,
    as_json: JsonOption = False,
) -> None:
    """Restore a whole VM, one disk (--disk) or single files (--file, --partition) from a restore point.

    Disks are written as DIR/<disk id>.<raw|qcow2>; files keep their names.
    With --file and no --disk the files are read from the VM's OS disk.
    Nothing half-written is ever left under a final name.
    With --submit, DIR is on the machine of the worker that runs it.
    """
    cli = _cli(ctx)
    if files and partition is None:
        raise typer.BadParameter("--file needs the partition it is on", param_hint="--partition")
    if partition is not None and not files:
        raise typer.BadParameter("--partition only goes with --file", param_hint="--partition")
    with _operation(ctx, f"restore {point_id}"):
        _quiet_prefect_console(cli.verbose)
        from catalog import default_catalog
        from catalog.inventory import get_vm
        from catalog.restore_points import get_point
        from flows.restore import restore_disk, restore_files, restore_vm

        point = get_point(default_catalog(), point_id)
        blocks = BlockChoice(repository=repository)
        repository_block = None
        if submit is None or repository is not None:
            repository_block = blocks.repository_block()
            if repository_block.name != point.repository:
                raise typer.BadParameter(
                    f"restore point {point_id} is in repository {point.repository!r}, not "
                    f"{repository_block.name!r}: name its block",
                    param_hint="--repository",
                )
        run: Callable[..., Any]
        if files:
            assert partition is not None  # checked above
            source = disk or get_vm(default_catalog(), point.vm_context_id).boot_disk_id
            if source is None:
                raise typer.BadParameter("the VM has no OS disk recorded: name the disk", param_hint="--disk")
            entry = point.disk(source)
            run, flow_name = restore_files, "restore-files"
            parameters: dict[str, Any] = {
                "point_id": point_id,
                "disk": entry.disk_id,
                "partition": partition,
                "paths": list(files),
                "destination_dir": str(to),
            }
        elif disk is not None:
            entry = point.disk(disk)  # unknown disk: exit 3 before anything is written
            run, flow_name = restore_disk, "restore-disk"
            parameters = {
                "point_id": point_id,
                "disk": entry.disk_id,
                "destination": str(to / f"{entry.disk_id}.{image_format.value}"),
                "image_format": image_format.value,
            }
        else:
            run, flow_name = restore_vm, "restore-vm"
            parameters = {"point_id": point_id, "destination_dir": str(to), "image_format": image_format.value}
        parameters["overwrite"] = overwrite
        if submit is not None:
            parameters |= blocks.parameters("repository")
            submit_to_deployment(cli, submit, flow_name, parameters, wait=wait, as_json=as_json)
            return
        result = run(repository=repository_block, **parameters)
        rows: list[dict[str, Any]]
        if files:
            rows = [
                {"disk": parameters["disk"], "partition": partition, "file": f, "path": str(p)}
                for f, p in zip(files, result, strict=True)
            ]
        else:
            restored = result if isinstance(result, list) else [result]
            rows = [{"disk": d.disk_id, "catalog id": d.vm_disk_id, "path": str(d.path)} for d in restored]
        if as_json:
            _emit_json(rows)
            return
        table = Table(title=f"restored from point {point_id} ({point.kind}) into {to}")
        for column in rows[0] if rows else ("path",):
            table.add_column(column)
        for row in rows:
            table.add_row(*(str(v) for v in row.values()))
        cli.out.print(table)


@app.command(epilog=EXIT_CODES)
def replicate(
    ctx: typer.Context,
    vm: Annotated[str, typer.Argument(metavar="VM", help="VM name, instance UUID or moref.")],
    kind: Annotated[
        ReplicationKind, typer.Option(help="auto: initial the first time, incremental after.")
    ] = ReplicationKind.auto,
    cloudstack: CloudStackOption = None,
    agent: AgentOption = None,
    vcenter: VCenterOption = None,
    submit: SubmitOption = None,
    wait: WaitOption = False,
    progress: ProgressOption = None,
    as_json: JsonOption = False,
) -> None:
    """Copy every disk of a VM into its CloudStack volume (created on the first run, synced after)."""
    blocks = BlockChoice(vcenter=vcenter, agent=agent, cloudstack=cloudstack)

    def run(vcenter_block: VCenter, agent_block: Agent) -> Any:
        from flows.replicate import replicate_vm

        return replicate_vm(vm, blocks.cloudstack_block(), agent_block, vcenter_block, kind=kind.value)

    def show(result: Any) -> Table:
        table = Table(title=f"{result.vm}: {result.kind} replication (job {result.job_id})")
        for column in ("disk", "catalog id", "volume", "hub device", "MiB written"):
            table.add_column(column)
        for d in result.disks:
            table.add_row(d.disk_id, str(d.vm_disk_id), d.volume_id, d.device_path, f"{d.bytes_written / 2**20:.1f}")
        return table

    what = VMCopyRun(
        "replicate", vm, "replication", "replicate-vm", {"kind": kind.value}, blocks, ("cloudstack", "agent", "vcenter")
    )
    _run_vm_copy(ctx, what, run, show, submit=submit, wait=wait, progress=progress, as_json=as_json)


@app.command(epilog=EXIT_CODES)
def failover(
    ctx: typer.Context,
    vm: Annotated[str, typer.Argument(metavar="VM", help="VM name, instance UUID or moref (replicated before).")],
    mode: Annotated[
        FailoverMode, typer.Option(help="test: a copy beside the source; live: source powered off, final sync.")
    ] = FailoverMode.test,
    cloudstack: CloudStackOption = None,
    agent: AgentOption = None,
    vcenter: VCenterOption = None,
    progress: ProgressOption = None,
    prepare_guest: Annotated[
        bool, typer.Option(help="Prepare the OS volume for KVM with virt-v2v-in-place before the VM starts.")
    ] = True,
    virtio_win: Annotated[
        Path | None, typer.Option(help="virtio-win driver directory for a Windows guest's preparation.")
    ] = None,
    submit: SubmitOption = None,
    wait: WaitOption = False,
    as_json: JsonOption = False,
) -> None:
    """Bring a replicated VM up in CloudStack: OS volume on device 0, data volumes after it in source order.

    Device ids are read back from CloudStack and checked before the VM starts; any failure undoes every step.
    """
    cli = _cli(ctx)
    blocks = BlockChoice(vcenter=vcenter, agent=agent, cloudstack=cloudstack)
    with _operation(ctx, f"failover {vm}"):
        _quiet_prefect_console(cli.verbose)
        from flows.failover import failover_vm

        _recorded_vm(vm)  # unknown VM: exit 3 before anything in CloudStack is touched
        if submit is not None:
            parameters = {"vm": vm, "mode": mode.value, **blocks.parameters("cloudstack", "agent", "vcenter")}
            parameters |= {"prepare_guest": prepare_guest, "virtio_win": str(virtio_win) if virtio_win else None}
            submit_to_deployment(cli, submit, "failover-vm", parameters, wait=wait, as_json=as_json)
            return
        cloudstack_block = blocks.cloudstack_block()
        preparation: dict[str, Any] = {
            "prepare_guest": prepare_guest,
            "virtio_win": str(virtio_win) if virtio_win else None,
        }
        if mode is FailoverMode.test:
            result = failover_vm(vm, cloudstack_block, mode="test", **preparation)
        else:
            vcenter_block = blocks.vcenter_block()
            with blocks.agent_block() as agent_block:
                result = _with_progress(
                    cli,
                    progress,
                    agent_block,
                    vm,
                    "replication",
                    lambda: failover_vm(vm, cloudstack_block, "live", vcenter_block, agent_block, **preparation),
                )
        if as_json:
            _emit_json(_dump(result))
            return
        table = Table(title=f"{result.mode} failover of {vm}: CloudStack VM {result.destination_vm_id}")
        for column in ("device id", "role", "disk", "catalog id", "volume"):
            table.add_column(column)
        for d in result.devices:
            table.add_row(str(d.device_id), d.role, d.disk_id, str(d.vm_disk_id), d.volume_id)
        cli.out.print(table)


@app.command(epilog=EXIT_CODES)
def cleanup(
    ctx: typer.Context,
    vm: Annotated[str, typer.Argument(metavar="VM", help="VM name, instance UUID or moref.")],
    cloudstack: CloudStackOption = None,
    submit: SubmitOption = None,
    wait: WaitOption = False,
    as_json: JsonOption = False,
) -> None:
    """Roll a test failover back: test VM destroyed, every volume back on the hub. Safe to run again."""
    cli = _cli(ctx)
    with _operation(ctx, f"cleanup {vm}"):
        _quiet_prefect_console(cli.verbose)
        from flows.cleanup import cleanup_failover

        _recorded_vm(vm)
        if submit is not None:
            parameters = {"vm": vm, **BlockChoice(cloudstack=cloudstack).parameters("cloudstack")}
            submit_to_deployment(cli, submit, "cleanup-failover", parameters, wait=wait, as_json=as_json)
            return
        result = cleanup_failover(vm, BlockChoice(cloudstack=cloudstack).cloudstack_block())
        if as_json:
            _emit_json(_dump(result))
            return
        cli.out.print(
            f"{vm}: removed test VM(s) {', '.join(result.removed_vms) or 'none'}; "
            f"{len(result.volumes_on_hub)} volume(s) on the hub"
        )


@app.command(epilog=EXIT_CODES)
def verify(
    ctx: typer.Context,
    point_id: Annotated[int, typer.Argument(metavar="POINT", help="Restore point id (see `vmferry status`).")],
    boot: Annotated[
        bool, typer.Option("--boot", help="Also boot the point read-only in qemu (overlay, no network).")
    ] = False,
    boot_marker: Annotated[
        str, typer.Option(help="Text the guest prints on its serial console once up; '' judges by the firmware.")
    ] = "login:",
    boot_timeout: Annotated[float, typer.Option(min=1, help="Seconds to wait for the boot marker.")] = 180.0,
    repository: RepositoryOption = None,
    submit: SubmitOption = None,
    wait: WaitOption = False,
    as_json: JsonOption = False,
) -> None:
    """Check every file of a restore point (qemu-img check, stored checksum); with --boot, also boot it.

    The boot verdict and a screenshot are recorded as Prefect artifacts of the run.
    """
    cli = _cli(ctx)
    with _operation(ctx, f"verify {point_id}"):
        _quiet_prefect_console(cli.verbose)
        from flows.verify import verify_restore_point

        boot_options = {"boot": boot, "boot_marker": boot_marker, "boot_timeout_s": boot_timeout}
        blocks = BlockChoice(repository=repository)
        if submit is not None:
            parameters = {"point_id": point_id, **boot_options, **blocks.parameters("repository")}
            submit_to_deployment(cli, submit, "verify-restore-point", parameters, wait=wait, as_json=as_json)
            return
        verdicts = verify_restore_point(point_id, blocks.repository_block(), **boot_options)
        if as_json:
            _emit_json([_dump(v) for v in verdicts])
            return
        title = f"restore point {point_id}: every disk reads as written" + (" and it boots" if boot else "")
        table = Table(title=title)
        for column in ("disk", "file", "result"):
            table.add_column(column)
        for verdict in verdicts:
            table.add_row(verdict.disk_id, verdict.file_path, "ok")
        cli.out.print(table)


@app.command(epilog=EXIT_CODES)
def status(
    ctx: typer.Context,
    vms: Annotated[
        list[str] | None, typer.Argument(metavar="[VM]...", help="Only these VMs (default: every VM).")
    ] = None,
    jobs: Annotated[int, typer.Option(help="How many of the newest jobs to show.")] = 20,
    as_json: JsonOption = False,
) -> None:
    """What the catalog records: VMs and their disks, restorable points, recent jobs. Reads the catalog only."""
    cli = _cli(ctx)
    with _operation(ctx, "status"):
        from catalog import default_catalog
        from catalog.inventory import find_vm, list_vms
        from catalog.jobs import list_jobs
        from catalog.restore_points import committed_points, points_in_state

        catalog = default_catalog()
        recorded = [find_vm(catalog, name) for name in vms] if vms else list_vms(catalog)
        ids = {vm.vm_context_id for vm in recorded}
        names = {vm.vm_context_id: vm.name for vm in recorded}
        points = [p for vm in recorded for p in committed_points(catalog, vm.vm_context_id)]
        points += [p for p in points_in_state(catalog, "pending") if p.vm_context_id in ids]
        recent = [j for j in list_jobs(catalog, limit=jobs) if not vms or j.vm_context_id in ids]
        if as_json:
            _emit_json(
                {
                    "vms": [_dump(vm) for vm in recorded],
                    "restore_points": [_dump(p) for p in points],
                    "jobs": [_dump(j) for j in recent],
                }
            )
            return
        _print_status(cli.out, recorded, points, recent, names)


def _print_status(out: Console, recorded: list[Any], points: list[Any], recent: list[Any], names: dict) -> None:
    from vmferry.demo import disks_table, points_table

    vms = Table(title="VMs")
    for column in ("VM", "catalog id", "instance UUID", "moref", "disks", "OS disk"):
        vms.add_column(column)
    for vm in recorded:
        vms.add_row(
            vm.name, str(vm.vm_context_id), vm.instance_uuid, vm.moref, str(len(vm.present_disks())), vm.boot_disk_id
        )
    out.print(vms)
    for vm in recorded:
        out.print(disks_table(vm))
    if points:
        out.print(points_table("restore points (committed, and pending ones still being written)", points))
    else:
        out.print("no restore points")
    table = Table(title="jobs (newest first)")
    for column in ("job", "kind", "VM", "state", "error"):
        table.add_column(column)
    for job in recent:
        vm_name = names.get(job.vm_context_id, str(job.vm_context_id or ""))
        table.add_row(job.id, job.kind, vm_name, job.state, (job.error or "")[:120])
    out.print(table)


# --- lab -----------------------------------------------------------------------------------------------------


def _lab_endpoints(state: dict[str, Any]) -> dict[str, str]:
    vc = state["vcenter"]
    endpoints = {
        "vcenter": f"https://{vc['host']}:{vc['port']}/sdk",
        "vcenter user": vc["user"],
        "vcenter thumbprint": vc["thumbprint"],
    }
    if "cloudstack" in state:
        endpoints["cloudstack"] = state["cloudstack"]["info"]["url"]
    return endpoints


def _print_endpoints(out: Console, title: str, endpoints: dict[str, str]) -> None:
    table = Table(title=title, show_header=False)
    table.add_column("what")
    table.add_column("value")
    for key, value in endpoints.items():
        table.add_row(key, value)
    out.print(table)


@lab_app.command("up", epilog=EXIT_CODES)
def lab_up(
    ctx: typer.Context,
    reseed: Annotated[bool, typer.Option(help="Seed the VMs again even if the lab is already seeded.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Start and seed the lab (vcsim with pgtest1 and db3, the CloudStack simulator), or reuse the running one."""
    cli = _cli(ctx)
    with _operation(ctx, "lab up"):
        from infra.lab.__main__ import ensure_lab_up

        state, reused = ensure_lab_up(reseed=reseed)
        endpoints = _lab_endpoints(state)
        if as_json:
            _emit_json({**endpoints, "reused": reused})
            return
        _print_endpoints(cli.out, f"lab {'reused' if reused else 'started'}", endpoints)


@lab_app.command("down", epilog=EXIT_CODES)
def lab_down(ctx: typer.Context) -> None:
    """Stop the lab and remove its files."""
    with _operation(ctx, "lab down"):
        from infra.lab.__main__ import cmd_down
        from infra.lab.paths import lab_dir

        cmd_down(lab_dir())


@lab_app.command("status", epilog="Exit codes: 0 the lab is running; 1 it is not.")
def lab_status(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Show whether the lab runs and its endpoints; exit 1 when it does not run."""
    cli = _cli(ctx)
    with _operation(ctx, "lab status"):
        from infra.lab.__main__ import load_state
        from infra.lab.cloudstack.process import simulator_alive
        from infra.lab.vcenter import LabVCenter, is_running

        state = load_state()
        running = state is not None and is_running(LabVCenter.from_dict(state["vcenter"]))
        endpoints = _lab_endpoints(state) if state is not None else {}
        cloudstack = state is not None and "cloudstack" in state and simulator_alive(state["cloudstack"]["pid"])
        if as_json:
            _emit_json({"running": running, "cloudstack_running": cloudstack, **endpoints})
        elif running:
            _print_endpoints(cli.out, "lab running" + ("" if cloudstack else " (CloudStack simulator down)"), endpoints)
        else:
            cli.out.print("lab is not running (start it with `vmferry lab up`)")
        if not running:
            raise typer.Exit(EXIT_FAILED)


if __name__ == "__main__":
    app()
