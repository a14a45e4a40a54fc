"""The Agent block: where the agent next to vCenter listens, and the token it expects."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from clients.agent import AgentClient


class Agent(Block):
    """A vmferry agent (reference or compatible) that reads VM disks next to vCenter."""

    _block_type_name = "vmferry Agent"
    _block_type_slug = "vmferry-agent"
    _description = "The agent that snapshots VMs and writes their disks to the hub's NBD exports."

    url: str = Field(description="Base URL of the agent, e.g. https://agent.example:8443")
    token: SecretStr = Field(description="Bearer token the agent expects.")
    verify_tls: bool = Field(default=True, description="Verify the agent's certificate.")
    ca_file: str | None = Field(default=None, description="PEM file of the authority that signed it.")
    request_timeout: float = Field(default=30.0, description="Seconds to wait for one API answer.")

    def client(self) -> AgentClient:
        verify: bool | str = self.ca_file or self.verify_tls
        return AgentClient(self.url, self.token.get_secret_value(), timeout=self.request_timeout, verify=verify)
