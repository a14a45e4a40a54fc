"""``python -m agent --config agent.json [--host 127.0.0.1] [--port 8443]``: run the reference agent."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import uvicorn

from agent.config import load_config
from agent.jobs import JobManager
from agent.service import create_app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent", description="vmferry reference agent")
    parser.add_argument("--config", type=Path, required=True, help="JSON config (mode 600): token, vcenter")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate; without it the agent speaks plain HTTP")
    parser.add_argument("--tls-key", type=Path)
    args = parser.parse_args(argv)
    config = load_config(args.config)
    manager = JobManager(config)
    app = create_app(config, manager)
    try:
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            log_level="warning",
            ssl_certfile=str(args.tls_cert) if args.tls_cert else None,
            ssl_keyfile=str(args.tls_key) if args.tls_key else None,
        )
    finally:
        # SIGTERM: running jobs are cancelled and remove their snapshots before the process ends.
        manager.wait_idle(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
