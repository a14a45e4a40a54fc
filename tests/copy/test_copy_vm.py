"""Real vcsim, real agent process, real qemu-nbd: every disk of a VM lands on its own target, byte for byte."""

from __future__ import annotations

import http.server
import os
import signal
import threading
import time

import httpx
import pytest

from blocks.agent import Agent
from catalog.exports import exports_for_job
from catalog.jobs import list_jobs
from clients.agent import AgentError, AgentJobFailed, AgentUnreachable
from clients.qemu import create_qcow2, start_qemu_nbd, stop_qemu_nbd
from common import digests
from common.contract import BlockDigests, JobRequest, JobStatus, Target
from flows.copy import copy_vm_disks
from flows.discover import discover
from infra.lab.agent import start_agent
from infra.lab.mutate import read_disk_bytes, write_disk_bytes
from tests.copy.helpers import (
    assert_nothing_left,
    our_qemu_nbd_pids,
    qcow2_targets,
    source_facts,
    target_facts,
    vm_snapshot_names,
)
from tests.databases import CATALOG_BACKENDS
from vmferry.targets import PreflightError

pytestmark = pytest.mark.usefixtures("prefect_backend", "nbd_port_range")


@pytest.fixture
def discovered(lab_vcenter_block, configured_catalog):
    return {vm.name: vm for vm in discover(lab_vcenter_block, ["pgtest1", "db3"])}


@pytest.mark.parametrize("catalog_url", CATALOG_BACKENDS, indirect=True)
@pytest.mark.parametrize("vm_name", ["pgtest1", "db3"])
def test_every_disk_lands_on_its_own_target(
    vm_name, lab, discovered, agent_block, lab_vcenter_block, configured_catalog, tmp_path
):
    vm = discovered[vm_name]
    targets = qcow2_targets(vm, tmp_path / "targets")
    status = copy_vm_disks(vm_name, targets, agent_block, lab_vcenter_block)

    assert status.state == "succeeded" and status.snapshot_removed
    assert sorted(d.device_key for d in status.disks) == sorted(d.device_key for d in vm.present_disks())
    sources = {t.device_key: source_facts(lab, vm_name, t.device_key, tmp_path) for t in targets}
    assert len({sha for sha, _ in sources.values()}) == len(targets)  # the lab's disks really differ
    assert len({table for _, table in sources.values()}) == len(targets)
    for target in targets:
        assert target_facts(target.file_path, tmp_path) == sources[target.device_key], target.disk_id
    # zeros were skipped: less was written than the disks hold
    assert sum(d.bytes_written for d in status.disks) < sum(t.capacity_bytes for t in targets)
    # the export ledger linked every export to its own disk, and everything was stopped and released
    (job,) = [j for j in list_jobs(configured_catalog) if j.kind == "copy"]
    exports = exports_for_job(configured_catalog, job.id)
    assert sorted(e.vm_disk_id for e in exports) == sorted(t.vm_disk_id for t in targets)
    assert {e.file_path for e in exports} == {str(t.file_path) for t in targets}
    assert {e.state for e in exports} == {"stopped"}
    assert_nothing_left(configured_catalog, lab, vm_name, [t.file_path for t in targets])


def _unchanged(path) -> bool:
    """A fresh qcow2 that nothing wrote to maps as one unallocated run."""
    import json
    import subprocess

    out = subprocess.run(["qemu-img", "map", "--output=json", str(path)], capture_output=True, check=True)
    return all(not extent["data"] for extent in json.loads(out.stdout))


