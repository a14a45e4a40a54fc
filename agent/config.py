"""The agent's configuration: its token, the vCenter it reads from, and how hard it may push."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr

from clients.vsphere import VSphereEndpoint


class VCenterSettings(BaseModel):
    host: str
    port: int = 443
    username: str
    password: SecretStr
    thumbprint: str | None = None
    verify_tls: bool = True
    ca_file: str | None = None

    def endpoint(self) -> VSphereEndpoint:
        return VSphereEndpoint(
            host=self.host,
            port=self.port,
            username=self.username,
            password=self.password.get_secret_value(),
            thumbprint=self.thumbprint,
            verify_tls=self.verify_tls,
            ca_file=self.ca_file,
        )


class AgentConfig(BaseModel):
    token: SecretStr = Field(description="Bearer token the hub must present")
    vcenter: VCenterSettings
    max_parallel_disks: int = Field(default=4, ge=1, description="Disks of one job copied at once")
    connections_per_disk: int = Field(default=4, ge=1, description="NBD connections per disk")
    nbd_connect_timeout: float = Field(default=10.0, gt=0)
    reader: Literal["datastore-http", "vddk"] = Field(
        default="datastore-http", description="How disks are read: vSphere datastore HTTP, or VDDK where installed"
    )


def load_config(path: Path) -> AgentConfig:
    """Read the agent's JSON config; it holds secrets, so it must not be readable by group or others."""
    mode = os.stat(path).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PermissionError(f"{path} holds the agent token and vCenter password: chmod 600 it")
    return AgentConfig.model_validate(json.loads(path.read_text()))
