"""The `vmferry` command end to end on the lab: exit codes, output, and restored bytes against the checksums."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

COMMANDS = [
    [],
    ["discover"],
    ["backup"],
    ["restore"],
    ["replicate"],
    ["failover"],
    ["cleanup"],
    ["commit"],
    ["revert"],
    ["verify"],
    ["prune"],
    ["files"],
    ["reconcile"],
    ["status"],
    ["lab"],
    ["lab", "up"],
    ["lab", "down"],
    ["lab", "status"],
]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "vmferry")
def test_help_on_every_command(vmferry, command):
    result = vmferry(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.stdout
    if command and command != ["lab"]:
        assert "Exit codes" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["backup"],  # VM missing
        ["backup", "pgtest1", "--kind", "weekly"],
        ["restore", "1", "--to", "out", "--file", "/etc/hostname"],  # --file without --partition
        ["restore", "1", "--to", "out", "--partition", "2"],  # --partition without --file
        ["no-such-command"],
    ],
    ids=["missing-vm", "bad-kind", "file-without-partition", "partition-without-file", "unknown-command"],
)
def test_usage_errors_exit_2(vmferry, args):
    assert vmferry(*args).exit_code == 2


def test_lab_status(vmferry, lab_home, tmp_path, monkeypatch):
    result = vmferry("lab", "status", "--json")
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert status["running"] is True
    assert status["vcenter"].startswith("https://") and status["vcenter"].endswith("/sdk")

    monkeypatch.setenv("VMFERRY_LAB_DIR", str(tmp_path / "no-lab"))
    result = vmferry("lab", "status")
    assert result.exit_code == 1 and "not running" in result.stdout
    result = vmferry("lab", "down")  # nothing to stop: still a success
    assert result.exit_code == 0 and "not running" in result.stdout


@pytest.mark.usefixtures("prefect_backend", "nbd_port_range")
def test_discover_backup_status_restore_on_the_lab(
    vmferry, vmferry_process, lab, lab_home, configured_catalog, tmp_path
):
    """--lab: the CLI takes the lab's vCenter, its agent and repository (lab.json, as `vmferry lab up` writes it)."""
    expected = lab.manifest.vm("pgtest1")
    result = vmferry("discover", "pgtest1", "--lab")
    assert result.exit_code == 0, result.output
    for disk in expected.disks:
        assert f"disk-{disk.device_key}" in result.stdout

    result = vmferry("backup", "pgtest1", "--lab", "--kind", "full", "--progress", "--json")
    assert result.exit_code == 0, result.output
    point = json.loads(result.stdout)
    assert point["kind"] == "full" and point["state"] == "committed" and point["repository"] == "demo"
    assert sorted(d["device_key"] for d in point["disks"]) == sorted(d.device_key for d in expected.disks)
    # the bars (stderr) name every disk, and end at its full size
    for disk in expected.disks:
        assert f"pgtest1 disk-{disk.device_key}" in result.stderr
    assert "64.0/64.0 MiB" in result.stderr

    result = vmferry("status", "--json")
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert [vm["name"] for vm in status["vms"]] == ["pgtest1"]
    assert [p["id"] for p in status["restore_points"]] == [point["id"]]
    assert [(j["kind"], j["state"]) for j in status["jobs"]] == [("backup", "succeeded"), ("discovery", "succeeded")]
    result = vmferry("status")
    assert result.exit_code == 0, result.output
    assert "pgtest1" in result.stdout and "restore points" in result.stdout

    # the whole VM as raw files: each reads exactly as the point's checksum says
    result = vmferry("restore", point["id"], "--lab", "--to", tmp_path / "vm")
    assert result.exit_code == 0, result.output
    checksums = {d["disk_id"]: d["checksum"] for d in point["disks"]}
    restored = {p.stem: sha256_of(p) for p in (tmp_path / "vm").iterdir()}
    assert restored == checksums

    # again into the same place, run as a script would: refused with exit 4 and ONE line on stderr naming the
    # file (no traceback, no class name, none of Prefect's log lines); nothing overwritten
    again = vmferry_process("restore", point["id"], "--lab", "--to", tmp_path / "vm")
    assert again.returncode == 4
    (line,) = again.stderr.splitlines()
    assert line.startswith(f"vmferry restore {point['id']}: refused: ") and "exists" in line
    assert "Error" not in line
    assert {p.stem: sha256_of(p) for p in (tmp_path / "vm").iterdir()} == checksums
    # --debug adds the traceback
    result = vmferry("--debug", "restore", point["id"], "--lab", "--to", tmp_path / "vm")
    assert result.exit_code == 4 and "Traceback" in result.stderr

    # one disk as qcow2, and a single file out of the OS disk's ext4 root
    data = next(d for d in point["disks"] if d["device_key"] != expected.boot_disk_key)
    result = vmferry(
        "restore", point["id"], "--lab", "--to", tmp_path / "disk", "--disk", data["disk_id"], "--format", "qcow2"
    )
    assert result.exit_code == 0, result.output
    from clients.qemu import content_sha256, image_info

    qcow2 = tmp_path / "disk" / f"{data['disk_id']}.qcow2"
    assert image_info(qcow2)["format"] == "qcow2" and content_sha256(qcow2) == data["checksum"]
    result = vmferry(
        "restore", point["id"], "--lab", "--to", tmp_path / "files", "--file", "/etc/hostname", "--partition", 2
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "files" / "etc" / "hostname").read_bytes() == b"pgtest1\n"

    # an unknown disk of a known point is "not found"
    result = vmferry("restore", point["id"], "--lab", "--to", tmp_path / "x", "--disk", "disk-99999")
    assert result.exit_code == 3 and "disk-99999" in result.stderr

    # every flow command can go to a deployment instead: the run carries what the in-process call would have
    # passed, the blocks named on the command line, and the deployment's defaults for the rest
    from flows.cleanup import cleanup_failover
    from flows.discover import discover
    from flows.failover import failover_vm
    from flows.restore import restore_disk, restore_files, restore_vm

    boot = f"disk-{expected.boot_disk_key}"
    out = str(tmp_path / "w")
    for flow, defaults, args, parameters in [
        (discover, {"vcenter": "prod"}, ["discover", "pgtest1"], {"vms": ["pgtest1"]}),
        (
            restore_vm,
            {"repository": "main"},
            ["restore", point["id"], "--to", out],
            {"point_id": point["id"], "destination_dir": out, "image_format": "raw", "overwrite": False},
        ),
        (
            restore_disk,
            {"repository": "main"},
            ["restore", point["id"], "--to", out, "--disk", data["disk_id"], "--format", "qcow2", "--overwrite"],
            {
                "point_id": point["id"],
                "disk": data["disk_id"],
                "destination": f"{out}/{data['disk_id']}.qcow2",
                "image_format": "qcow2",
                "overwrite": True,
            },
        ),
        (
            restore_files,
            {"repository": "main"},
            ["restore", point["id"], "--to", out, "--file", "/etc/hostname", "--partition", 2],
            {
                "point_id": point["id"],
                "disk": boot,
                "partition": 2,
                "paths": ["/etc/hostname"],
                "destination_dir": out,
                "overwrite": False,
            },
        ),
        (
            failover_vm,
            {"cloudstack": "prod", "agent": "prod", "vcenter": "prod"},
            ["failover", "pgtest1", "--mode", "live", "--cloudstack", "dr", "--yes"],
            {"vm": "pgtest1", "mode": "live", "cloudstack": "dr", "confirm_live": True},
        ),
        (
            failover_vm,
            {"cloudstack": "prod", "agent": "prod", "vcenter": "prod"},
            ["failover", "pgtest1", "--network", "VM Network=net-1", "--ip", "00:50:56:aa:bb:cc=10.0.0.5"],
            {
                "vm": "pgtest1",
                "mode": "test",
                "network_map": {"VM Network": "net-1"},
                "ip_addresses": {"00:50:56:aa:bb:cc": "10.0.0.5"},
            },
        ),
        (cleanup_failover, {"cloudstack": "prod"}, ["cleanup", "pgtest1"], {"vm": "pgtest1"}),
    ]:
        run = submitted_run(vmferry, flow, defaults, args)
        assert run.parameters == {**defaults, **parameters}, args
    assert not (tmp_path / "w").exists()  # nothing ran here


