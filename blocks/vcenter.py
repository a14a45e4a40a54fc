"""The VCenter block: where a vCenter is and how to trust it. The password is a SecretStr."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from common.vsphere import VSphereEndpoint


class VCenter(Block):
    """A vCenter (or ESXi host) that vmferry reads VMs from and snapshots."""

    _block_type_name = "vmferry vCenter"
    _block_type_slug = "vmferry-vcenter"
    _description = "A vCenter that vmferry discovers, snapshots and reads VMs from."

    host: str = Field(description="vCenter host name or address.")
    port: int = Field(default=443, description="HTTPS port of the vSphere API.")
    username: str = Field(description="User with read, snapshot and disk-read privileges.")
    password: SecretStr = Field(description="That user's password.")
    thumbprint: str | None = Field(
        default=None,
        description="Pinned SHA-1 or SHA-256 certificate thumbprint (AA:BB:...). Trusted even when the "
        "certificate is self-signed; a different certificate is refused.",
    )
    verify_tls: bool = Field(
        default=True,
        description="Verify the certificate against the system (or ca_file) authorities when no thumbprint "
        "is pinned. Turning this off is for throw-away labs only.",
    )
    ca_file: str | None = Field(default=None, description="PEM file of extra trusted authorities.")

    def endpoint(self) -> VSphereEndpoint:
        return VSphereEndpoint.of(self)
