"""The BackupRepository block: where restore points are kept (a directory today)."""

from __future__ import annotations

import re

from prefect.blocks.core import Block
from pydantic import Field, field_validator

from vmferry.repository import Repository


class BackupRepository(Block):
    """A directory of qcow2 restore points (full and incremental chains)."""

    _block_type_name = "vmferry Backup Repository"
    _block_type_slug = "vmferry-backup-repository"
    _description = "A directory holding vmferry restore points as qcow2 backing-file chains."

    name: str = Field(description="Short name of the repository, recorded with every restore point.")
    path: str = Field(description="Absolute path of the repository directory on the hub.")

    @field_validator("name")
    @classmethod
    def _simple_name(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", value):
            raise ValueError("repository names are lower-case letters, digits and dashes (they name limits)")
        return value

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"repository path {value!r} must be absolute")
        return value

    def repository(self) -> Repository:
        return Repository(self.path, self.name)
