"""The command line's own refusals (a destructive step without --yes where nobody can be asked, a --lab that is
not running): exit 4, the words name the VM (or the lab) and the fix, and nothing was asked of vCenter or
CloudStack."""

from __future__ import annotations

import json
import os
import pty
import select
import socket
import sys
import time

import pytest
from typer.testing import CliRunner

from catalog.failovers import finish_failover, set_destination, start_failover
from catalog.inventory import record_vm
from catalog.jobs import create_job
from tests import factories
from vmferry.errors import EXIT_REFUSED


@pytest.fixture
def vmferry(configured_catalog):
    import prefect  # noqa: F401  (Prefect binds its console handler on first import: not inside an invocation)

    from vmferry.cli import app

    record_vm(configured_catalog, factories.vm(factories.disk(2000), name="web01", uuid="u-web01"))
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


def test_a_live_failover_without_yes(vmferry):
    # no block is named and none is saved: had the refusal not come first, choosing blocks would have failed
    result = vmferry("failover", "web01", "--mode", "live")
    assert result.exit_code == EXIT_REFUSED, result.output
    assert "vmferry failover web01: refused: --mode live for VM 'web01' needs confirmation: pass --yes" in result.stderr


def test_a_revert_without_yes(vmferry, configured_catalog):
    vm = record_vm(configured_catalog, factories.vm(factories.disk(2000), name="web01", uuid="u-web01"))
    failover_id = start_failover(
        configured_catalog, vm.vm_context_id, create_job(configured_catalog, "failover"), "live"
    )
    set_destination(configured_catalog, failover_id, "cs-vm-1")
    finish_failover(configured_catalog, failover_id, "active", "failed-over")
    result = vmferry("revert", "web01")
    assert result.exit_code == EXIT_REFUSED, result.output
    assert "web01: refused: revert of VM 'web01' needs confirmation: pass --yes" in result.stderr


def test_a_lab_whose_vcenter_does_not_answer(vmferry, tmp_path, monkeypatch):
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "lab.json").write_text(json.dumps({"vcenter": {"host": "127.0.0.1", "port": port}}))
    monkeypatch.setenv("VMFERRY_LAB_DIR", str(tmp_path))
    result = vmferry("discover", "web01", "--lab")
    assert result.exit_code == EXIT_REFUSED, result.output
    assert f"refused: --lab: the lab's vCenter at 127.0.0.1:{port} does not answer" in result.stderr
    assert "start the lab again with `vmferry lab up`" in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize("missing", ["agent", "cloudstack"])
def test_a_lab_without_what_the_command_needs(missing, vmferry, lab, agent_process, tmp_path, monkeypatch):
    # the lab's vCenter answers (the session's vcsim); the lab.json lacks the agent, or has no CloudStack simulator
    state: dict = {"vcenter": lab.vcenter.to_dict(), "manifest": str(lab.seed_dir / "manifest.json")}
    if missing == "cloudstack":
        state["agent"] = {"url": agent_process.url, "token": agent_process.token}
    (tmp_path / "lab.json").write_text(json.dumps(state))
    monkeypatch.setenv("VMFERRY_LAB_DIR", str(tmp_path))
    result = vmferry("replicate", "pgtest1", "--lab")
    assert result.exit_code == EXIT_REFUSED, result.output
    fix = "(it starts one)" if missing == "agent" else "no CloudStack simulator: run `vmferry lab up` again"
    assert "refused: --lab: the running lab has no" in result.stderr and fix in result.stderr, result.stderr
    assert "Traceback" not in result.output
    assert vmferry("status", "--json").stdout.count('"kind"') == 0  # no job was opened


def test_a_live_failover_not_confirmed_on_a_terminal(vmferry):
    # a real terminal (a pty) that answers "n": the question is asked, and the answer is a refusal
    pid, fd = pty.fork()
    if pid == 0:  # the child: the command, its stdin and stdout the terminal
        os.execv(sys.executable, [sys.executable, "-m", "vmferry.cli", "failover", "web01", "--mode", "live"])
    seen = b""
    answered = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if not select.select([fd], [], [], 1)[0]:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
        if not answered and b"[y/N]" in seen:
            os.write(fd, b"n\n")
            answered = True
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    text = seen.decode(errors="replace")
    assert answered and os.waitstatus_to_exitcode(status) == EXIT_REFUSED, text
    assert "Power web01 off in vCenter" in text
    assert "refused: --mode live for VM 'web01' not confirmed: nothing was changed" in text, text
