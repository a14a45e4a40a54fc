"""Checks made before a failover creates anything: the mapped networks exist in the zone, and one place (a
cluster, or anywhere for zone-wide storage) reaches every replicated volume's storage pool."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from blocks.cloudstack import CloudStack
from catalog.inventory import RecordedVM
from clients.cloudstack import CloudStackAdminRequired, CloudStackClient, require_admin_field
from vmferry.failover_plan import FailoverRefused, PlannedAttachment
from vmferry.network_plan import PlannedNic


class Placement(BaseModel):
    cluster_id: str | None = None  # None: zone-wide storage (or the check is off), CloudStack chooses
    reason: str


def check_networks(client: CloudStackClient, zone_id: str, vm: RecordedVM, nics: list[PlannedNic]) -> None:
    known = {network.id for network in client.list_networks(zone_id=zone_id)}
    missing = [nic for nic in nics if nic.network_id not in known]
    if missing:
        names = ", ".join(f"{nic.source_network!r} -> {nic.network_id}" for nic in missing)
        raise FailoverRefused(
            f"VM {vm.name!r}: mapped CloudStack network(s) {names} do not exist in zone {zone_id} (or this account "
            "cannot use them); fix network_map. Nothing was created"
        )


def choose_placement(client: CloudStackClient, vm: RecordedVM, plan: list[PlannedAttachment]) -> Placement:
    """Where the destination VM can run: the one cluster whose hosts reach every volume's pool. Refuses
    (FailoverRefused) for local (host) storage, a managed pool under the OS volume, or pools in two clusters."""
    pools = {pool.id: pool for pool in client.list_storage_pools()}
    clusters: dict[str, list[str]] = {}
    for item in plan:
        volume = client.get_volume(item.volume_id)
        if volume.state == "Allocated":
            continue  # not on any pool yet: CloudStack creates it on the pool of the VM's ROOT
        pool_id = require_admin_field(volume, "storage_id", "the failover checks where the volumes are")
        pool = pools.get(pool_id)
        if pool is None:
            raise FailoverRefused(
                f"VM {vm.name!r}: disk {item.disk_id} (volume {volume.id}) is on storage pool {pool_id}, which "
                "listStoragePools does not list (removed?); move the volume to a listed pool, or "
                "set check_placement to false in the CloudStack block. Nothing was created"
            )
        if pool.scope == "HOST":
            raise FailoverRefused(
                f"VM {vm.name!r}: disk {item.disk_id} (volume {volume.id}) is on host-local pool {pool.name!r}; "
                "CloudStack does not move local data volumes, so no VM elsewhere can use it. Move the volume to "
                "cluster- or zone-wide storage. Nothing was created"
            )
        if item.is_root and pool.managed:
            raise FailoverRefused(
                f"VM {vm.name!r}: OS disk {item.disk_id} (volume {volume.id}) is on managed pool {pool.name!r}, where "
                "CloudStack refuses to attach a ROOT volume (validateRootVolumeDetachAttach). Nothing was created"
            )
        if pool.scope == "CLUSTER" and pool.cluster_id:
            clusters.setdefault(pool.cluster_id, []).append(item.disk_id)
    if len(clusters) > 1:
        spread = "; ".join(f"cluster {cid}: {', '.join(disks)}" for cid, disks in clusters.items())
        raise FailoverRefused(
            f"VM {vm.name!r}: its volumes are on cluster-wide pools of different clusters ({spread}); no host "
            "reaches them all. Move them to one cluster or to zone-wide storage. Nothing was created"
        )
    if clusters:
        [(cluster_id, _)] = clusters.items()
        return Placement(cluster_id=cluster_id, reason=f"every cluster-wide volume is in cluster {cluster_id}")
    return Placement(reason="every volume is on zone-wide storage")


@task(cache_policy=NO_CACHE)  # reads only, and the client retries them; a refusal must not be retried
def check_destination(
    cloudstack: CloudStack, vm: RecordedVM, nics: list[PlannedNic], plan: list[PlannedAttachment]
) -> Placement:
    """Read-only: refuse (FailoverRefused) before anything is created when the networks or storage cannot work."""
    with cloudstack.client() as client:
        check_networks(client, cloudstack.zone_id, vm, nics)
        if not cloudstack.check_placement:
            return Placement(reason="placement check turned off in the CloudStack block")
        try:
            return choose_placement(client, vm, plan)
        except CloudStackAdminRequired as exc:
            # our own refusal (the check cannot run with this key), not CloudStack's failure
            raise FailoverRefused(
                f"VM {vm.name!r}: the placement check cannot run: {exc.errortext}; or set check_placement to false "
                "in the CloudStack block to let CloudStack place the failover VM unchecked. Nothing was created"
            ) from exc