@pytest.mark.usefixtures("prefect_backend")
def test_unknown_names_exit_3(vmferry, lab_home, configured_catalog, tmp_path):
    for args, named in [
        (["discover", "no-such-vm", "--lab"], "no-such-vm"),
        (["backup", "no-such-vm", "--lab"], "no-such-vm"),
        (["failover", "no-such-vm"], "no-such-vm"),
        (["cleanup", "no-such-vm"], "no-such-vm"),
        (["status", "no-such-vm"], "no-such-vm"),
        (["restore", "999999", "--to", tmp_path / "out"], "999999"),
        (["verify", "999999", "--boot"], "999999"),
        (["backup", "pgtest1", "--lab", "--vcenter", "no-such-block", "--agent", "no-such-block"], "no-such-block"),
    ]:
        result = vmferry(*args)
        assert result.exit_code == 3, (args, result.output)
        assert named in result.stderr and "not found" in result.stderr
        assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("nbd_port_range")
def test_backup_and_restore_with_saved_blocks(vmferry, lab, saved_blocks, configured_catalog, tmp_path):
    """--vcenter/--agent/--repository load saved Prefect blocks (here: the lab's, saved on the test server)."""
    names = saved_blocks
    result = vmferry(
        "backup", "db3", "--vcenter", names["vcenter"], "--agent", names["agent"],
        "--repository", names["repository"], "--no-progress", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    point = json.loads(result.stdout)
    assert point["repository"] == names["repository"] and len(point["disks"]) == 3
    assert result.stderr == ""  # no bars, no Prefect log lines

    # the point lives in that repository: restoring it from the lab's one is a usage error
    assert vmferry("restore", point["id"], "--lab", "--to", tmp_path / "wrong").exit_code == 2
    result = vmferry("restore", point["id"], "--to", tmp_path / "out", "--repository", names["repository"], "--json")
    assert result.exit_code == 0, result.output
    restored = {Path(row["path"]).stem: sha256_of(Path(row["path"])) for row in json.loads(result.stdout)}
    assert restored == {d["disk_id"]: d["checksum"] for d in point["disks"]}

    # an incremental where the VM has no chain (a new repository) is refused: exit 4, the reason names the VM
    other = f"{names['repository']}-2"
    from blocks import BackupRepository

    BackupRepository(name=other, path=str(tmp_path / "other")).save(other)
    result = vmferry(
        "backup", "db3", "--kind", "incremental", "--vcenter", names["vcenter"], "--agent", names["agent"],
        "--repository", other,
    )  # fmt: skip
    assert result.exit_code == 4, result.output
    assert "db3" in result.stderr and "Traceback" not in result.stderr


def submitted_run(vmferry, flow, defaults: dict, args: list):
    """``vmferry ARGS --submit`` to a deployment of ``flow`` made for it; the flow run it created (then removed)."""
    from prefect.client.orchestration import get_client

    deployment_id = flow.to_deployment(name="cli-submit-each", parameters=defaults).apply()
    try:
        result = vmferry(*args, "--submit", "cli-submit-each", "--json")
        assert result.exit_code == 0, result.output
        submitted = json.loads(result.stdout)
        assert submitted["deployment"] == f"{flow.name}/cli-submit-each" and submitted["state"] == "SCHEDULED"
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(submitted["flow_run_id"])
            assert run.deployment_id == deployment_id
            client.delete_flow_run(run.id)  # no worker here: nothing would ever run it
        return run
    finally:
        with get_client(sync_client=True) as client:
            client.delete_deployment(deployment_id)


@pytest.mark.usefixtures("prefect_backend")
def test_submit_creates_a_flow_run_of_the_deployment(vmferry, configured_catalog):
    """--submit goes through run_deployment: a scheduled run of that deployment with the given parameters."""
    from prefect.client.orchestration import get_client

    from flows.backup import backup_vm

    defaults = {"repository": "main", "agent": "prod", "vcenter": "prod"}
    deployment_id = backup_vm.to_deployment(name="cli-submit-test", parameters=defaults).apply()
    result = vmferry(
        "backup", "pgtest1", "--kind", "full", "--repository", "other", "--submit", "cli-submit-test", "--json"
    )
    assert result.exit_code == 0, result.output
    submitted = json.loads(result.stdout)
    assert submitted["deployment"] == "backup-vm/cli-submit-test" and submitted["state"] == "SCHEDULED"
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(submitted["flow_run_id"])
        assert run.deployment_id == deployment_id
        # the block named on the command line overrides the deployment's; its defaults fill the rest
        assert run.parameters == {
            "vm": "pgtest1",
            "kind": "full",
            "repository": "other",
            "agent": "prod",
            "vcenter": "prod",
        }
        client.delete_flow_run(run.id)  # no worker here: nothing would ever run it
        client.delete_deployment(deployment_id)

    result = vmferry("replicate", "pgtest1", "--submit", "no-such-deployment")
    assert result.exit_code == 3 and "replicate-vm/no-such-deployment" in result.stderr
