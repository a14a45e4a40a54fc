"""The CloudStack block: which management server, which keys, and the ids vmferry creates things with."""

from __future__ import annotations

from pathlib import Path

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from clients.cloudstack import CloudStackClient


class CloudStack(Block):
    """A CloudStack zone that vmferry replicates into, and the hub VM inside it that volumes are attached to."""

    _block_type_name = "vmferry CloudStack"
    _block_type_slug = "vmferry-cloudstack"
    _description = "The CloudStack API, keys and ids (zone, offerings, template, hub VM) vmferry works with."

    endpoint: str = Field(description="API URL, e.g. https://cloud.example/client/api")
    api_key: str = Field(description="API key of the account vmferry acts as.")
    secret_key: SecretStr = Field(description="That account's secret key (signs every request).")
    zone_id: str = Field(description="Zone (uuid) where volumes and VMs are created.")
    disk_offering_id: str = Field(description="Custom-size disk offering (uuid) for replicated volumes.")
    service_offering_id: str = Field(
        description="Service offering (uuid) for failover VMs. A custom (dynamic) offering gets the source VM's "
        "CPU count and memory; a fixed one decides them itself."
    )
    cpu_speed_mhz: int = Field(default=2000, description="CPU speed given to failover VMs on a custom offering.")
    template_id: str = Field(description="Template (uuid) failover VMs are deployed from before their root swap.")
    hub_vm_id: str = Field(description="The hub VM (uuid) volumes are attached to while they are written.")
    hub_pool: list[str] = Field(
        default_factory=list,
        description="More hub VMs (uuids) sharing the work with hub_vm_id; each takes as many volumes at once as "
        "CloudStack lets it attach. Their workers must see the volumes under device_root.",
    )
    max_data_volumes_fallback: int | None = Field(
        default=None,
        description="Data volumes a VM takes, used only when CloudStack does not answer listHypervisorCapabilities "
        "(it is a root-admin call); CloudStack's own maxdatavolumeslimit always wins.",
    )
    device_root: str = Field(
        default="/dev",
        description="Where the hub sees attached volumes (<device_root>/disk/by-id/virtio-<serial>, or "
        "scsi-0QEMU_QEMU_HARDDISK_<serial> on virtio-scsi); the simulator uses <state-dir>/dev.",
    )
    network_map: dict[str, str] = Field(
        default_factory=dict,
        description="Source network (vSphere port group name) -> CloudStack network (uuid). A failover VM gets one "
        "NIC per source NIC, in source order, on the mapped network; a source network missing here refuses the "
        "failover before anything is created. A failover run may add or override entries for its VM.",
    )
    check_placement: bool = Field(
        default=True,
        description="Before a failover, check that one cluster reaches every volume's storage pool and deploy "
        "there. Needs a root admin's key (listStoragePools and the volumes' storage ids are admin-only).",
    )
    verify_tls: bool = Field(default=True, description="Verify the API's certificate. Off only for throw-away labs.")
    ca_file: str | None = Field(
        default=None, description="PEM file of the authority that signed the API's certificate."
    )
    request_timeout: float = Field(default=30.0, description="Seconds to wait for one API answer.")
    job_timeout: float = Field(default=600.0, description="Seconds to wait for an async job to finish.")
    poll_interval: float = Field(
        default=0.2, description="First pause between async job polls; it grows 1.5x per poll up to 5 s."
    )

    def client(self) -> CloudStackClient:
        verify: bool | str = self.ca_file or self.verify_tls
        return CloudStackClient(
            self.endpoint,
            self.api_key,
            self.secret_key.get_secret_value(),
            timeout=self.request_timeout,
            verify=verify,
            job_timeout=self.job_timeout,
            poll_interval=self.poll_interval,
        )

    def device_root_path(self) -> Path:
        return Path(self.device_root)

    def hub_ids(self) -> list[str]:
        """The hub pool, hub_vm_id first, each once."""
        return list(dict.fromkeys([self.hub_vm_id, *self.hub_pool]))
