"""The agent's HTTP contract (v1), as pydantic models shared by the reference agent and the hub's client.

docs/agent-contract.md describes it for other implementations. Everything here is plain data: no I/O.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

API_PREFIX = "/api/v1"
JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
DiskState = Literal["pending", "copying", "done", "failed", "cancelled"]
FINISHED: tuple[str, ...] = ("succeeded", "failed", "cancelled")


class BlockDigests(BaseModel):
    """Per-block sha256 of a target as the hub holds it now (``common.digests`` has the wire form)."""

    model_config = ConfigDict(extra="forbid")

    algorithm: Literal["sha256"] = "sha256"
    block_size: int = Field(ge=65536, description="A power of two; the last block may be short")
    digests: str = Field(
        description="base64 of the zlib-compressed 32-byte digests of every block of the whole target, block 0 first"
    )

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError(f"block_size {value} is not a power of two")
        return value


class Target(BaseModel):
    """Where one source disk goes. ``disk_key`` is the vSphere device key, never a position."""

    model_config = ConfigDict(validate_by_name=True, serialize_by_alias=True, extra="forbid")

    device_key: int = Field(alias="disk_key", description="The vSphere device key (JSON: disk_key)")
    nbd_url: str = Field(
        description="nbd://host:port/export of a qemu-nbd serving this disk's target; nbds:// when it requires TLS"
    )
    capacity_bytes: int = Field(gt=0, description="The source disk's size as the hub recorded it")
    previous_change_id: str | None = Field(
        default=None, description="CBT change id of the previous copy; absent for a full copy"
    )
    target_is_zero: bool = Field(
        default=True,
        description="The target reads as zeros (a new qcow2 or volume): zero blocks are skipped. False for "
        "an overlay or a volume holding an earlier copy.",
    )
    block_digests: BlockDigests | None = Field(
        default=None,
        description="The target's block digests: the agent compares source blocks against them instead of reading "
        "the target, and writes only blocks that differ (mode digest-compare), unless CBT names the changed areas",
    )

    @field_validator("nbd_url")
    @classmethod
    def _nbd_scheme(cls, value: str) -> str:
        if not value.startswith(("nbd://", "nbds://")):
            raise ValueError(f"{value!r} is not an nbd:// or nbds:// URL")
        return value

    @property
    def requires_tls(self) -> bool:
        return self.nbd_url.startswith("nbds://")


class CbtCheckPolicy(BaseModel):
    """How much of what CBT calls unchanged the agent re-reads and compares, and what a difference does."""

    model_config = ConfigDict(extra="forbid")

    sample_blocks: int = Field(
        default=32, ge=0, description="Blocks per disk read from the source and the target; 0 turns the check off"
    )
    block_size: int = Field(default=64 * 1024, ge=4096, le=8 * 2**20, description="Bytes per sampled block")
    on_mismatch: Literal["fail", "full"] = Field(
        default="fail",
        description="fail: the disk (and so the point or sync) fails; full: the disk is read whole and compared "
        "with the target instead of trusting CBT",
    )


class CbtCheckReport(BaseModel):
    """What the sampled check found on one disk."""

    blocks_checked: int
    bytes_read: int
    mismatched_offsets: list[int] = []
    action: Literal["none", "failed", "read-whole-disk"] = "none"


class JobRequest(BaseModel):
    """``POST /api/v1/jobs``: copy every disk of one VM, from one snapshot, to its own target."""

    model_config = ConfigDict(extra="forbid")

    job_id: str
    vm: str = Field(description="The VM's instance UUID or moref")
    kind: Literal["full", "incremental"]
    quiesce: bool = False
    targets: list[Target] = Field(min_length=1)
    bandwidth_limit_bytes_per_second: int | None = Field(
        default=None, gt=0, description="Throttle reads from the source datastore (all disks together)"
    )
    cbt_check: CbtCheckPolicy = Field(default_factory=CbtCheckPolicy)

    @field_validator("job_id")
    @classmethod
    def _safe_job_id(cls, value: str) -> str:
        if not JOB_ID.match(value):
            raise ValueError(f"job_id {value!r} must match {JOB_ID.pattern}")
        return value

    @model_validator(mode="after")
    def _one_target_per_disk(self) -> JobRequest:
        keys = [target.device_key for target in self.targets]
        twice = sorted({key for key in keys if keys.count(key) > 1})
        if twice:
            raise ValueError(f"disk key(s) {twice} have more than one target")
        urls = [target.nbd_url for target in self.targets]
        shared = sorted({url for url in urls if urls.count(url) > 1})
        if shared:
            raise ValueError(f"target(s) {shared} are given to more than one disk")
        return self


class DiskProgress(BaseModel):
    model_config = ConfigDict(validate_by_name=True, serialize_by_alias=True)

    device_key: int = Field(alias="disk_key", description="The vSphere device key (JSON: disk_key)")
    state: DiskState = "pending"
    mode: Literal["full", "allocated-areas", "changed-areas", "compare", "digest-compare"] | None = None
    bytes_total: int = 0
    bytes_done: int = 0
    bytes_written: int = 0
    bytes_read: int = Field(default=0, description="Read from the source: the copy and the sampled CBT check")
    target_bytes_read: int = 0
    change_id: str | None = None
    cbt_check: CbtCheckReport | None = None
    error: str | None = None


class JobStatus(BaseModel):
    """``GET /api/v1/jobs/{job_id}``."""

    job_id: str
    vm: str
    kind: str
    state: JobState
    snapshot_name: str | None = None
    # The moref of the snapshot this job created: the only snapshot the job ever removes.
    snapshot_moref: str | None = None
    snapshot_removed: bool = False
    disks: list[DiskProgress] = []
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


class ErrorBody(BaseModel):
    detail: str
