"""Flow benchmark: backup_vm and replicate_vm of a 3-disk lab VM against nbdcopy of the same data, same run.

    .venv/bin/python -m bench.flows [--repeat 3] [--scale 1.0] [--no-cbt] [--heartbeat] [--profile FILE]
        [--hub-profile FILE] [--keep]

It starts its own lab (vcsim), the reference agent, our CloudStack simulator and a Prefect test server, seeds
``bench3`` (disks of 1 GiB, 512 MiB and 256 MiB, about half of each incompressible data, half zeros; ``--scale``
shrinks or grows them), turns changed block tracking on for it as ``discover --enable-cbt`` does (not with
``--no-cbt``: incrementals and syncs then compare by digests) and then, ``--repeat`` times, interleaved so
that background load hits every kind alike:

- ``nbdcopy``: the three flat files (downloaded once) into fresh qemu-nbd qcow2 targets, concurrently, with
  ``--flush`` as the agent flushes its targets: the reference, what the wire and qemu-nbd allow;
- ``full``: ``backup_vm(kind="full")`` (and ``full+hb``, the same with Prefect's flow heartbeat on as under a
  worker, with ``--heartbeat``);
- ``incremental``: 1 % of every disk rewritten (64 KiB pieces at random places), then
  ``backup_vm(kind="incremental")``;
- ``sync``: ``replicate_vm`` of that change into the VM's CloudStack volumes (the ``initial`` replication
  runs once, before the rounds), and ``nochange``: ``replicate_vm`` again with nothing changed.

For each run it prints the wall time and its phases (wall seconds covered by each phase's tasks; the rest is
Prefect, concurrency limits and the flow's own work), bytes read from the source, bytes read back from the
target over the agent-hub link, bytes written, digest bytes sent to the agent, the link total, the copy mode
of every disk (``changed-areas`` when the lab answers QueryChangedDiskAreas, i.e. CBT; else
``digest-compare`` or ``compare``), the agent's and vcsim's CPU seconds, and with ``--profile`` where the
agent's samples fall during the full backups (py-spy on PATH); then medians and the ratios the issue's targets
are stated in. Figures on a shared machine are noisy: compare the ratios, which come from interleaved runs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
PIECE = 64 * 1024
CHANGED_FRACTION = 0.01
DISKS_MIB = (1024, 512, 256)


def human(n: float) -> str:
    return f"{n / MiB:.1f} MiB"


# -- phases -------------------------------------------------------------------------------------------------


@dataclass
class Recorder:
    """Start/end times of wrapped calls per phase, and what the agent reported, for the run in progress."""

    spans: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))
    statuses: list[Any] = field(default_factory=list)
    digest_bytes: int = 0
    agent_cpu: float = 0.0
    vcsim_cpu: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.spans = defaultdict(list)
            self.statuses = []
            self.digest_bytes = 0
            self.agent_cpu = 0.0
            self.vcsim_cpu = 0.0

    def seconds(self, phase: str) -> float:
        """Wall seconds covered by the phase's calls (overlapping calls, e.g. parallel checksums, count once)."""
        total, reach = 0.0, float("-inf")
        for start, end in sorted(self.spans.get(phase, [])):
            if end > reach:
                total += end - max(start, reach)
                reach = end
        return total


