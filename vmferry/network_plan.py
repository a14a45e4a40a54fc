"""Which CloudStack network each NIC of the failover VM is on. Pure: decided before anything is created.

Every source NIC (in source order: vSphere's device-key order, "Network adapter 1" first) gets one NIC on the
CloudStack network its port group is mapped to; the first is the default NIC. An operator may pin a NIC's IP
by the source NIC's MAC address. A port group without a mapping refuses the whole failover: a VM that comes up
on a guessed network is worse than one that does not come up.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel

from catalog.inventory import RecordedVM
from vmferry.failover_plan import FailoverRefused


class PlannedNic(BaseModel):
    device_key: int
    mac_address: str | None
    source_network: str
    network_id: str
    ip_address: str | None = None


def plan_nics(
    vm: RecordedVM, network_map: Mapping[str, str], ip_addresses: Mapping[str, str] | None = None
) -> list[PlannedNic]:
    """One planned NIC per source NIC, in source order; FailoverRefused names every gap at once."""
    ips = {mac.lower(): ip for mac, ip in (ip_addresses or {}).items()}
    macs = {nic.mac_address for nic in vm.nics if nic.mac_address}
    unknown = sorted(set(ips) - macs)
    if unknown:
        raise FailoverRefused(
            f"VM {vm.name!r}: static IPs were given for MAC address(es) {', '.join(unknown)}, which no NIC of the "
            f"VM has (its NICs: {', '.join(sorted(macs)) or 'none'}); nothing was created"
        )
    unmapped = sorted({nic.network or "(not connected)" for nic in vm.nics if nic.network not in network_map})
    if unmapped:
        raise FailoverRefused(
            f"VM {vm.name!r}: source network(s) {', '.join(repr(n) for n in unmapped)} have no CloudStack network; "
            "add each to the CloudStack block's network_map (port group name -> CloudStack network id) or pass "
            "network_map for this VM. Nothing was created"
        )
    planned = [
        PlannedNic(
            device_key=nic.device_key,
            mac_address=nic.mac_address,
            source_network=nic.network,
            network_id=network_map[nic.network],
            ip_address=ips.get(nic.mac_address or ""),
        )
        for nic in vm.nics
    ]
    seen: dict[str, str] = {}
    for nic in planned:
        if nic.network_id in seen:
            # deployVirtualMachine keys NICs by network (ipToNetworkMap): a second NIC there would be dropped
            raise FailoverRefused(
                f"VM {vm.name!r}: port groups {seen[nic.network_id]!r} and {nic.source_network!r} (or two NICs on "
                f"one) map to the same CloudStack network {nic.network_id}; CloudStack gives a VM one NIC per "
                "network at deploy time. Map them to different networks. Nothing was created"
            )
        seen[nic.network_id] = nic.source_network
    return planned
