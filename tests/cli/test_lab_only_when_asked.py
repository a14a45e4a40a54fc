"""The command reaches the lab only when asked: no block named and no --lab is a usage error, even with a
running lab described in VMFERRY_LAB_DIR; --lab without a running lab is refused."""

from __future__ import annotations

import pytest

from vmferry.errors import EXIT_REFUSED, EXIT_USAGE

pytestmark = pytest.mark.usefixtures("prefect_backend")


@pytest.mark.parametrize(
    ("args", "options"),
    [
        (["discover", "pgtest1"], ["--vcenter"]),
        (["backup", "pgtest1"], ["--vcenter", "--agent", "--repository"]),
        (["backup", "pgtest1", "--vcenter", "some-block"], ["--agent", "--repository"]),
        (["replicate", "pgtest1"], ["--vcenter", "--agent", "--cloudstack"]),
        (["reconcile", "--dry-run"], ["--repository"]),
    ],
    ids=lambda v: " ".join(v),
)
def test_no_block_and_no_lab_is_a_usage_error(vmferry, lab_home, configured_catalog, args, options):
    result = vmferry(*args)
    assert result.exit_code == EXIT_USAGE, result.output
    (line,) = result.stderr.splitlines()
    assert ": usage error: " in line and "--lab" in line, line
    for option in options:
        assert option in line, line
    # nothing ran: no job was opened, no VM recorded
    assert vmferry("status", "--json").stdout.count('"kind"') == 0


def test_lab_asked_for_but_not_running_is_refused(vmferry, configured_catalog, tmp_path, monkeypatch):
    monkeypatch.setenv("VMFERRY_LAB_DIR", str(tmp_path / "no-lab"))
    result = vmferry("discover", "pgtest1", "--lab")
    assert result.exit_code == EXIT_REFUSED, result.output
    assert "vmferry lab up" in result.stderr and "Traceback" not in result.output


def test_lab_goes_with_this_process_not_with_submit(vmferry, lab_home, configured_catalog):
    result = vmferry("discover", "pgtest1", "--lab", "--submit", "on-demand")
    assert result.exit_code == EXIT_USAGE, result.output
    assert "--lab" in result.stderr and "--submit" in result.stderr


def test_the_command_imports_nothing_of_the_lab():
    """The product runs the lab's command line as a process; importing the command loads no ``infra`` module
    (nor Prefect, which only the commands that run flows load)."""
    import subprocess
    import sys

    probe = "import sys, vmferry.cli; print(sorted({m.split('.')[0] for m in sys.modules} & {'infra', 'prefect'}))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stdout
