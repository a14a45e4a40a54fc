"""The ``vmferry`` command: discover, back up, restore, replicate, fail over and clean up VMs from a shell.

Every command runs its flow in this process (the flow run still shows in the Prefect UI of the configured
PREFECT_API_URL). Blocks come from the running lab (``vmferry lab up``) unless saved blocks are named with
``--vcenter/--agent/--repository/--cloudstack``. ``--submit DEPLOYMENT`` on backup and replicate hands the
run to a worker instead.

Exit codes (vmferry/errors.py): 0 success, 1 the operation failed, 2 usage error, 3 something named does not
exist (a VM, a restore point, a disk, a saved block, a deployment), 4 refused (a precondition is not met and
nothing was changed). A run submitted with ``--submit --wait`` ends with the same code as it would in-process.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
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

from vmferry.errors import (
    EXIT_CODES_HELP,
    EXIT_FAILED,
    NotFoundError,
    Refused,
    VmferryError,
    describe,
    exit_code_of,
    label_of,
)

if TYPE_CHECKING:
    from prefect.blocks.core import Block

    from blocks import Agent, BackupRepository, CloudStack, VCenter
    from catalog.inventory import RecordedVM
    from clients.agent import AgentClient

EXIT_CODES = EXIT_CODES_HELP
# The repository the lab demo writes (vmferry/demo.py), so the lab's points are listed and restorable here.
LAB_REPOSITORY_NAME = "demo"

log = logging.getLogger(__name__)
B = TypeVar("B", bound="Block")
T = TypeVar("T")


class NotFound(NotFoundError):
    """Something the operator named does not exist: exit 3."""


class SubmittedRunFailed(VmferryError):
    """A run submitted with --wait did not complete; carries the exit code its error maps to."""

    def __init__(self, message: str, exit_code: int, label: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.label = label


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


def _console(**options: Any) -> Console:
    """A console that prints text as it is: no markup, no emoji codes, no highlighting.

    What we print quotes names, paths and thumbprints; rich would turn ``:AB:`` of a thumbprint into an emoji and
    ``[x]`` of a datastore path into markup, and an operator could no longer copy them.
    """
    return Console(markup=False, emoji=False, highlight=False, **options)


@dataclass
class Cli:
    """Per-invocation state (global options and consoles), kept on the typer context."""

    debug: bool
    verbose: bool
    out: Console
    err: Console = field(default_factory=lambda: _console(stderr=True))


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
    out = _console()
    if not out.is_terminal:
        out = _console(width=160)
    ctx.obj = Cli(debug=debug, verbose=verbose or debug, out=out)


# --- errors and exit codes -------------------------------------------------------------------------------------


@contextmanager
def _operation(ctx: typer.Context, what: str) -> Iterator[None]:
    """Turn any failure into one stderr line and the exit code a script can trust."""
    cli = _cli(ctx)
    try:
        yield
    except (typer.Exit, typer.Abort, typer.TyperException):
        raise
    except KeyboardInterrupt:
        cli.err.print(f"vmferry {what}: interrupted", style="red")
        raise typer.Exit(130) from None
    except Exception as exc:
        if cli.debug:
            traceback.print_exc()
        message = describe(exc)
        code = exit_code_of(exc)
        label = label_of(exc)
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
    bool,
    typer.Option(
        "--wait", help="With --submit: wait for the flow run; its exit code is the one an in-process run would have."
    ),
]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do it without asking (scripts, --submit).")]


def _confirm(yes: bool, question: str, what: str) -> None:
    """Ask on a terminal; without one (scripts, CI), --yes is the only way: refused (exit 4) otherwise."""
    import sys

    if yes:
        return
    if sys.stdin.isatty():
        if typer.confirm(question, default=False):
            return
        raise Refused(f"{what} not confirmed: nothing was changed")
    raise Refused(f"{what} needs confirmation: pass --yes (nothing was changed)")


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

    Without ``wait`` it returns once the run is created (a worker runs it); with it, the run's outcome (what
    the flow published, vmferry/outcome.py) decides the exit code, the same one an in-process run would end
    with, and ``--json`` prints the flow's result.
    """
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    from vmferry.outcome import Outcome, outcome_from_message, read_outcome

    name = deployment if "/" in deployment else f"{flow_name}/{deployment}"
    try:
        run = run_deployment(name=name, parameters=parameters, timeout=None if wait else 0, as_subflow=False)
    except ObjectNotFound as exc:
        raise NotFound(f"no deployment {name!r} on the Prefect server") from exc
    state = run.state.type.value if run.state else "UNKNOWN"
    outcome: Outcome | None = None
    if wait:
        outcome = read_outcome(run.id)
        if outcome is None and not (run.state and run.state.is_completed()):
            outcome = outcome_from_message(run.state.message if run.state and run.state.message else state)
    summary: dict[str, Any] = {"flow_run_id": str(run.id), "flow_run_name": run.name, "deployment": name}
    summary["state"] = state
    if as_json:
        if outcome is not None:
            summary |= {"result": outcome.result} if outcome.ok else {"error": outcome.error}
        _emit_json(summary)
    else:
        cli.out.print(f"flow run {run.name} ({run.id}) of deployment {name}: {state}")
    if wait and not (run.state and run.state.is_completed()):
        assert outcome is not None  # read above for every run that did not complete
        raise SubmittedRunFailed(
            f"flow run {run.name} ({run.id}) ended {state}: {outcome.error}",
            outcome.exit_code or EXIT_FAILED,
            outcome.label or "failed",
        )


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
    enable_cbt: Annotated[
        bool,
        typer.Option(
            "--enable-cbt",
            help="Turn changed block tracking on for the VMs read that have it off (reconfigure, then a snapshot "
            "create/remove so that it takes effect).",
        ),
    ] = False,
    submit: SubmitOption = None,
    wait: WaitOption = False,
    as_json: JsonOption = False,
) -> None:
    """Read VMs and their disks from vCenter into the catalog and print each VM's disks.

    A disk keeps its catalog id across runs; a removed disk is marked absent.
    Without VM names every VM is read, and VMs vCenter no longer has are marked absent.
    Each VM's title says whether changed block tracking is on.
    """
    cli = _cli(ctx)
    with _operation(ctx, "discover"):
        _quiet_prefect_console(cli.verbose)
        blocks = BlockChoice(vcenter=vcenter)
        if submit is not None:
            parameters = {"vms": list(vms) if vms else None, **blocks.parameters("vcenter")}
            if enable_cbt:
                parameters["enable_cbt"] = True
            submit_to_deployment(cli, submit, "discover", parameters, wait=wait, as_json=as_json)
            return
        from flows.discover import discover as discover_flow
        from vmferry.demo import disks_table

        block = blocks.vcenter_block()
        if vms:
            _require_in_vcenter(block, vms)
        recorded = discover_flow(block, list(vms) if vms else None, enable_cbt=enable_cbt)
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
        from flows.restore import restore_disk, restore_files, restore_vm

        point, repository_block = _point_in(point_id, repository, submit)
        blocks = BlockChoice(repository=repository)
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