def hub_cpu_seconds() -> float:
    """This process and its reaped children (qemu-nbd exports and scans, nbdcopy): the hub's side of a run."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def instrument(recorder: Recorder, agent_pid: int, vcsim_pid: int) -> None:
    """Wrap the flows' module-level names (looked up at call time) so each call is timed under a phase."""
    import flows.backup
    import flows.copy
    import flows.replicate
    import tasks.backup
    import tasks.nbd

    def wrap(module: Any, name: str, phase: str, after: Callable[[Any], None] | None = None) -> None:
        if not hasattr(module, name):
            return
        original = getattr(module, name)
        fn = getattr(original, "fn", None)

        def timed(*args: Any, **kwargs: Any) -> Any:
            agent0 = process_cpu_seconds(agent_pid) if phase == "agent copy" else 0.0
            vcsim0 = process_cpu_seconds(vcsim_pid) if phase == "agent copy" else 0.0
            started = time.monotonic()
            try:
                result = original(*args, **kwargs)
            finally:
                ended = time.monotonic()
                with recorder.lock:
                    recorder.spans[phase].append((started, ended))
                    if phase == "agent copy":
                        recorder.agent_cpu += process_cpu_seconds(agent_pid) - agent0
                        recorder.vcsim_cpu += process_cpu_seconds(vcsim_pid) - vcsim0
            if after is not None:
                after(result)
            return result

        timed.fn = fn  # type: ignore[attr-defined]
        setattr(module, name, timed)

    def wrap_task_function(module: Any, name: str, phase: str) -> None:
        original = getattr(module, name)
        function = original.fn

        @functools.wraps(function)  # Prefect binds the arguments by the signature (task run names use them)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.monotonic()
            try:
                return function(*args, **kwargs)
            finally:
                with recorder.lock:
                    recorder.spans[phase].append((started, time.monotonic()))

        copy = original.with_options()
        copy.fn = timed
        setattr(module, name, copy)

    for module in (flows.backup, flows.replicate):
        wrap(module, "read_vcenter_inventory", "vcenter read")
        wrap(module, "record_vm_inventory", "inventory")
        wrap(module, "open_job", "catalog")
        wrap(module, "close_job", "catalog")
    wrap(flows.backup, "plan_vm_backup", "catalog")
    wrap(flows.backup, "open_restore_point", "catalog")
    wrap(flows.backup, "create_backup_targets", "targets")
    wrap(flows.replicate, "ensure_volume", "volumes")
    wrap(tasks.nbd, "start_export", "exports")  # inside the export tasks, which start at once
    wrap(flows.copy, "submit_agent_job", "agent copy")
    wrap(flows.copy, "follow_agent_job", "agent copy", after=lambda status: recorder.statuses.append(status))
    wrap(flows.copy, "target_digests", "hub digests", after=lambda d: _count_digests(recorder, d))
    wrap(tasks.backup, "content_sha256", "checksums")  # inside the checksum tasks, which may run in parallel
    wrap(flows.backup, "commit_restore_point", "commit")
    # submitted, not called: the time inside each task's function is what is recorded
    wrap_task_function(flows.replicate, "attach_to_hub", "volumes")


def _count_digests(recorder: Recorder, digests: Any) -> None:
    for item in digests.values() if isinstance(digests, dict) else []:
        if item is not None:
            recorder.digest_bytes += len(item.digests)


# -- lab ----------------------------------------------------------------------------------------------------


