"""Runs one restore in its own process and stalls it at the worst moment, so a test can SIGKILL it there.

``files``: stalls while qemu-nbd serves the backup and the first MiB of the file is in its ``.partial``.
``vm``: stalls right after qemu-img wrote the first disk's ``.partial``. The marker line ``stalled`` on stdout
says the process got there. Arguments arrive as JSON on stdin.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from typing import Any

import flows.restore
import tasks.restore
from blocks.repository import BackupRepository


def _stall() -> None:
    print("stalled", flush=True)
    while True:
        time.sleep(60)


def _copy_then_stall(source: Any, sink: Any, length: int = 0) -> None:
    sink.write(source.read(length or 1 << 20))
    sink.flush()
    _stall()


if __name__ == "__main__":
    arguments = json.loads(sys.stdin.read())
    repository = BackupRepository(**arguments["repository"])
    if arguments["kind"] == "files":
        shutil.copyfileobj = _copy_then_stall  # type: ignore[assignment]
        flows.restore.restore_files(
            arguments["point_id"], arguments["disk"], arguments["partition"], arguments["paths"],
            arguments["destination"], repository,
        )  # fmt: skip
    else:
        convert = tasks.restore.convert_image  # the restore task converts each disk

        def convert_then_stall(*args: Any, **kwargs: Any) -> None:
            convert(*args, **kwargs)
            _stall()

        tasks.restore.convert_image = convert_then_stall  # type: ignore[assignment]
        flows.restore.restore_vm(arguments["point_id"], arguments["destination"], repository)