def _pairs(values: list[str] | None, option: str) -> dict[str, str]:
    """``KEY=VALUE`` options as a dict; the key may hold spaces (port group names often do)."""
    pairs: dict[str, str] = {}
    for value in values or []:
        key, sep, item = value.rpartition("=")
        if not sep or not key or not item:
            raise typer.BadParameter(f"{value!r} is not KEY=VALUE", param_hint=option)
        pairs[key] = item
    return pairs


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
    network: Annotated[
        list[str] | None,
        typer.Option(
            metavar="PORTGROUP=NETWORK_ID",
            help="Map a source port group to a CloudStack network for this VM (adds to the block's network_map). "
            "Repeatable.",
        ),
    ] = None,
    ip: Annotated[
        list[str] | None,
        typer.Option(metavar="MAC=IP", help="Static IP for the source NIC with this MAC address. Repeatable."),
    ] = None,
    progress: ProgressOption = None,
    prepare_guest: Annotated[
        bool, typer.Option(help="Prepare the OS volume for KVM with virt-v2v-in-place before the VM starts.")
    ] = True,
    virtio_win: Annotated[
        Path | None, typer.Option(help="virtio-win driver directory for a Windows guest's preparation.")
    ] = None,
    submit: SubmitOption = None,
    wait: WaitOption = False,
    yes: YesOption = False,
    as_json: JsonOption = False,
) -> None:
    """Bring a replicated VM up in CloudStack: OS volume on device 0, data volumes after it in source order, one
    NIC per source NIC on its mapped network.

    Device ids are read back from CloudStack and checked before the VM starts; any failure undoes every step. A
    source network without a mapping refuses the failover before anything is created. A live failover powers
    the source off (asks first, or --yes); if it fails after that, the source is powered on again. It ends
    active: then `vmferry commit VM` (it lives in CloudStack) or `vmferry revert VM`.
    """
    cli = _cli(ctx)
    blocks = BlockChoice(vcenter=vcenter, agent=agent, cloudstack=cloudstack)
    networking = {
        key: value
        for key, value in (("network_map", _pairs(network, "--network")), ("ip_addresses", _pairs(ip, "--ip")))
        if value
    }
    with _operation(ctx, f"failover {vm}"):
        _quiet_prefect_console(cli.verbose)
        from flows.failover import failover_vm

        _recorded_vm(vm)  # unknown VM: exit 3 before anything in CloudStack is touched
        live = mode is FailoverMode.live
        if live:
            _confirm(yes, f"Power {vm} off in vCenter and run it in CloudStack from now on?", "--mode live")
        if submit is not None:
            parameters = {
                "vm": vm,
                "mode": mode.value,
                **blocks.parameters("cloudstack", "agent", "vcenter"),
                **networking,
            }
            parameters |= {"confirm_live": True} if live else {}
            # only what differs from the flow's defaults, so a deployment's own defaults stay in force
            parameters |= {} if prepare_guest else {"prepare_guest": False}
            parameters |= {"virtio_win": str(virtio_win)} if virtio_win else {}
            submit_to_deployment(cli, submit, "failover-vm", parameters, wait=wait, as_json=as_json)
            return
        cloudstack_block = blocks.cloudstack_block()
        preparation: dict[str, Any] = {
            "prepare_guest": prepare_guest,
            "virtio_win": str(virtio_win) if virtio_win else None,
        }
        if mode is FailoverMode.test:
            result = failover_vm(vm, cloudstack_block, mode="test", **networking, **preparation)
        else:
            vcenter_block = blocks.vcenter_block()
            with blocks.agent_block() as agent_block:
                result = _with_progress(
                    cli,
                    progress,
                    agent_block,
                    vm,
                    "replication",
                    lambda: failover_vm(
                        vm,
                        cloudstack_block,
                        "live",
                        vcenter_block,
                        agent_block,
                        confirm_live=True,
                        **networking,
                        **preparation,
                    ),
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
    """Roll a test failover back: test VM destroyed, every volume left detached. Safe to run again."""
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
        elif not result.did_anything:
            cli.out.print(f"{vm}: nothing to clean up (no test VM, every volume detached)")
        else:
            cli.out.print(
                f"{vm}: removed test VM(s) {', '.join(result.removed_vms) or 'none'}; took "
                f"{len(result.volumes_returned)} volume(s) off the test VM (left detached, ready to sync)"
            )


@app.command(epilog=EXIT_CODES)
def commit(
    ctx: typer.Context,
    vm: Annotated[str, typer.Argument(metavar="VM", help="VM name, instance UUID or moref (failed over live).")],
    cloudstack: CloudStackOption = None,
    submit: SubmitOption = None,
    wait: WaitOption = False,
    as_json: JsonOption = False,
) -> None:
    """Make an active live failover final: the VM lives in CloudStack, its volumes are the CloudStack VM's.

    Replication refuses the VM from now on and its per-VM replication schedules are paused.
    """
    cli = _cli(ctx)
    blocks = BlockChoice(cloudstack=cloudstack)
    with _operation(ctx, f"commit {vm}"):
        _quiet_prefect_console(cli.verbose)
        from flows.live_failover import commit_failover

        _recorded_vm(vm)
        if submit is not None:
            parameters = {"vm": vm, **blocks.parameters("cloudstack")}
            submit_to_deployment(cli, submit, "commit-failover", parameters, wait=wait, as_json=as_json)
            return
        result = commit_failover(vm, blocks.cloudstack_block())
        if as_json:
            _emit_json(_dump(result))
            return
        cli.out.print(
            f"{result.vm}: migrated to CloudStack VM {result.destination_vm_id} (failover {result.failover_id}); "
            f"volumes {', '.join(result.volumes)} are that VM's; replication stopped"
            + (f", paused {', '.join(result.paused_deployments)}" if result.paused_deployments else "")
        )


@app.command(epilog=EXIT_CODES)
def revert(
    ctx: typer.Context,
    vm: Annotated[str, typer.Argument(metavar="VM", help="VM name, instance UUID or moref (failed over live).")],
    cloudstack: CloudStackOption = None,
    vcenter: VCenterOption = None,
    submit: SubmitOption = None,
    wait: WaitOption = False,
    yes: YesOption = False,
    as_json: JsonOption = False,
) -> None:
    """Undo an active live failover: CloudStack VM destroyed, volumes back to replication, source powered on.

    What the VM wrote in CloudStack since the failover is discarded: asks first, or --yes.
    """
    cli = _cli(ctx)
    blocks = BlockChoice(vcenter=vcenter, cloudstack=cloudstack)
    with _operation(ctx, f"revert {vm}"):
        _quiet_prefect_console(cli.verbose)
        from flows.live_failover import revert_failover

        _recorded_vm(vm)
        _confirm(yes, f"Destroy {vm}'s CloudStack VM (discarding what it wrote) and power the source on?", "revert")
        if submit is not None:
            parameters = {"vm": vm, "confirm_revert": True, **blocks.parameters("cloudstack", "vcenter")}
            submit_to_deployment(cli, submit, "revert-failover", parameters, wait=wait, as_json=as_json)
            return
        result = revert_failover(vm, blocks.cloudstack_block(), blocks.vcenter_block(), confirm_revert=True)
        if as_json:
            _emit_json(_dump(result))
            return
        cli.out.print(
            f"{result.vm}: failover {result.failover_id} reverted; CloudStack VM "
            f"{result.removed_vm or '(gone already)'} removed, {len(result.volumes_detached)} volume(s) back to "
            f"replication (detached), source {result.source}"
        )


def _point_in(point_id: int, repository: str | None, submit: str | None) -> tuple[Any, Any]:
    """The point (unknown: exit 3) and the repository block to read it from (None when a deployment names it)."""
    from catalog import default_catalog
    from catalog.restore_points import get_point

    point = get_point(default_catalog(), point_id)
    if submit is not None and repository is None:
        return point, None
    block = BlockChoice(repository=repository).repository_block()
    if block.name != point.repository:
        raise typer.BadParameter(
            f"restore point {point_id} is in repository {point.repository!r}, not {block.name!r}: name its block",
            param_hint="--repository",
        )
    return point, block


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

        _, block = _point_in(point_id, repository, submit)
        boot_options = {"boot": boot, "boot_marker": boot_marker, "boot_timeout_s": boot_timeout}
        if submit is not None:
            parameters = {
                "point_id": point_id,
                **boot_options,
                **BlockChoice(repository=repository).parameters("repository"),
            }
            submit_to_deployment(cli, submit, "verify-restore-point", parameters, wait=wait, as_json=as_json)
            return
        verdicts = verify_restore_point(point_id, block, **boot_options)
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
def prune(
    ctx: typer.Context,
    vm: Annotated[str, typer.Argument(metavar="VM", help="VM name, instance UUID or moref.")],
    keep_last: Annotated[int, typer.Option(min=1, help="Keep the newest N points.")] = 7,
    keep_daily: Annotated[int, typer.Option(min=0, help="Keep the newest point of each of the last N days.")] = 0,
    keep_weekly: Annotated[int, typer.Option(min=0, help="Keep the newest point of each of the last N weeks.")] = 0,
    repository: RepositoryOption = None,
    submit: SubmitOption = None,
    wait: WaitOption = False,
    as_json: JsonOption = False,
) -> None:
    """Remove a VM's restore points beyond a retention policy; a point another one still builds on is kept."""
    cli = _cli(ctx)
    blocks = BlockChoice(repository=repository)
    with _operation(ctx, f"prune {vm}"):
        _quiet_prefect_console(cli.verbose)
        from flows.retention import prune_restore_points
        from vmferry.retention import RetentionPolicy

        _recorded_vm(vm)
        policy = RetentionPolicy(keep_last=keep_last, keep_daily=keep_daily, keep_weekly=keep_weekly)
        if submit is not None:
            parameters = {"vm": vm, "policy": _dump(policy), **blocks.parameters("repository")}
            submit_to_deployment(cli, submit, "prune-restore-points", parameters, wait=wait, as_json=as_json)
            return
        pruned = prune_restore_points(vm, blocks.repository_block(), policy)
        if as_json:
            _emit_json({"vm": vm, "pruned": pruned})
            return
        cli.out.print(
            f"{vm}: pruned restore point(s) {', '.join(map(str, pruned))}" if pruned else f"{vm}: nothing to prune"
        )


@app.command(epilog=EXIT_CODES)
def files(
    ctx: typer.Context,
    point_id: Annotated[int, typer.Argument(metavar="POINT", help="Restore point id (see `vmferry status`).")],
    path: Annotated[str, typer.Argument(metavar="[PATH]", help="Directory inside the partition.")] = "/",
    disk: Annotated[str | None, typer.Option(help="Disk id like disk-2000 (default: the VM's OS disk).")] = None,
    partition: Annotated[
        int | None, typer.Option(help="Partition to list PATH in (default: list the partitions only).")
    ] = None,
    repository: RepositoryOption = None,
    submit: SubmitOption = None,
    wait: WaitOption = False,
    as_json: JsonOption = False,
) -> None:
    """List a restore point's files: the partitions of a disk, or a directory in one (for `restore --file`)."""
    cli = _cli(ctx)
    with _operation(ctx, f"files {point_id}"):
        _quiet_prefect_console(cli.verbose)
        from catalog import default_catalog
        from catalog.inventory import get_vm
        from flows.restore import list_backup_files

        point, block = _point_in(point_id, repository, submit)
        source = disk or get_vm(default_catalog(), point.vm_context_id).boot_disk_id
        if source is None:
            raise typer.BadParameter("the VM has no OS disk recorded: name the disk", param_hint="--disk")
        entry = point.disk(source)  # unknown disk: exit 3
        parameters: dict[str, Any] = {"point_id": point_id, "disk": entry.disk_id, "partition": partition, "path": path}
        if submit is not None:
            parameters |= BlockChoice(repository=repository).parameters("repository")
            submit_to_deployment(cli, submit, "list-backup-files", parameters, wait=wait, as_json=as_json)
            return
        listing = list_backup_files(repository=block, **parameters)
        if as_json:
            _emit_json(_dump(listing))
            return
        if partition is None:
            table = Table(title=f"restore point {point_id}, {entry.disk_id}: partitions (list one with --partition)")
            for column in ("partition", "filesystem", "offset", "size"):
                table.add_column(column)
            for part in listing.partitions:
                table.add_row(str(part.number), part.filesystem or "(not readable)", str(part.offset), str(part.size))
        else:
            table = Table(title=f"restore point {point_id}, {entry.disk_id}, partition {partition}: {path}")
            for column in ("path", "type", "size"):
                table.add_column(column)
            for item in listing.entries:
                table.add_row(item.path, "directory" if item.is_dir else "file", "" if item.is_dir else str(item.size))
        cli.out.print(table)


@app.command(epilog=EXIT_CODES)
def reconcile(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report what would be cleaned; change nothing.")] = False,
    repository: RepositoryOption = None,
    vcenter: VCenterOption = None,
    cloudstack: CloudStackOption = None,
    submit: SubmitOption = None,
    wait: WaitOption = False,
    as_json: JsonOption = False,
) -> None:
    """Clean what no running job owns: qemu-nbd exports, port leases, partial points, agent snapshots, foreign
    volumes on the hub, jobs of crashed runs. Without block options: the lab's (when it runs) and the repository."""
    cli = _cli(ctx)
    blocks = BlockChoice(repository=repository, vcenter=vcenter, cloudstack=cloudstack)
    with _operation(ctx, "reconcile"):
        _quiet_prefect_console(cli.verbose)
        from flows.reconcile import reconcile as reconcile_flow

        if submit is not None:
            parameters = {"dry_run": dry_run, **blocks.parameters("repository", "vcenter", "cloudstack")}
            submit_to_deployment(cli, submit, "reconcile", parameters, wait=wait, as_json=as_json)
            return
        # no lab (or no simulator in it): the sweeps that need no such block still run
        vcenter_block: Any = None
        cloudstack_block: Any = None
        with suppress(LabNotRunning):
            vcenter_block = blocks.vcenter_block()
        with suppress(LabNotRunning):
            cloudstack_block = blocks.cloudstack_block()
        report = reconcile_flow(blocks.repository_block(), vcenter_block, cloudstack_block, dry_run=dry_run)
        if as_json:
            _emit_json(_dump(report))
            return
        rows = report.table()
        if not rows:
            cli.out.print(f"reconcile{' (dry run)' if dry_run else ''}: nothing to clean")
            return
        table = Table(title=f"reconcile{' (dry run)' if dry_run else ''}: {report.summary()}")
        for column in rows[0]:
            table.add_column(column)
        for row in rows:
            table.add_row(*row.values())
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
    """What the catalog records: per VM its state, failover, newest restore point and last sync with their ages;
    VMs and their disks, restorable points, recent jobs with their times. Reads the catalog only."""
    cli = _cli(ctx)
    with _operation(ctx, "status"):
        from catalog import default_catalog
        from catalog.inventory import find_vm, list_vms
        from catalog.jobs import list_jobs
        from catalog.replication import volumes_of_vm
        from catalog.restore_points import committed_points, points_in_state

        catalog = default_catalog()
        recorded = [find_vm(catalog, name) for name in vms] if vms else list_vms(catalog)
        retired = [v for vm in recorded for v in volumes_of_vm(catalog, vm.vm_context_id, retired=True)]
        ids = {vm.vm_context_id for vm in recorded}
        names = {vm.vm_context_id: vm.name for vm in recorded}
        points = [p for vm in recorded for p in committed_points(catalog, vm.vm_context_id)]
        points += [p for p in points_in_state(catalog, "pending") if p.vm_context_id in ids]
        recent = [j for j in list_jobs(catalog, limit=jobs) if not vms or j.vm_context_id in ids]
        from vmferry.protection import vm_protection

        protection = [vm_protection(catalog, vm) for vm in recorded]
        if as_json:
            _emit_json(
                {
                    "protection": [_dump(p) for p in protection],
                    "vms": [_dump(vm) for vm in recorded],
                    "restore_points": [_dump(p) for p in points],
                    "jobs": [_dump(j) for j in recent],
                    "retired_volumes": [_dump(v) for v in retired],
                }
            )
            return
        _print_protection(cli.out, protection)
        _print_status(cli.out, recorded, points, recent, names)
        _print_retired_volumes(cli.out, retired)


def _print_retired_volumes(out: Console, retired: list[Any]) -> None:
    """Volumes of disks that are gone: vmferry never writes them again; deleting them is the operator's call."""
    if not retired:
        return
    table = Table(title="retired volumes (their disks are gone; delete them in CloudStack when no longer needed)")
    for column in ("volume", "name", "catalog disk id", "retired at"):
        table.add_column(column)
    for volume in retired:
        table.add_row(volume.volume_id, volume.name or "", str(volume.vm_disk_id), str(volume.retired_at))
    out.print(table)


def _print_protection(out: Console, protection: list[Any]) -> None:
    from vmferry.protection import describe_failover, format_age

    table = Table(title="protection (newest restore point and last complete sync: the recovery points you have)")
    for column in ("VM", "state", "newest point", "point age", "replicated disks", "last sync", "failover"):
        table.add_column(column)
    for p in protection:
        table.add_row(
            p.vm,
            p.state,
            str(p.newest_point_id or "none"),
            format_age(p.newest_point_age_seconds),
            f"{p.replicated_disks}/{p.disks}",
            format_age(p.last_sync_age_seconds),
            describe_failover(p.failover),
        )
    out.print(table)


def _print_status(out: Console, recorded: list[Any], points: list[Any], recent: list[Any], names: dict) -> None:
    from vmferry.demo import disks_table, points_table
    from vmferry.protection import format_time

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
    for column in ("job", "kind", "VM", "state", "started", "finished", "error"):
        table.add_column(column)
    for job in recent:
        vm_name = names.get(job.vm_context_id, str(job.vm_context_id or ""))
        started, finished = format_time(job.created_at), format_time(job.finished_at)
        table.add_row(job.id, job.kind, vm_name, job.state, started, finished, (job.error or "")[:120])
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
    deployable: Annotated[
        bool,
        typer.Option(
            help="Also run a long-lived agent and save the blocks deployments/prefect.yaml names (VCenter, Agent, "
            "CloudStack 'prod', BackupRepository 'main') on the Prefect server of PREFECT_API_URL."
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Start and seed the lab (vcsim with pgtest1 and db3, the CloudStack simulator), or reuse the running one."""
    cli = _cli(ctx)
    with _operation(ctx, "lab up"):
        from infra.lab.__main__ import ensure_lab_up

        state, reused = ensure_lab_up(reseed=reseed)
        endpoints = _lab_endpoints(state)
        if deployable:
            from infra.lab.deployable import lab_up_deployable
            from vmferry.settings import get_settings

            repository = get_settings().data_dir / "repository"
            endpoints |= lab_up_deployable(state, LAB_REPOSITORY_NAME, repository)
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