def bench_vm_spec(scale: float) -> Any:
    from infra.lab.disks import DiskImageSpec, PartitionSpec
    from infra.lab.seed import LabDiskSpec, LabVMSpec

    disks = []
    for unit, size_mib in enumerate(DISKS_MIB):
        size = max(8, int(size_mib * scale))
        disks.append(
            LabDiskSpec(
                label=f"d{unit}",
                bus=0,
                unit=unit,
                boot=unit == 0,
                image=DiskImageSpec(
                    size_bytes=size * MiB,
                    label="dos",
                    label_id=f"0x5b0a{unit:04x}",
                    seed=31 + unit,
                    # Four partitions, each half random data: data spread over the disk, and random_mib stays
                    # below what random.randbytes can make at once.
                    partitions=tuple(
                        PartitionSpec(
                            size_mib=None if part == 3 else size // 4 - 1,
                            type="83",
                            content="random",
                            random_mib=max(1, size // 8 - 1),
                        )
                        for part in range(4)
                    ),
                ),
            )
        )
    return LabVMSpec(name="bench3", controllers=1, disks=tuple(disks))


def disk_keys(lab: Any, vm_name: str) -> list[int]:
    from infra.lab.seed import require_vm, virtual_disks
    from infra.lab.vcenter import session

    with session(lab.vcenter) as si:
        return [int(d.key) for d in virtual_disks(require_vm(si, vm_name))]


def change_disks(lab: Any, vm_name: str, keys: list[int], rng: random.Random) -> int:
    """Rewrite 1 % of every disk in 64 KiB pieces at random places (one upload per disk); return bytes changed."""
    from infra.lab import dsfiles
    from infra.lab.mutate import disk_flat_path, read_disk_bytes
    from infra.lab.vcenter import session

    changed = 0
    for key in keys:
        content = bytearray(read_disk_bytes(lab.vcenter, vm_name, key))
        pieces = max(1, int(len(content) * CHANGED_FRACTION) // PIECE)
        for index in rng.sample(range(len(content) // PIECE), pieces):
            content[index * PIECE : (index + 1) * PIECE] = rng.randbytes(PIECE)
        changed += pieces * PIECE
        with session(lab.vcenter) as si:
            dsfiles.upload(
                lab.vcenter, disk_flat_path(si, vm_name, key), bytes(content), cookie=dsfiles.session_cookie(si)
            )
    return changed


def download_disks(lab: Any, vm_name: str, keys: list[int], directory: Path) -> list[Path]:
    from infra.lab.mutate import read_disk_bytes

    paths = []
    for key in keys:
        path = directory / f"disk-{key}.raw"
        path.write_bytes(read_disk_bytes(lab.vcenter, vm_name, key))
        paths.append(path)
    return paths


# -- the reference ------------------------------------------------------------------------------------------


def nbdcopy_reference(sources: list[Path], workdir: Path) -> Run:
    """Seconds for nbdcopy to copy every flat file into its own fresh qemu-nbd qcow2 target, all at once.

    With ``--flush``, as the agent flushes every target at its end: a restore point must be on disk before it
    is committed, so the reference pays for durability too.
    """
    from bench.copy import identical, start_target

    targets = [start_target(workdir / f"ref-{i}.qcow2", src.stat().st_size) for i, src in enumerate(sources)]
    os.sync()
    cpu = hub_cpu_seconds()
    try:
        started = time.monotonic()
        procs = [
            subprocess.Popen(["nbdcopy", "--flush", str(src), t.url]) for src, t in zip(sources, targets, strict=True)
        ]
        codes = [p.wait() for p in procs]
        seconds = time.monotonic() - started
    finally:
        for t in targets:
            t.stop()
    cpu = hub_cpu_seconds() - cpu  # nbdcopy and qemu-nbd, reaped; not the check below
    if any(codes) or not all(identical(s, t.path) for s, t in zip(sources, targets, strict=True)):
        raise RuntimeError("nbdcopy reference failed or differs from its source")
    for t in targets:
        t.path.unlink()
    return Run("nbdcopy", seconds, {}, hub_cpu=cpu)


# -- runs ---------------------------------------------------------------------------------------------------


@dataclass
class Run:
    kind: str
    seconds: float
    phases: dict[str, float]
    source_read: int = 0
    target_read: int = 0
    written: int = 0
    digests: int = 0
    modes: str = ""
    agent_cpu: float = 0.0
    vcsim_cpu: float = 0.0  # the source's server (vCenter/ESXi's part), on the same CPUs in the lab
    hub_cpu: float = 0.0  # flows, digests, checksums, qemu-nbd (Prefect's API server not included)
    changed: int = 0
    covered: int = 0  # bytes the agent's copies covered (what it read, where the agent does not report reads)

    @property
    def link(self) -> int:
        return self.target_read + self.written + self.digests

    @property
    def cpu(self) -> float:
        return self.hub_cpu + self.agent_cpu + self.vcsim_cpu


PHASES = (
    "vcenter read",
    "inventory",
    "catalog",
    "targets",
    "volumes",
    "exports",
    "hub digests",
    "agent copy",
    "checksums",
    "commit",
)


def measure(kind: str, recorder: Recorder, call: Callable[[], Any], changed: int = 0) -> Run:
    recorder.reset()
    cpu = hub_cpu_seconds()
    started = time.monotonic()
    call()
    seconds = time.monotonic() - started
    hub_cpu = hub_cpu_seconds() - cpu
    run = Run(kind, seconds, {p: recorder.seconds(p) for p in PHASES if recorder.spans.get(p)}, changed=changed)
    run.agent_cpu = recorder.agent_cpu
    run.hub_cpu = hub_cpu
    run.vcsim_cpu = recorder.vcsim_cpu
    run.digests = recorder.digest_bytes
    modes = []
    for status in recorder.statuses:
        for disk in status.disks:
            run.source_read += getattr(disk, "bytes_read", 0) or 0
            run.target_read += getattr(disk, "target_bytes_read", 0) or 0
            run.written += disk.bytes_written
            run.covered += disk.bytes_total
            modes.append(disk.mode or "?")
    run.modes = ",".join(modes)
    return run


def show(run: Run) -> None:
    phases = " ".join(f"{name} {secs:.2f}" for name, secs in run.phases.items())
    cpu = f" CPU {run.cpu:.2f} s (hub {run.hub_cpu:.2f})"
    if run.agent_cpu > 0:
        per_cpu = (run.source_read or run.covered) / MiB / run.agent_cpu
        cpu += f", agent {run.agent_cpu:.2f} CPU s ({per_cpu:.0f} MiB read/CPU s), vcsim {run.vcsim_cpu:.2f} CPU s"
    print(
        f"  {run.kind:11s} {run.seconds:6.2f} s  [{phases}]  read {human(run.source_read)}, target read "
        f"{human(run.target_read)}, written {human(run.written)}, digests {human(run.digests)}, "
        f"link {human(run.link)} [{run.modes}]{cpu}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--scale", type=float, default=1.0, help="disk size factor (default 1: 1 GiB+512+256 MiB)")
    parser.add_argument(
        "--heartbeat",
        action="store_true",
        help="each round also runs the full backup with Prefect's flow heartbeat on, as under a worker",
    )
    parser.add_argument("--no-replication", action="store_true", help="backups only")
    parser.add_argument(
        "--no-cbt",
        action="store_true",
        help="leave changed block tracking off: incrementals and syncs read every source byte (digest compare)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="record the agent with py-spy (on PATH) during the full backups: collapsed stacks to this file",
    )
    parser.add_argument(
        "--hub-profile",
        type=Path,
        default=None,
        help="one extra full backup and one extra no-change sync (round 1, not in the medians) under cProfile: "
        "this process's flow thread, stats to FILE and FILE.nochange, the top functions printed",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--dir", type=Path, default=None, help="parent of the temporary directory")
    args = parser.parse_args(argv)
    for tool in ("qemu-img", "qemu-nbd", "nbdcopy"):
        if shutil.which(tool) is None:
            print(f"{tool} not found", file=sys.stderr)
            return 2
    workdir = Path(tempfile.mkdtemp(prefix="vmferry-bench-flows-", dir=args.dir))
    os.environ["PREFECT_HOME"] = str(workdir / "prefect")
    os.environ.pop("PREFECT_API_URL", None)
    os.environ["VMFERRY_CATALOG_URL"] = f"sqlite:///{workdir / 'catalog.db'}"
    os.environ.setdefault("VMFERRY_NBD_PORT_RANGE", "21100-21199")
    try:
        with harness():
            return run_bench(args, workdir)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def harness() -> Iterator[None]:
    import prefect.settings as ps
    from prefect.testing.utilities import prefect_test_harness

    off = ["SERVER_ANALYTICS_ENABLED", "LOGGING_TO_API_ENABLED"] + [
        f"API_SERVICES_{name}_ENABLED"
        for name in ("SCHEDULER", "LATE_RUNS", "FOREMAN", "TRIGGERS", "EVENT_PERSISTER", "TASK_RUN_RECORDER")
    ]
    updates: dict[Any, Any] = {getattr(ps, "PREFECT_" + n): False for n in off}
    updates[ps.PREFECT_FLOWS_HEARTBEAT_FREQUENCY] = None
    # A shared machine under load can take minutes to start a server: waiting is cheaper than a failed bench.
    with ps.temporary_settings(updates), prefect_test_harness(server_startup_timeout=600):
        yield


@contextlib.contextmanager
def profiling(out: Path | None, pid: int, round_: int) -> Iterator[None]:
    """py-spy sampling the agent (all threads, without stopping it) while the block runs."""
    if out is None:
        yield
        return
    path = out.with_name(f"{out.stem}-{round_ + 1}{out.suffix}")
    argv = ["py-spy", "record", "--pid", str(pid), "--rate", "200", "--nonblocking", "--format", "raw", "-o", str(path)]
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # attached before the run starts
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
    if path.exists():
        print_profile(path)


def print_profile(path: Path, top: int = 12) -> None:
    """Where the agent's samples end (self time, by function), from py-spy's collapsed stacks."""
    leaves: dict[str, int] = defaultdict(int)
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1]
        leaves[leaf.split(" (")[0] + " (" + leaf.rsplit("/", 1)[-1] if "/" in leaf else leaf] += int(count)
        total += int(count)
    print(f"    agent profile ({total} samples, self time):")
    for leaf, count in sorted(leaves.items(), key=lambda item: -item[1])[:top]:
        print(f"      {count / max(total, 1):6.1%}  {leaf}")


def hub_profiled(out: Path, call: Callable[[], Any], top: int = 25, kind: str = "full") -> None:
    """Run ``call`` under cProfile (the calling thread: the flow and the tasks it calls directly) and print
    where its wall time went, by cumulative time, our code and the Prefect calls it waits in."""
    import cProfile
    import pstats

    profile = cProfile.Profile(time.perf_counter)
    started = time.monotonic()
    profile.enable()
    try:
        call()
    finally:
        profile.disable()
    print(f"  {kind}+prof {time.monotonic() - started:6.2f} s (cProfile on; not in the medians); stats in {out}")
    profile.dump_stats(out)
    stats = pstats.Stats(str(out))
    stats.sort_stats("cumulative").print_stats(top)


def heartbeat_cost(repeat: int = 8) -> None:
    """An empty flow with Prefect's flow heartbeat off and on, interleaved: the heartbeat's end-of-run wait alone.

    Prefect 3.8's sync flow engine stops its heartbeat thread at the end of every run and joins it; the thread
    sleeps in 1 s steps, so a run ends up to a second late (uniformly: half a second on average).
    """
    import prefect.settings as ps
    from prefect import flow

    @flow(name="bench-empty")
    def empty() -> None:
        return None

    empty()  # warm up: the first flow run of a process registers the flow
    seconds: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(repeat):
        for on in (False, True):
            with ps.temporary_settings({ps.PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 30 if on else None}):
                started = time.monotonic()
                empty()
                seconds[on].append(time.monotonic() - started)
    off, on = statistics.median(seconds[False]), statistics.median(seconds[True])
    print(f"empty flow run: heartbeat off {off:.2f} s, on {on:.2f} s (medians of {repeat}): +{on - off:.2f} s per run")


def run_bench(args: argparse.Namespace, workdir: Path) -> int:
    from blocks.agent import Agent
    from blocks.repository import BackupRepository
    from blocks.vcenter import VCenter
    from flows.backup import backup_vm
    from flows.discover import discover
    from flows.replicate import replicate_vm
    from infra.lab.agent import start_agent
    from infra.lab.cloudstack import CloudStackSimulator
    from infra.lab.dsfiles import session_cookie
    from infra.lab.fixtures import running_lab
    from infra.lab.seed import seed_vm
    from infra.lab.vcenter import session
    from vmferry.cli.selection import lab_cloudstack_block

    t0 = time.monotonic()
    with contextlib.ExitStack() as stack:
        lab = stack.enter_context(running_lab(workdir / "lab"))
        spec = bench_vm_spec(args.scale)
        with session(lab.vcenter) as si:
            seed_vm(si, lab.vcenter, spec, lab.workdir / spec.name, session_cookie(si))
        agent = start_agent(lab.vcenter, workdir / "agent")
        stack.callback(agent.stop)
        sim = stack.enter_context(CloudStackSimulator(workdir / "cloudstack", job_delay=0.02))
        # The demo's block for the lab's CloudStack, polling its async jobs as fast as the tests do.
        cloud = lab_cloudstack_block(dataclasses.asdict(sim.info())).model_copy(update={"poll_interval": 0.01})
        vc = lab.vcenter
        vcenter = VCenter(host=vc.host, port=vc.port, username=vc.user, password=vc.password, thumbprint=vc.thumbprint)
        agent_block = Agent(url=agent.url, token=agent.token)
        repository = BackupRepository(name="bench", path=str(workdir / "repository"))
        if not args.no_cbt:
            (recorded,) = discover(vcenter, [spec.name], enable_cbt=True)
            if not recorded.cbt_enabled:
                raise RuntimeError(f"CBT did not come on for {spec.name}")
        keys = disk_keys(lab, spec.name)
        sources = download_disks(lab, spec.name, keys, workdir)
        sizes = [p.stat().st_size for p in sources]
        print(
            f"lab ready in {time.monotonic() - t0:.0f} s: {spec.name} disks {', '.join(human(s) for s in sizes)}; "
            f"{os.cpu_count()} CPUs; load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        recorder = Recorder()
        instrument(recorder, agent.process.pid, lab.vcenter.pid)
        if args.heartbeat:
            heartbeat_cost()
        rng = random.Random(7)
        runs: dict[str, list[Run]] = defaultdict(list)

        def record(run: Run) -> None:
            runs[run.kind].append(run)
            show(run)

        if not args.no_replication:
            record(measure("initial", recorder, lambda: replicate_vm(spec.name, cloud, agent_block, vcenter)))
        for round_ in range(args.repeat):
            print(f"round {round_ + 1}", flush=True)
            record(nbdcopy_reference(sources, workdir))
            with profiling(args.profile, agent.process.pid, round_):
                record(
                    measure(
                        "full", recorder, lambda: backup_vm(spec.name, repository, agent_block, vcenter, kind="full")
                    )
                )
            if args.hub_profile is not None and round_ == 0:
                full = lambda: backup_vm(spec.name, repository, agent_block, vcenter, kind="full")  # noqa: E731
                hub_profiled(args.hub_profile, full)
            if args.heartbeat:
                import prefect.settings as ps

                # The flow engine reads the setting when a run starts; the minimum interval is 30 s.
                with ps.temporary_settings({ps.PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 30}):
                    record(
                        measure(
                            "full+hb",
                            recorder,
                            lambda: backup_vm(spec.name, repository, agent_block, vcenter, kind="full"),
                        )
                    )
            changed = change_disks(lab, spec.name, keys, rng)
            record(
                measure(
                    "incremental",
                    recorder,
                    lambda: backup_vm(spec.name, repository, agent_block, vcenter, kind="incremental"),
                    changed,
                )
            )
            if not args.no_replication:
                record(measure("sync", recorder, lambda: replicate_vm(spec.name, cloud, agent_block, vcenter), changed))
                record(measure("nochange", recorder, lambda: replicate_vm(spec.name, cloud, agent_block, vcenter)))
                if args.hub_profile is not None and round_ == 0:
                    nochange = lambda: replicate_vm(spec.name, cloud, agent_block, vcenter)  # noqa: E731
                    hub_profiled(args.hub_profile.with_suffix(".nochange"), nochange, kind="nochange")
        summarise(runs)
    return 0


def summarise(runs: dict[str, list[Run]]) -> None:
    def med(kind: str, get: Callable[[Run], float] = lambda r: r.seconds) -> float:
        values = [get(r) for r in runs.get(kind, [])]
        return statistics.median(values) if values else float("nan")

    print("medians:")
    for kind, kind_runs in runs.items():
        phases = {p: med(kind, lambda r, p=p: r.phases.get(p, 0.0)) for p in kind_runs[0].phases}
        shown = " ".join(f"{p} {s:.2f}" for p, s in phases.items())
        cpu = med(kind, lambda r: r.cpu)
        print(f"  {kind:11s} {med(kind):6.2f} s  [{shown}]  link {human(med(kind, lambda r: r.link))}  CPU {cpu:.2f} s")
    ref, full, incr = med("nbdcopy"), med("full"), med("incremental")
    print(
        f"CPU seconds (this process and reaped children, agent, vcsim): full / nbdcopy "
        f"{med('full', lambda r: r.cpu) / med('nbdcopy', lambda r: r.cpu):.2f}, incremental / full "
        f"{med('incremental', lambda r: r.cpu) / med('full', lambda r: r.cpu):.2f}; load {os.getloadavg()[0]:.1f}"
    )
    ratios = [
        full / ref
        for full, ref in zip([r.seconds for r in runs["full"]], [r.seconds for r in runs["nbdcopy"]], strict=False)
    ]
    print(
        f"full / nbdcopy: median {full / ref:.2f} (per round {', '.join(f'{x:.2f}' for x in ratios)}); "
        f"target: full <= 2 x nbdcopy + 1 s = {2 * ref + 1:.2f} s -> {'met' if full <= 2 * ref + 1 else 'NOT met'}"
    )
    if runs.get("incremental"):
        run = runs["incremental"][-1]
        cbt = "CBT" if "changed-areas" in run.modes else "no CBT"
        budget = 1.1 * run.changed + run.digests
        print(
            f"incremental / full: {incr / full:.2f} (target <= 0.30: {'met' if incr <= 0.3 * full else 'NOT met'}; "
            f"{cbt}); read from source {human(med('incremental', lambda r: r.source_read))} (full: "
            f"{human(med('full', lambda r: r.source_read))}), from target {human(run.target_read)}; link "
            f"{human(run.link)} for {human(run.changed)} changed + {human(run.digests)} digests (target <= "
            f"{human(budget)}: {'met' if run.link <= budget else 'NOT met'})"
        )
    if runs.get("nochange"):
        nochange = med("nochange")
        digest = med("nochange", lambda r: r.phases.get("hub digests", 0.0))
        print(
            f"no-change sync: {nochange:.2f} s, of which hub digests {digest:.2f} s (target <= 1.5 s + digest pass: "
            f"{'met' if nochange <= 1.5 + digest else 'NOT met'}); changed sync {med('sync'):.2f} s"
        )


if __name__ == "__main__":
    raise SystemExit(main())
