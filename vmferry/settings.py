"""Process-wide configuration, read from the environment (prefix ``VMFERRY_``).

Credentials never live here: vCenter, CloudStack and agent secrets are Prefect blocks with SecretStr fields.
The catalog URL may carry a MariaDB password, so it is read from the environment (or a Catalog block) and is
never passed as a flow parameter, where it would be stored in the flow run.
"""

from __future__ import annotations

import os
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("vmferry"))


class PortRange:
    """An inclusive range of TCP ports, written ``10100-10200``."""

    def __init__(self, first: int, last: int) -> None:
        if not (1 <= first <= last <= 65535):
            raise ValueError(f"invalid port range {first}-{last}: need 1 <= first <= last <= 65535")
        self.first = first
        self.last = last

    @classmethod
    def parse(cls, text: str) -> PortRange:
        first, sep, last = text.partition("-")
        if not sep or not first.strip().isdigit() or not last.strip().isdigit():
            raise ValueError(f"port range {text!r} must look like 10100-10200")
        return cls(int(first), int(last))

    def __iter__(self):  # noqa: ANN204 - generator of ints
        return iter(range(self.first, self.last + 1))

    def __len__(self) -> int:
        return self.last - self.first + 1

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"

    def __repr__(self) -> str:
        return f"PortRange({self.first}, {self.last})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PortRange) and (self.first, self.last) == (other.first, other.last)

    def __hash__(self) -> int:
        return hash((self.first, self.last))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VMFERRY_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir, description="Where the SQLite catalog lives.")
    catalog_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the catalog, e.g. mysql+pymysql://user:pw@db/vmferry. "
        "Default: SQLite file catalog.db in data_dir.",
    )
    catalog_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Connecting to the catalog, each read and write, and each lock wait end after this long: a "
        "catalog that stops answering fails the job (its compensation runs without it) instead of holding it.",
    )
    nbd_port_range: str = Field(default="10100-10200", description="Ports qemu-nbd exports may use.")
    nbd_bind_address: str = Field(default="127.0.0.1", description="Address qemu-nbd listens on.")
    # Declared before nbd_tls_dir: its validator reads this one.
    nbd_tls_verify_client: bool = Field(
        default=True,
        description="qemu-nbd accepts only clients with a certificate signed by the TLS CA (qemu's verify-peer).",
    )
    nbd_tls_dir: Path | None = Field(
        default=None,
        description="qemu x509 credentials (ca-cert.pem, server-cert.pem, server-key.pem, and client-cert.pem + "
        "client-key.pem for the hub's readiness check); when set, exports speak TLS only (nbds://).",
    )
    nbd_tls_allowed_clients: list[str] = Field(
        default_factory=list,
        description='Client certificate names qemu-nbd lets in (JSON list, e.g. ["CN=vmferry-agent"]); empty: '
        "any certificate of the CA. The hub's own client-cert.pem is always let in.",
    )
    compare_by_digests: bool = Field(
        default=True,
        description="A copy into a target that holds data (an incremental's overlay, a reused volume) sends the "
        "agent per-block digests of the target, computed here, instead of letting the agent read the target back "
        "over the link; false: the agent reads and compares (the plain compare).",
    )
    port_lease_seconds: int = Field(
        default=6 * 3600, description="A lease not released by then is considered abandoned and reusable."
    )
    repository_backup_limit: int = Field(
        default=2,
        ge=1,
        description="Backups writing to one repository at once, when its global concurrency limit does not "
        "exist yet (deployments/deploy.py creates it with the operator's value).",
    )
    concurrency_lease_seconds: float = Field(
        default=60,
        ge=60,
        le=86400,
        description="Lease of a held concurrency slot, renewed while its run lives: a killed run's slot comes "
        "back within this time (Prefect accepts 60 s to one day).",
    )
    vcenter_snapshot_limit: int = Field(
        default=4,
        ge=1,
        description="VMs of one vCenter with a vmferry snapshot open at once, when that limit does not exist yet.",
    )
    cbt_check_sample_blocks: int = Field(
        default=32,
        ge=0,
        description="Per disk and CBT incremental, 64 KiB blocks CBT calls unchanged that the agent re-reads from the "
        "source and compares with the previous copy (0 = no check).",
    )
    cbt_check_on_mismatch: Literal["fail", "full"] = Field(
        default="fail",
        description="When the sampled check finds a difference: fail the point or sync, or read that disk whole.",
    )

    @field_validator("nbd_port_range")
    @classmethod
    def _valid_range(cls, value: str) -> str:
        PortRange.parse(value)
        return value

    @field_validator("nbd_tls_dir", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("nbd_tls_dir")
    @classmethod
    def _usable_tls_dir(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        # Checked whenever settings are read, so a broken directory stops a flow before any port or export.
        if value is not None:
            from vmferry.nbd_tls import check_nbd_tls_dir

            value = value.expanduser().absolute()
            check_nbd_tls_dir(
                value,
                bind_address=info.data.get("nbd_bind_address", "127.0.0.1"),
                verify_client=info.data.get("nbd_tls_verify_client", True),
            )
        return value

    @model_validator(mode="after")
    def _allow_list_needs_client_verification(self) -> Settings:
        if self.nbd_tls_allowed_clients and (self.nbd_tls_dir is None or not self.nbd_tls_verify_client):
            raise ValueError(
                "VMFERRY_NBD_TLS_ALLOWED_CLIENTS names client certificates: it needs VMFERRY_NBD_TLS_DIR and "
                "VMFERRY_NBD_TLS_VERIFY_CLIENT on, or no client would ever present one"
            )
        return self

    @cached_property
    def port_range(self) -> PortRange:
        return PortRange.parse(self.nbd_port_range)

    def resolved_catalog_url(self) -> str:
        if self.catalog_url:
            return self.catalog_url
        return f"sqlite:///{self.data_dir / 'catalog.db'}"


def get_settings() -> Settings:
    """The settings of the environment as it is now. Built again only when something they are read from
    changed (every ``VMFERRY_`` variable, and HOME/XDG_DATA_HOME for the data directory): building them costs
    about 10 ms, and one replication sync asks some forty times."""
    read_from = tuple(
        sorted(
            (name, value)
            for name, value in os.environ.items()
            if name.upper().startswith("VMFERRY_") or name in ("HOME", "XDG_DATA_HOME")
        )
    )
    return _settings_of(read_from)


@lru_cache(maxsize=16)
def _settings_of(read_from: tuple[tuple[str, str], ...]) -> Settings:
    return Settings()
