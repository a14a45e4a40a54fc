"""Prefect block types of vmferry (registered through the ``prefect.collections`` entry point)."""

from __future__ import annotations

from typing import TypeVar

from prefect.blocks.core import Block

from blocks.agent import Agent
from blocks.cloudstack import CloudStack
from blocks.repository import BackupRepository
from blocks.vcenter import VCenter

B = TypeVar("B", bound=Block)


def load_block(block_type: type[B], value: B | str) -> B:
    """Flows take a block or the name of a saved one (deployments pass names)."""
    return block_type.load(value) if isinstance(value, str) else value


__all__ = ["Agent", "BackupRepository", "CloudStack", "VCenter", "load_block"]