@pytest.mark.parametrize("fault", ["duplicate-key", "missing-disk", "too-small"])
def test_a_bad_mapping_is_refused_before_a_byte_is_written(
    fault, lab, discovered, agent_block, lab_vcenter_block, configured_catalog, tmp_path
):
    vm = discovered["db3"]
    targets = qcow2_targets(vm, tmp_path / "targets")
    if fault == "duplicate-key":
        targets[1] = targets[1].model_copy(update={"vm_disk_id": targets[0].vm_disk_id})
    elif fault == "missing-disk":
        targets = targets[:-1]
    else:
        small = tmp_path / "small.qcow2"
        create_qcow2(small, 2**20)
        targets[2] = targets[2].model_copy(update={"file_path": small})
    with pytest.raises(PreflightError, match="db3"):
        copy_vm_disks("db3", targets, agent_block, lab_vcenter_block)
    assert all(_unchanged(t.file_path) for t in targets)
    assert_nothing_left(configured_catalog, lab, "db3", [t.file_path for t in targets])


def _served_targets(vm, tmp_path, ports):
    """Targets served by qemu-nbd started here, for requests sent to the agent directly."""
    servers, targets = [], []
    for disk, port in zip(vm.present_disks(), ports, strict=False):
        path = tmp_path / f"{disk.disk_id}.qcow2"
        create_qcow2(path, disk.capacity_bytes)
        server = start_qemu_nbd(path, export_name=disk.disk_id, bind_address="127.0.0.1", port=port)
        servers.append(server)
        targets.append(Target(device_key=disk.device_key, nbd_url=server.url, capacity_bytes=disk.capacity_bytes))
    return servers, targets


