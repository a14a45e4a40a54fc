"""`python -m infra.lab.cloudstack --state-dir D --port P`: the CloudStack simulator as a process.

It writes ``D/simulator.json`` (mode 0600: it holds the generated secret key) with the endpoint, keys and seed
ids, prints the same JSON on one line, and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from infra.lab.cloudstack.cloud import KVM_MAX_DATA_VOLUMES
from infra.lab.cloudstack.server import CloudStackSimulator

INFO_FILE = "simulator.json"


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.lab.cloudstack", description=__doc__)
    parser.add_argument("--state-dir", type=Path, required=True, help="volumes, dev links and simulator.json")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--api-key", default=None, help="default: generated")
    parser.add_argument(
        "--secret-key-file", type=Path, default=None, help="file holding the secret key (default: generated)"
    )
    parser.add_argument("--job-delay", type=float, default=0.5, help="seconds before an async job completes")
    parser.add_argument(
        "--max-data-disks", type=int, default=KVM_MAX_DATA_VOLUMES, help="the KVM row's maxdatavolumeslimit"
    )
    parser.add_argument("--page-size", type=int, default=500, help="default.page.size (also the largest page)")
    parser.add_argument(
        "--hub-disk-bus", choices=("virtio-blk", "virtio-scsi"), default="virtio-blk", help="how the hub sees disks"
    )
    parser.add_argument("--hub-vm-id", default=None, help="uuid of the hub VM (default: generated)")
    parser.add_argument("--no-admin", action="store_true", help="do not serve the /_sim admin API")
    parser.add_argument(
        "--boot-vms", action="store_true", help="really run started VMs in qemu (console at /_sim/vms/ID/console)"
    )
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr)
    args.state_dir.mkdir(parents=True, exist_ok=True)
    secret = args.secret_key_file.read_text().strip() if args.secret_key_file else None
    sim = CloudStackSimulator(
        args.state_dir,
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        secret_key=secret,
        job_delay=args.job_delay,
        max_data_disks=args.max_data_disks,
        hub_vm_id=args.hub_vm_id,
        admin=not args.no_admin,
        default_page_size=args.page_size,
        hub_disk_bus=args.hub_disk_bus,
        boot_vms=args.boot_vms,
    ).start()

    done = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    info = json.dumps(sim.info().to_dict())
    _write_private(args.state_dir / INFO_FILE, info + "\n")
    print(info, flush=True)
    try:
        done.wait()
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
