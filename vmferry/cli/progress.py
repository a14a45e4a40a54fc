"""Per-disk progress bars for the copies a flow runs in this process.

The bars show what the flow's own follower of the agent job publishes (vmferry/progress.py): the job the flow
submitted, with the numbers its progress artifacts show. No second poller, no guessing which job is the flow's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from vmferry.progress import CopyProgress, listening

T = TypeVar("T")


class CopyProgressBars:
    """One bar per disk of every agent job the flows of this process follow while the block runs."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self._bars: dict[tuple[str, int], TaskID] = {}

    def show(self, event: CopyProgress) -> None:
        for disk in event.disks:
            total = disk.bytes_total or None
            key = (event.job_id, disk.device_key)
            if key not in self._bars:
                self._bars[key] = self.progress.add_task(disk.label, total=total)
            self.progress.update(self._bars[key], completed=disk.bytes_done, total=total)

    def run(self, work: Callable[[], T]) -> T:
        with self.progress, listening(self.show):
            return work()


def with_progress(console: Console, show: bool | None, work: Callable[[], T]) -> T:
    """Run ``work`` with bars on ``console`` when ``show`` (by default: when it is a terminal)."""
    if show is None:
        show = console.is_terminal
    if not show:
        return work()
    return CopyProgressBars(console).run(work)
