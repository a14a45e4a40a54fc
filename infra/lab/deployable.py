"""The lab as production looks to Prefect: the saved blocks the deployments name and a long-lived agent.

``vmferry lab up`` starts the reference agent as a process that outlives the command (recorded in lab.json,
stopped by ``lab down``); ``--deployable`` (or :func:`make_deployable`) also saves, on the Prefect server of
PREFECT_API_URL, the blocks deployments/prefect.yaml names: VCenter ``prod`` (the lab vCenter), Agent
``prod`` (that agent), CloudStack ``prod`` (the lab's simulator) and BackupRepository ``main``. Then
``deployments/deploy.py``, ``prefect worker start --pool vmferry-hub`` and the UI work as the README
documents for production. Existing blocks of those names are replaced: run it against a lab server only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from infra.lab.processes import process_alive, stop_pid
from infra.lab.vcenter import LabVCenter

AGENT_DIR = "agent"
BLOCK_NAMES = {"vcenter": "prod", "agent": "prod", "cloudstack": "prod", "repository": "main"}


def agent_alive(agent: dict[str, Any]) -> bool:
    """The recorded agent process runs (its argv holds its config path: a pid alone proves nothing) and
    answers with its token."""
    if not process_alive(agent["pid"], agent["config"].encode()):
        return False
    try:
        response = httpx.get(
            f"{agent['url']}/api/v1/health", headers={"Authorization": f"Bearer {agent['token']}"}, timeout=2
        )
    except httpx.TransportError:
        return False
    return response.status_code == 200


def ensure_agent(root: Path, state: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The lab's long-lived agent: the recorded one when it still answers, else a new one. Returns it and
    whether it was reused; the caller writes ``state``."""
    from infra.lab.agent import start_agent

    recorded = state.get("agent")
    if recorded and agent_alive(recorded):
        return recorded, True
    if recorded:
        stop_agent(recorded)
    # It outlives this command (nothing waits for it): `lab down` stops it by the pid and config recorded here.
    started = start_agent(LabVCenter.from_dict(state["vcenter"]), root / AGENT_DIR)
    agent = {"pid": started.process.pid, "url": started.url, "token": started.token, "config": str(started.config_path)}
    state["agent"] = agent
    return agent, False


def stop_agent(agent: dict[str, Any]) -> None:
    stop_pid(agent["pid"], agent["config"].encode())


def save_blocks(state: dict[str, Any], repository_name: str, repository_path: Path) -> dict[str, str]:
    """Save the blocks the deployments name (overwriting); returns ``{"VCenter": "prod", ...}``."""
    from blocks import Agent, BackupRepository
    from vmferry.cli.selection import lab_cloudstack_block, lab_vcenter_block

    saved = {}
    blocks: tuple[tuple[Any, str], ...] = (
        (lab_vcenter_block(state["vcenter"]), BLOCK_NAMES["vcenter"]),
        (Agent(url=state["agent"]["url"], token=state["agent"]["token"]), BLOCK_NAMES["agent"]),
        (lab_cloudstack_block(state["cloudstack"]["info"]), BLOCK_NAMES["cloudstack"]),
        (BackupRepository(name=repository_name, path=str(repository_path)), BLOCK_NAMES["repository"]),
    )
    for block, name in blocks:
        block.save(name, overwrite=True)
        saved[type(block).__name__] = name
    return saved


def make_deployable(
    root: Path, state: dict[str, Any], repository_name: str, repository_path: Path
) -> tuple[dict[str, str], dict[str, Any], bool]:
    """A long-lived agent (``state["agent"]``) and the saved blocks; returns the blocks, the agent, reused."""
    agent, reused = ensure_agent(root, state)
    return save_blocks(state, repository_name, repository_path), agent, reused


def lab_up_deployable(state: dict[str, Any], repository_name: str, repository_path: Path) -> dict[str, str]:
    """``vmferry lab up --deployable`` on the running lab: what to print (the agent, the blocks saved)."""
    from infra.lab.__main__ import write_state
    from infra.lab.paths import lab_dir

    root = lab_dir()
    try:
        saved, agent, reused = make_deployable(root, state, repository_name, repository_path)
    finally:
        write_state(root, state)  # a started agent is recorded even when saving a block failed
    return {
        "agent": f"{agent['url']} ({'reused' if reused else 'started'}, pid {agent['pid']})",
        "saved blocks": ", ".join(f"{kind} {name!r}" for kind, name in saved.items()),
    }