@pytest.mark.parametrize("fault", ["missing-disk", "unknown-disk", "too-small", "unreachable", "short-digests"])
def test_the_agent_itself_refuses_a_bad_mapping(fault, lab, discovered, agent_process, tmp_path):
    vm = discovered["db3"]
    servers, targets = _served_targets(vm, tmp_path, range(21300, 21310))
    try:
        if fault == "missing-disk":
            targets = targets[:-1]
        elif fault == "unknown-disk":
            targets[0] = targets[0].model_copy(update={"device_key": 999})
        elif fault == "too-small":
            small = tmp_path / "small.qcow2"
            create_qcow2(small, 2**20)
            servers.append(start_qemu_nbd(small, export_name="small", bind_address="127.0.0.1", port=21320))
            targets[1] = targets[1].model_copy(update={"nbd_url": servers[-1].url})
        elif fault == "short-digests":
            # digests of one block less than the target has: stale, or of another target
            block = 64 * 1024
            count = -(-targets[0].capacity_bytes // block) - 1
            wire = BlockDigests(block_size=block, digests=digests.encode(bytes(32 * count)))
            targets[0] = targets[0].model_copy(update={"block_digests": wire})
        else:
            targets[2] = targets[2].model_copy(update={"nbd_url": "nbd://127.0.0.1:1/none"})
        request = JobRequest(job_id=f"refuse-{fault}", vm=vm.instance_uuid, kind="full", targets=targets)
        with Agent(url=agent_process.url, token=agent_process.token).client() as client:
            with pytest.raises(AgentError, match=r"422.*db3"):
                client.submit(request)
            response = httpx.get(
                f"{agent_process.url}/api/v1/jobs/{request.job_id}",
                headers={"Authorization": f"Bearer {agent_process.token}"},
            )
            assert response.status_code == 404  # no job was created
        assert vm_snapshot_names(lab, "db3") == []
    finally:
        for server in servers:
            stop_qemu_nbd(server.pid, server.file_path)
    assert all(_unchanged(tmp_path / f"{d.disk_id}.qcow2") for d in vm.present_disks())


def test_the_contract_refuses_a_key_twice():
    target = Target(device_key=203, nbd_url="nbd://127.0.0.1:1/a", capacity_bytes=1)
    other = Target(device_key=203, nbd_url="nbd://127.0.0.1:1/b", capacity_bytes=1)
    with pytest.raises(ValueError, match="more than one target"):
        JobRequest(job_id="x", vm="vm-1", kind="full", targets=[target, other])
    with pytest.raises(ValueError, match="more than one disk"):
        JobRequest(job_id="x", vm="vm-1", kind="full", targets=[target, target.model_copy(update={"device_key": 1})])


@pytest.mark.parametrize("by_digests", [True, False], ids=["digest-compare", "plain-compare"])
def test_incremental_writes_only_the_changed_blocks(
    by_digests, lab, discovered, agent_block, lab_vcenter_block, configured_catalog, tmp_path, monkeypatch
):
    monkeypatch.setenv("VMFERRY_COMPARE_BY_DIGESTS", str(by_digests).lower())
    vm = discovered["pgtest1"]
    full = qcow2_targets(vm, tmp_path / "full")
    copy_vm_disks("pgtest1", full, agent_block, lab_vcenter_block)

    data_disk = next(d for d in vm.present_disks() if not d.is_boot)
    change_at, change_len = 20 * 2**20, data_disk.capacity_bytes // 100  # 1% of the disk
    original = read_disk_bytes(lab.vcenter, "pgtest1", data_disk.device_key)[change_at : change_at + change_len]
    write_disk_bytes(lab.vcenter, "pgtest1", data_disk.device_key, change_at, os.urandom(change_len))
    try:
        overlays = qcow2_targets(vm, tmp_path / "incr", backing={t.vm_disk_id: t.file_path for t in full})
        status = copy_vm_disks("pgtest1", overlays, agent_block, lab_vcenter_block, kind="incremental")
        written = {d.device_key: d for d in status.disks}
        # vcsim has no CBT: the hub's digests of each overlay, or (the fallback) the overlay read back
        assert {d.mode for d in status.disks} == {"digest-compare" if by_digests else "compare"}
        for disk in status.disks:
            # the link carried the changed blocks (and digests), not the target; every source byte was read
            assert disk.target_bytes_read == (0 if by_digests else disk.bytes_total)
            assert disk.bytes_read == disk.bytes_total
        granule = 64 * 1024
        assert change_len <= written[data_disk.device_key].bytes_written <= change_len + 2 * granule
        assert all(d.bytes_written == 0 for key, d in written.items() if key != data_disk.device_key)
        for target in overlays:
            # the chain (overlay over the full copy) reads back equal to the changed source
            assert target_facts(target.file_path, tmp_path) == source_facts(lab, "pgtest1", target.device_key, tmp_path)
    finally:
        write_disk_bytes(lab.vcenter, "pgtest1", data_disk.device_key, change_at, original)


def _run_in_thread(function, *args, **kwargs):
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = function(*args, **kwargs)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def _wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the copy to start"
        time.sleep(0.05)


def _copying(catalog) -> bool:
    jobs = [j for j in list_jobs(catalog) if j.kind == "copy" and j.state == "running"]
    return bool(jobs) and any(e.state == "running" for e in exports_for_job(catalog, jobs[0].id))


SLOW = 4 * 2**20  # bytes per second: the lab's disks take several seconds, long enough to kill things mid-copy


def test_agent_killed_mid_copy(lab, discovered, lab_vcenter_block, configured_catalog, tmp_path):
    doomed = start_agent(lab.vcenter, tmp_path / "doomed-agent")
    try:
        vm = discovered["pgtest1"]
        targets = qcow2_targets(vm, tmp_path / "targets")
        block = Agent(url=doomed.url, token=doomed.token)
        thread, outcome = _run_in_thread(
            copy_vm_disks, "pgtest1", targets, block, lab_vcenter_block, bandwidth_limit_bytes_per_second=SLOW
        )
        _wait_for(lambda: vm_snapshot_names(lab, "pgtest1") != [])
        time.sleep(1.0)
        doomed.stop(signal.SIGKILL)
        thread.join(120)
        assert isinstance(outcome.get("error"), AgentUnreachable), outcome
    finally:
        doomed.stop(signal.SIGKILL)
    assert_nothing_left(configured_catalog, lab, "pgtest1", [t.file_path for t in targets])
    (job,) = [j for j in list_jobs(configured_catalog) if j.kind == "copy"]
    assert job.state == "failed" and "did not answer" in job.error


def test_qemu_nbd_killed_mid_copy(lab, discovered, agent_block, lab_vcenter_block, configured_catalog, tmp_path):
    vm = discovered["db3"]
    targets = qcow2_targets(vm, tmp_path / "targets")
    thread, outcome = _run_in_thread(
        copy_vm_disks, "db3", targets, agent_block, lab_vcenter_block, bandwidth_limit_bytes_per_second=SLOW
    )
    _wait_for(lambda: _copying(configured_catalog) and len(our_qemu_nbd_pids([t.file_path for t in targets])) == 3)
    time.sleep(1.0)
    victim = our_qemu_nbd_pids([targets[1].file_path])[0]
    os.kill(victim, signal.SIGKILL)
    thread.join(120)
    error = outcome.get("error")
    assert isinstance(error, AgentJobFailed), outcome
    assert error.status.snapshot_removed and "failed" in str(error)
    assert_nothing_left(configured_catalog, lab, "db3", [t.file_path for t in targets])


def test_agent_unreachable(lab, discovered, lab_vcenter_block, configured_catalog, tmp_path):
    vm = discovered["pgtest1"]
    targets = qcow2_targets(vm, tmp_path / "targets")
    nobody = Agent(url="http://127.0.0.1:1", token="x")
    with pytest.raises(AgentUnreachable, match=r"127\.0\.0\.1:1"):
        copy_vm_disks("pgtest1", targets, nobody, lab_vcenter_block)
    assert all(_unchanged(t.file_path) for t in targets)
    assert_nothing_left(configured_catalog, lab, "pgtest1", [t.file_path for t in targets])


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eDp5"}])
def test_requests_without_the_token_are_refused(agent_process, discovered, headers):
    vm = discovered["pgtest1"]
    body = JobRequest(
        job_id="no-token",
        vm=vm.instance_uuid,
        kind="full",
        targets=[
            Target(device_key=d.device_key, nbd_url=f"nbd://127.0.0.1:1/{d.disk_id}", capacity_bytes=1)
            for d in vm.present_disks()
        ],
    ).model_dump(mode="json")
    for method, path, kwargs in (
        ("POST", "/api/v1/jobs", {"json": body}),
        ("GET", "/api/v1/jobs/no-token", {}),
        ("DELETE", "/api/v1/jobs/no-token", {}),
        ("GET", "/api/v1/health", {}),
    ):
        response = httpx.request(method, agent_process.url + path, headers=headers, **kwargs)
        assert response.status_code == 401, (method, path)
    ok = httpx.get(
        f"{agent_process.url}/api/v1/jobs/no-token", headers={"Authorization": f"Bearer {agent_process.token}"}
    )
    assert ok.status_code == 404  # the refused POST created nothing


def test_job_end_is_answered_at_once_to_a_long_poll(lab, discovered, agent_process, tmp_path):
    """GET ?wait= answers when the job finishes or a disk is done, not when the wait runs out; a finished job
    answers at once."""
    vm = discovered["pgtest1"]
    first_port = int(os.environ.get("VMFERRY_TEST_NBD_PORT_RANGE", "21100-21199").split("-")[0]) + 60
    servers, targets = _served_targets(vm, tmp_path, range(first_port, first_port + 10))
    try:
        request = JobRequest(job_id="long-poll", vm=vm.instance_uuid, kind="full", targets=targets)
        with Agent(url=agent_process.url, token=agent_process.token).client() as client:
            client.submit(request)
            done = 0
            status = client.status("long-poll")
            while not status.finished:
                asked = time.monotonic()
                status = client.status("long-poll", wait=25)
                assert time.monotonic() - asked < 25
                now_done = sum(disk.state == "done" for disk in status.disks)
                # each answer came for a reason: the job ended or one more disk is done
                assert status.finished or now_done > done, status
                done = now_done
            assert status.state == "succeeded" and done == len(targets), status
            asked = time.monotonic()
            assert client.status("long-poll", wait=25).finished
            assert time.monotonic() - asked < 5
    finally:
        for server in servers:
            stop_qemu_nbd(server.pid, server.file_path)


def test_a_disk_finishing_early_does_not_make_the_hub_poll(lab, discovered, agent_process, tmp_path):
    """An agent answers a long poll early when one disk of several is done: the hub asks again at once, and
    keeps its poll interval for an agent that answers early with nothing new (an interval of 30 s here would
    make the wait outlast the job by far)."""
    vm = discovered["pgtest1"]
    first_port = int(os.environ.get("VMFERRY_TEST_NBD_PORT_RANGE", "21100-21199").split("-")[0]) + 70
    servers, targets = _served_targets(vm, tmp_path, range(first_port, first_port + 10))
    try:
        request = JobRequest(job_id="early-disk", vm=vm.instance_uuid, kind="full", targets=targets)
        answers = []
        with Agent(url=agent_process.url, token=agent_process.token).client() as client:
            client.submit(request)
            started = time.monotonic()
            status = client.wait("early-disk", timeout=120, poll_interval=30, long_poll=25, on_progress=answers.append)
            assert time.monotonic() - started < 25
        assert status.state == "succeeded" and len(targets) > 1
        assert len(answers) > 1  # at least one answer came early, for a disk, before the job ended
    finally:
        for server in servers:
            stop_qemu_nbd(server.pid, server.file_path)


class _NoLongPollAgent(http.server.BaseHTTPRequestHandler):
    """An agent of an older contract: answers every status request at once, running for the first three."""

    asked = 0

    def do_GET(self) -> None:
        type(self).asked += 1
        state = "running" if type(self).asked <= 3 else "succeeded"
        body = JobStatus(job_id="old", vm="vm", kind="full", state=state).model_dump_json().encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_an_agent_that_ignores_long_polls_is_polled_at_the_interval():
    _NoLongPollAgent.asked = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NoLongPollAgent)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with Agent(url=f"http://127.0.0.1:{server.server_port}", token="t").client() as client:
            started = time.monotonic()
            status = client.wait("old", timeout=30, poll_interval=0.3, long_poll=5)
            elapsed = time.monotonic() - started
    finally:
        server.shutdown()
    assert status.state == "succeeded" and _NoLongPollAgent.asked == 4
    assert 0.9 <= elapsed < 5  # three early "running" answers, each followed by the poll interval, not a flood


def test_jobs_are_idempotent_and_cancellable(lab, discovered, agent_process, tmp_path):
    vm = discovered["db3"]
    servers, targets = _served_targets(vm, tmp_path, range(21330, 21340))
    try:
        request = JobRequest(
            job_id="cancel-me",
            vm=vm.instance_uuid,
            kind="full",
            targets=targets,
            bandwidth_limit_bytes_per_second=2**20,
        )
        with Agent(url=agent_process.url, token=agent_process.token).client() as client:
            first = client.submit(request)
            again = client.submit(request)  # a retried POST gets the same job, not a second snapshot
            assert again.job_id == first.job_id
            with pytest.raises(AgentError, match="409"):
                client.submit(request.model_copy(update={"kind": "incremental"}))
            _wait_for(lambda: client.status("cancel-me").state == "running" and vm_snapshot_names(lab, "db3"))
            client.cancel("cancel-me")
            with pytest.raises(AgentJobFailed, match="cancelled") as failed:
                client.wait("cancel-me", timeout=60)
        status = failed.value.status
        assert status.state == "cancelled" and status.snapshot_removed
        assert vm_snapshot_names(lab, "db3") == []
    finally:
        for server in servers:
            stop_qemu_nbd(server.pid, server.file_path)
