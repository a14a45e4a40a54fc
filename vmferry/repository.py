"""The on-disk layout of a backup repository. Paths come from catalog ids only, never from VM or disk names.

    <root>/vm-<vm_context_id>/point-<restore point id>/<disk id>.qcow2       committed
    <root>/vm-<vm_context_id>/point-<restore point id>.partial/...          being written

A point is written into its ``.partial`` directory and renamed in one step when every disk is done. An
incremental's backing file is ``../point-<parent>/<disk id>.qcow2``: relative, so the repository can move,
and valid both before and after the rename (same depth).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from common import names


class RepositoryError(Exception):
    """The repository cannot be used; the message names the path and the fix."""


class Repository:
    def __init__(self, root: Path | str, name: str) -> None:
        self.root = Path(root)
        self.name = name

    def vm_dir(self, vm_context_id: int) -> Path:
        return self.root / names.vm_dir_name(vm_context_id)

    def point_dir(self, vm_context_id: int, point_id: int) -> Path:
        return self.vm_dir(vm_context_id) / names.point_dir_name(point_id)

    def partial_dir(self, vm_context_id: int, point_id: int) -> Path:
        return self.vm_dir(vm_context_id) / names.point_dir_name(point_id, partial=True)

    @staticmethod
    def disk_file_name(disk_id: str) -> str:
        try:
            return names.disk_file_name(disk_id)
        except ValueError as exc:
            raise RepositoryError(str(exc)) from exc

    def relative_disk_path(self, vm_context_id: int, point_id: int, disk_id: str) -> str:
        """What the catalog stores: relative to the repository root."""
        return f"{names.vm_dir_name(vm_context_id)}/{names.point_dir_name(point_id)}/{self.disk_file_name(disk_id)}"

    def absolute(self, relative: str) -> Path:
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise RepositoryError(f"{relative!r} points outside the repository {self.root}")
        return path

    def partial_disk_path(self, vm_context_id: int, point_id: int, disk_id: str) -> Path:
        return self.partial_dir(vm_context_id, point_id) / self.disk_file_name(disk_id)

    def prepare_partial(self, vm_context_id: int, point_id: int) -> Path:
        """Create the point's ``.partial`` directory (mode 0700: backups hold whole disks)."""
        directory = self.partial_dir(vm_context_id, point_id)
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.vm_dir(vm_context_id).mkdir(mode=0o700, exist_ok=True)
            directory.mkdir(mode=0o700)
        except FileExistsError as exc:
            raise RepositoryError(f"{directory} already exists: a backup of this point is running or crashed") from exc
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
                raise RepositoryError(
                    f"backup repository {self.root} is not writable ({exc.strerror}); fix its permissions or "
                    "point the BackupRepository block elsewhere"
                ) from exc
            raise RepositoryError(f"cannot create {directory}: {exc}") from exc
        return directory

    def commit(self, vm_context_id: int, point_id: int) -> Path:
        partial = self.partial_dir(vm_context_id, point_id)
        final = self.point_dir(vm_context_id, point_id)
        for path in partial.iterdir():
            os.chmod(path, 0o600)
        os.rename(partial, final)
        directory = os.open(self.vm_dir(vm_context_id), os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename is the commit: make it durable
        finally:
            os.close(directory)
        return final

    def discard_partial(self, vm_context_id: int, point_id: int) -> bool:
        partial = self.partial_dir(vm_context_id, point_id)
        if not partial.exists():
            return False
        shutil.rmtree(partial)
        return True

    def remove_point(self, vm_context_id: int, point_id: int) -> None:
        shutil.rmtree(self.point_dir(vm_context_id, point_id), ignore_errors=False)

    def partial_dirs(self) -> list[Path]:
        if not self.root.exists():
            return []
        return sorted(self.root.glob(names.PARTIAL_GLOB))
