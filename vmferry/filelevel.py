"""File-level restore without root and without a kernel NBD device.

qemu-nbd serves the restore point's qcow2 chain read-only on a private unix socket; our NBD client reads it
as a file object; dissect parses the partition table and the filesystem (ext2/3/4, FAT) in pure Python.
Paths inside a backup are untrusted data: extracted files are placed strictly under the destination.
"""

from __future__ import annotations

import functools
import io
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel

from clients.qemu import serve_read_only
from common.nbd import NBDClient
from vmferry.errors import NotFoundError, VmferryError
from vmferry.ledger import JobLedger


class FileRestoreError(VmferryError):
    """The file cannot be listed or extracted; the message names the point, disk, partition and path."""


class NotInBackup(FileRestoreError, NotFoundError):
    """The partition or path named is not in the backed-up disk."""


class NBDFile(io.RawIOBase):
    """A read-only, seekable file over one NBD export."""

    def __init__(self, client: NBDClient) -> None:
        self.client = client
        self.size = client.size
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        length = max(0, min(len(view), self.size - self.position))
        if length:
            self.client.readinto(self.position, view[:length])
            self.position += length
        return length


@contextmanager
def open_image(path: Path, image_format: str = "qcow2", ledger: JobLedger | None = None) -> Iterator[NBDFile]:
    """The guest-visible bytes of an image (with its backing chain) as a file object.

    With a ``ledger`` the work directory and the qemu-nbd are recorded before they exist, so a job killed
    while qemu-nbd serves leaves rows the reconciler uses to stop it and remove the directory.
    """
    if ledger is not None:
        directory_id, workdir = ledger.temp_directory("flr")
    else:
        directory_id, workdir = None, Path(tempfile.mkdtemp(prefix="vmferry-flr-"))
    socket_path = workdir / "nbd.sock"
    process_id = ledger.planned_process(image=path, socket_path=socket_path) if ledger is not None else None
    on_started = None
    if ledger is not None and process_id is not None:
        on_started = functools.partial(ledger.started, process_id)
    try:
        with serve_read_only(
            path, socket_path, image_format=image_format, on_started=on_started, error=FileRestoreError
        ) as client:
            yield NBDFile(client)
    finally:
        if ledger is not None and process_id is not None and directory_id is not None:
            ledger.removed(process_id)
            ledger.remove_directory(directory_id, workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


class PartitionInfo(BaseModel):
    number: int
    offset: int
    size: int
    filesystem: str | None


class FileEntry(BaseModel):
    path: str
    is_dir: bool
    size: int


def _open_filesystem(handle: Any) -> tuple[str, Any] | None:
    from dissect.extfs import ExtFS
    from dissect.fat import FATFS

    for name, opener in (("ext", ExtFS), ("fat", FATFS)):
        try:
            return name, opener(handle)
        except Exception:  # noqa: S112 - dissect raises assorted errors meaning "not this filesystem"
            continue
    return None


def _partitions(image: NBDFile) -> list[Any]:
    from dissect.volume.disk import Disk

    image.seek(0)
    try:
        return list(Disk(image).partitions)
    except Exception as exc:
        raise FileRestoreError(f"no readable partition table: {exc}") from exc


def list_partitions(image: NBDFile) -> list[PartitionInfo]:
    infos = []
    for part in _partitions(image):
        found = _open_filesystem(part.open())
        infos.append(
            PartitionInfo(number=part.number, offset=part.offset, size=part.size, filesystem=found and found[0])
        )
    return infos


def _filesystem(image: NBDFile, partition: int) -> tuple[str, Any]:
    for part in _partitions(image):
        if part.number == partition:
            found = _open_filesystem(part.open())
            if found is None:
                raise FileRestoreError(f"partition {partition} holds no ext or FAT filesystem vmferry can read")
            return found
    raise NotInBackup(f"there is no partition {partition}")


def _entry(kind: str, fs: Any, path: str) -> Any:
    try:
        return fs.get(path)
    except Exception as exc:
        raise NotInBackup(f"{path!r} does not exist") from exc


def _children(kind: str, entry: Any) -> list[tuple[str, Any]]:
    if kind == "ext":
        return [(name, child) for name, child in entry.listdir().items() if name not in (".", "..")]
    # a FAT volume label is a directory entry too, but not a file
    return [(child.name, child) for child in entry.iterdir() if not child.is_volume_id()]


def _is_dir(kind: str, entry: Any) -> bool:
    if kind == "ext":
        return stat.S_ISDIR(entry.filetype)
    return entry.is_directory()


def _size(kind: str, entry: Any) -> int:
    return 0 if _is_dir(kind, entry) else int(entry.size)


def list_files(image: NBDFile, partition: int, path: str = "/") -> list[FileEntry]:
    kind, fs = _filesystem(image, partition)
    directory = _entry(kind, fs, path)
    if not _is_dir(kind, directory):
        raise FileRestoreError(f"{path!r} is not a directory")
    base = PurePosixPath(path)
    return sorted(
        (
            FileEntry(path=str(base / name), is_dir=_is_dir(kind, child), size=_size(kind, child))
            for name, child in _children(kind, directory)
        ),
        key=lambda e: e.path,
    )


def safe_destination(destination: Path, inner_path: str) -> Path:
    """Where ``inner_path`` (from inside a backup: untrusted) lands under ``destination``."""
    parts = [p for p in PurePosixPath(inner_path).parts if p not in ("/", "")]
    if not parts or any(p in (".", "..") or "\0" in p for p in parts):
        raise FileRestoreError(f"refusing to extract {inner_path!r}: not a plain path")
    target = destination.joinpath(*parts)
    if not target.resolve().is_relative_to(destination.resolve()):
        raise FileRestoreError(f"refusing to extract {inner_path!r} outside {destination}")
    return target


def _open_directory(base: Path, parts: tuple[str, ...]) -> int:
    """A descriptor of ``base/parts...``, creating what is missing; never through a symbolic link below ``base``.

    ``base`` is the operator's ``--to``; everything under it is walked with O_NOFOLLOW, so a link planted there
    (by a guest's file name or by somebody else) cannot send a write elsewhere.
    """
    base.mkdir(parents=True, exist_ok=True)  # the operator's own directory, as named
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts:
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            try:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as exc:
                raise FileRestoreError(
                    f"{base.joinpath(*parts)}: {part!r} is a symbolic link or not a directory; refusing to write "
                    "through it (remove it or restore into another directory)"
                ) from exc
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _exists(name: str, directory: int) -> bool:
    try:
        os.lstat(name, dir_fd=directory)
    except FileNotFoundError:
        return False
    return True


def extract_file(
    image: NBDFile,
    partition: int,
    path: str,
    destination: Path,
    *,
    overwrite: bool = False,
    ledger: JobLedger | None = None,
) -> Path:
    """Copy one file out of the backup to ``destination/<path>``; written to a temp name, then renamed.

    The temp name is created with O_EXCL|O_NOFOLLOW (recorded in ``ledger`` first): an existing file or link
    there is not ours, and nothing is written through it.
    """
    kind, fs = _filesystem(image, partition)
    entry = _entry(kind, fs, path)
    if _is_dir(kind, entry):
        raise FileRestoreError(f"{path!r} is a directory; name the files to extract")
    target = safe_destination(destination, path)
    *parents, name = target.relative_to(destination).parts
    directory = _open_directory(destination, tuple(parents))
    try:
        if _exists(name, directory) and not overwrite:
            raise FileRestoreError(f"{target} exists; pass overwrite=True to replace it")
        partial_name = name + ".partial"
        partial = target.with_name(partial_name)
        resource = ledger.planned_file(partial) if ledger is not None else None
        created = False
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                fd = os.open(partial_name, flags, 0o600, dir_fd=directory)
            except FileExistsError as exc:
                raise FileRestoreError(
                    f"{partial} already exists (a link or file this restore did not create); nothing was written: "
                    "remove it, or run the reconciler if an interrupted restore left it"
                ) from exc
            created = True
            try:
                with os.fdopen(fd, "wb") as sink, entry.open() as source:
                    shutil.copyfileobj(source, sink, 1 << 20)
                os.replace(partial_name, name, src_dir_fd=directory, dst_dir_fd=directory)
            except BaseException:
                os.unlink(partial_name, dir_fd=directory)
                raise
        finally:
            # never created (somebody else's name) or gone: nothing of ours is left there
            if ledger is not None and resource is not None and not (created and _exists(partial_name, directory)):
                ledger.removed(resource)
    finally:
        os.close(directory)
    return target
