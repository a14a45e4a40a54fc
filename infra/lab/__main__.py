"""`python -m infra.lab up|down|status|build`: a lab vCenter that outlives the command that started it.

The running lab is described in $VMFERRY_LAB_DIR/lab.json (default: the per-user data dir's vmferry/lab).
It holds vcsim's fixed lab credentials, which protect nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from infra.lab.build import ensure_vcsim_binary
from infra.lab.cloudstack.process import simulator_alive, start_simulator_process, stop_simulator_pid
from infra.lab.paths import lab_dir
from infra.lab.seed import seed_lab
from infra.lab.vcenter import LabVCenter, is_running, start_vcsim, stop_vcsim

STATE_FILE = "lab.json"
VCENTER_DIR = "vcenter"
SEED_DIR = "seed"
CLOUDSTACK_DIR = "cloudstack"


def _state_path(root: Path) -> Path:
    return root / STATE_FILE


def load_state(root: Path | None = None) -> dict[str, Any] | None:
    path = _state_path(root or lab_dir())
    if not path.is_file():
        return None
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except ValueError:
        return None
    return state


def running_lab_vcenter(root: Path | None = None) -> LabVCenter | None:
    """The lab started by `up`, if it is still running."""
    state = load_state(root)
    if state is None:
        return None
    lab = LabVCenter.from_dict(state["vcenter"])
    return lab if is_running(lab) else None


def write_state(root: Path, state: dict[str, Any]) -> None:
    tmp = _state_path(root).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(_state_path(root))


def _teardown(root: Path, state: dict[str, Any] | None) -> None:
    if state is not None:
        stop_vcsim(LabVCenter.from_dict(state["vcenter"]))
        if "cloudstack" in state:
            stop_simulator_pid(state["cloudstack"]["pid"])
        if "agent" in state:  # `lab up --deployable`'s long-lived agent
            from infra.lab.deployable import stop_agent

            stop_agent(state["agent"])
    for name in (VCENTER_DIR, SEED_DIR, CLOUDSTACK_DIR):
        shutil.rmtree(root / name, ignore_errors=True)
    _state_path(root).unlink(missing_ok=True)


def ensure_lab_up(root: Path | None = None, *, reseed: bool = False) -> tuple[dict[str, Any], bool]:
    """Start and seed the lab, or reuse the running one. Returns its state and whether it was reused."""
    root = root or lab_dir()
    state = load_state(root)
    if state is not None and is_running(LabVCenter.from_dict(state["vcenter"])):
        lab = LabVCenter.from_dict(state["vcenter"])
        manifest = root / SEED_DIR / "manifest.json"
        if reseed or not manifest.is_file():
            seed_lab(lab, root / SEED_DIR)
        if "cloudstack" not in state or not simulator_alive(state["cloudstack"]["pid"]):
            state["cloudstack"] = _start_cloudstack(root)
            write_state(root, state)
        return state, True
    # A description without a live process is left over from a crash or reboot.
    _teardown(root, state)
    lab = start_vcsim(root / VCENTER_DIR)
    try:
        seed_lab(lab, root / SEED_DIR)
    except BaseException:
        stop_vcsim(lab)
        raise
    state = {
        "vcenter": lab.to_dict(),
        "manifest": str(root / SEED_DIR / "manifest.json"),
        "cloudstack": _start_cloudstack(root),
    }
    write_state(root, state)
    return state, False


def _start_cloudstack(root: Path) -> dict[str, Any]:
    """The lab's CloudStack simulator; its state lives in memory, so it goes and comes with the lab."""
    shutil.rmtree(root / CLOUDSTACK_DIR, ignore_errors=True)
    simulator = start_simulator_process(root / CLOUDSTACK_DIR, job_delay=0.05)
    return {"pid": simulator.process.pid, "info": simulator.info.to_dict()}


def cmd_up(root: Path, reseed: bool) -> int:
    state, reused = ensure_lab_up(root, reseed=reseed)
    print(json.dumps({**state, "running": True, "reused": reused}, indent=2))
    return 0


def cmd_down(root: Path) -> int:
    state = load_state(root)
    _teardown(root, state)
    print("lab stopped" if state is not None else "lab was not running")
    return 0


def cmd_status(root: Path) -> int:
    state = load_state(root)
    if state is None:
        print(json.dumps({"running": False}))
        return 1
    running = is_running(LabVCenter.from_dict(state["vcenter"]))
    print(json.dumps({**state, "running": running}, indent=2))
    return 0 if running else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.lab", description="vmferry's vCenter lab (vcsim)")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start and seed the lab, or reuse the running one")
    up.add_argument("--reseed", action="store_true", help="seed again even if the lab is already seeded")
    sub.add_parser("down", help="stop the lab and remove its files")
    sub.add_parser("status", help="print the running lab's description (exit 1 if not running)")
    sub.add_parser("build", help="build (or find cached) the patched vcsim binary and print its path")
    args = parser.parse_args(argv)
    root = lab_dir()
    if args.command == "up":
        return cmd_up(root, args.reseed)
    if args.command == "down":
        return cmd_down(root)
    if args.command == "status":
        return cmd_status(root)
    print(ensure_vcsim_binary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
