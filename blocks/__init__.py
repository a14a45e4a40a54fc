"""Prefect block types of vmferry (registered through the ``prefect.collections`` entry point)."""

from blocks.vcenter import VCenter

__all__ = ["VCenter"]
