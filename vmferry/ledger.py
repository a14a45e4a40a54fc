"""What a job creates on the hub, recorded in the catalog before it exists (catalog/resources.py). Prefect-free.

Creation is exclusive (``mkdir``, ``O_EXCL``), so a recorded path is ours only when this job made it; removal
marks the row, and a removal the catalog cannot record (it stopped answering) is left for the reconciler.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import tempfile
from pathlib import Path

from catalog.db import Catalog
from catalog.resources import mark_resource_present, mark_resource_removed, plan_resource

log = logging.getLogger(__name__)


class JobLedger:
    """The resources of one job."""

    def __init__(self, catalog: Catalog, job_id: str) -> None:
        self.catalog = catalog
        self.job_id = job_id

    def temp_directory(self, purpose: str) -> tuple[int, Path]:
        """A new private directory ``vmferry-<job>-<purpose>-<random>`` in the temp directory, recorded first."""
        path = Path(tempfile.gettempdir()) / f"vmferry-{self.job_id}-{purpose}-{secrets.token_hex(4)}"
        resource = plan_resource(self.catalog, self.job_id, "directory", path=str(path))
        path.mkdir(mode=0o700)
        return resource, path

    def remove_directory(self, resource: int, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)
        self.removed(resource)

    def planned_file(self, path: Path) -> int:
        return plan_resource(self.catalog, self.job_id, "file", path=str(path))

    def planned_process(self, *, image: Path, socket_path: Path) -> int:
        """A qemu-nbd about to serve ``image`` on ``socket_path``; its pid follows with ``started``."""
        return plan_resource(self.catalog, self.job_id, "qemu-nbd", path=str(socket_path), ref=str(image))

    def started(self, resource: int, pid: int) -> None:
        mark_resource_present(self.catalog, resource, pid=pid)

    def removed(self, resource: int) -> None:
        """Best effort: the thing is gone; when the catalog cannot say so now, the reconciler will."""
        try:
            mark_resource_removed(self.catalog, resource)
        except Exception:
            log.exception("could not record job %s resource %s as removed; the reconciler will", self.job_id, resource)
