"""Inventory benchmark: discovery and VM lookups against vcsim estates of growing size.

    .venv/bin/python -m bench.inventory [--sizes 1000,5000] [--lookups 20] [--page-size 500]

For every estate size a private lab vcsim starts with that many VMs (two resource pools, half each), and the
benchmark times, in the same process and against the same vcsim:

- discovery: ``list_vms`` (RetrievePropertiesEx pages of ``--page-size`` VMs with their hardware), against the
  reference of the old way, one ``RetrieveContents`` call for every VM's whole property set;
- lookups, each the median of ``--lookups`` runs: by instance UUID (SearchIndex.FindByUuid, then the
  properties of that VM only), by moref, and by name (a paged name-only query, then that VM's properties),
  against the reference of the old ``find_vm``: list every VM with its hardware and filter.

The figures to read are each lookup's time at the largest estate divided by its time at the smallest: close to 1
means the cost does not grow with the estate. vcsim answers from memory on this machine, so absolute times are
a lower bound; against a vCenter every avoided object is also avoided serialisation and network time.

Measured on the shared 2-core development VM (1,000 and 5,000 VMs): see docs/vsphere-as-real.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common.vsphere import _VM_PROPERTIES as VM_PROPERTIES
from common.vsphere import VSphereClient, VSphereEndpoint
from infra.lab.vcenter import LabVCenter, start_vcsim, stop_vcsim


def _timed(action: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _old_find(client: VSphereClient, handle: str) -> object:
    """What find_vm did before: every VM with its hardware in one RetrieveContents call, then a filter."""
    collector = client.service_instance.content.propertyCollector
    vcenter = client.vcenter_id()
    with client.every_vm(VM_PROPERTIES) as spec:
        for obj in collector.RetrieveContents([spec]):
            props = {prop.name: prop.val for prop in obj.propSet}
            if handle in (props.get("name"), props.get("config.instanceUuid"), obj.obj._moId):
                return client._observed(vcenter, obj.obj, props)
    raise LookupError(handle)


def measure(size: int, lookups: int, page_size: int, workdir: Path) -> dict[str, float]:
    lab: LabVCenter = start_vcsim(workdir, extra_args=["-machines-per-pool", str(size // 2)], timeout=600)
    try:
        endpoint = VSphereEndpoint(
            host=lab.host, port=lab.port, username=lab.user, password=lab.password, thumbprint=lab.thumbprint
        )
        with VSphereClient(endpoint, page_size=page_size) as client:
            start = time.perf_counter()
            vms = client.list_vms()
            discovery = time.perf_counter() - start
            assert len(vms) >= size, f"vcsim has {len(vms)} VMs, expected {size}"
            target = vms[len(vms) // 2]
            start = time.perf_counter()
            try:
                _old_find(client, "no such VM")
            except LookupError:
                pass
            old_discovery = time.perf_counter() - start
            return {
                "VMs": len(vms),
                "discovery (paged)": discovery,
                "discovery (one RetrieveContents)": old_discovery,
                "lookup by UUID": _timed(lambda: client.find_vm(target.instance_uuid), lookups),
                "lookup by moref": _timed(lambda: client.find_vm(target.moref), lookups),
                "lookup by name": _timed(lambda: client.find_vm(target.name), lookups),
                "old lookup (list + filter)": _timed(
                    lambda: _old_find(client, target.instance_uuid), max(3, lookups // 5)
                ),
            }
    finally:
        stop_vcsim(lab)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,5000", help="comma-separated estate sizes (VMs)")
    parser.add_argument("--lookups", type=int, default=20)
    parser.add_argument("--page-size", type=int, default=500)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="vmferry-bench-inventory-") as tmp:
        for size in sizes:
            results.append(measure(size, args.lookups, args.page_size, Path(tmp) / str(size)))
    keys = [k for k in results[0] if k != "VMs"]
    print(f"{'':34}" + "".join(f"{int(r['VMs']):>12,} VMs" for r in results) + f"{'growth':>12}")
    for key in keys:
        cells = "".join(f"{r[key] * 1000:>13.1f} ms" for r in results)
        print(f"{key:34}{cells}{results[-1][key] / results[0][key]:>11.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
