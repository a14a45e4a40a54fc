"""Prefect block types of vmferry (registered through the ``prefect.collections`` entry point)."""

from blocks.agent import Agent
from blocks.vcenter import VCenter

__all__ = ["Agent", "VCenter"]
