"""The agent's configuration: its token, the vCenter it reads from, how hard it may push, and its NBD TLS."""

from __future__ import annotations

import json
import os
import ssl
import stat
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator

from common.vsphere import VSphereEndpoint


class VCenterSettings(BaseModel):
    host: str
    port: int = 443
    username: str
    password: SecretStr
    thumbprint: str | None = None
    verify_tls: bool = True
    ca_file: str | None = None

    def endpoint(self) -> VSphereEndpoint:
        return VSphereEndpoint.of(self)


class NbdTlsSettings(BaseModel):
    """How the agent connects to ``nbds://`` targets: the CA of the hub's qemu-nbd, and its own certificate."""

    ca_file: str = Field(description="PEM CA certificate that signed the hub's server-cert.pem")
    cert_file: str | None = Field(
        default=None, description="PEM client certificate signed by that CA (the hub verifies clients by default)"
    )
    key_file: str | None = Field(default=None, description="Private key of cert_file; mode 600")
    required: bool = Field(
        default=False,
        description="Refuse plain nbd:// targets too: disk data leaves this agent only over TLS, whatever the hub "
        "is configured to send",
    )

    @model_validator(mode="after")
    def _cert_with_key(self) -> NbdTlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("nbd_tls: cert_file and key_file go together; give both or neither")
        return self

    def ssl_context(self) -> ssl.SSLContext:
        """One context for every NBD connection; the server's certificate must name the host of the URL."""
        if self.key_file is not None and os.stat(self.key_file).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise PermissionError(f"nbd_tls.key_file {self.key_file} is a private key others can read: chmod 600 it")
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file)
            if self.cert_file is not None:
                context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"nbd_tls: cannot load {self.ca_file}, {self.cert_file}, {self.key_file}: {exc}") from exc
        return context


class AgentConfig(BaseModel):
    token: SecretStr = Field(description="Bearer token the hub must present")
    vcenter: VCenterSettings
    max_parallel_disks: int = Field(default=4, ge=1, description="Disks of one job copied at once")
    connections_per_disk: int = Field(default=4, ge=1, description="NBD connections per disk")
    nbd_connect_timeout: float = Field(default=10.0, gt=0)
    reader: Literal["datastore-http", "vddk"] = Field(
        default="datastore-http", description="How disks are read: vSphere datastore HTTP, or VDDK where installed"
    )
    nbd_tls: NbdTlsSettings | None = Field(
        default=None, description="TLS for nbds:// targets; without it such targets are refused"
    )


def load_config(path: Path) -> AgentConfig:
    """Read the agent's JSON config; it holds secrets, so it must not be readable by group or others."""
    mode = os.stat(path).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PermissionError(f"{path} holds the agent token and vCenter password: chmod 600 it")
    return AgentConfig.model_validate(json.loads(path.read_text()))
