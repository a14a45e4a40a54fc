"""A Prefect server on PostgreSQL, and process workers for it, as real processes (scale-out tests, operators).

    .venv/bin/python -m infra.prefect_server [--postgres postgresql://root@127.0.0.1:5432/postgres] [--port N]

starts a server on a fresh PostgreSQL database, prints its API URL and runs until interrupted; the server is
stopped and the database dropped on the way out. Tests use :func:`running_prefect_server` and
:func:`start_worker`. Every Prefect setting of these processes (API URL, home, database) is in their own
environment: the calling process's Prefect settings are neither read nor changed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

DEFAULT_POSTGRES = os.environ.get("VMFERRY_PREFECT_POSTGRES", "postgresql://root@127.0.0.1:5432/postgres")
PREFECT = Path(sys.executable).with_name("prefect")
_DATABASE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _with_database(dsn: str, database: str, scheme: str | None = None) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((scheme or parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


async def _admin(dsn: str, statement: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def create_database(admin_dsn: str, name: str) -> None:
    """CREATE DATABASE ``name`` on the server of ``admin_dsn`` (a postgresql:// URL of a database to connect to)."""
    if not _DATABASE_NAME.match(name):
        raise ValueError(f"not a database name we create: {name!r}")
    asyncio.run(_admin(admin_dsn, f'CREATE DATABASE "{name}"'))


def drop_database(admin_dsn: str, name: str) -> None:
    if not _DATABASE_NAME.match(name):
        raise ValueError(f"not a database name we drop: {name!r}")
    asyncio.run(_admin(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def prefect_env(api_url: str, home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a Prefect process talking to ``api_url``: no PREFECT_* setting of ours leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_CLI_PROMPT": "false",
    }
    return env | dict(extra or {})


def _stop(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """SIGTERM the process group (a worker's flow-run processes too), SIGKILL what is left after ``timeout``."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # whatever of the group outlived its leader
    except ProcessLookupError:
        pass
    process.wait()


@dataclass
class PrefectProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20) -> None:
        _stop(self.process, timeout)


@dataclass
class PrefectServer:
    url: str  # the API URL, .../api
    home: Path
    database: str
    process: subprocess.Popen[bytes]
    log_path: Path
    workers: list[PrefectProcess] = field(default_factory=list)

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return prefect_env(self.url, self.home, extra)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_worker(
    server: PrefectServer,
    pool: str,
    name: str,
    *,
    limit: int | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    query_seconds: float = 1,
) -> PrefectProcess:
    """``prefect worker start`` for ``pool`` against ``server``; stopped with the server."""
    argv = [str(PREFECT), "worker", "start", "--pool", pool, "--name", name, "--type", "process"]
    if limit is not None:
        argv += ["--limit", str(limit)]
    extra = {"PREFECT_WORKER_QUERY_SECONDS": str(query_seconds), **(env or {})}
    log_path = server.home / f"worker-{name}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=server.env(extra),
            cwd=cwd,
            start_new_session=True,  # its own process group: stopping it stops its flow runs too
        )
    worker = PrefectProcess(name, process, log_path)
    server.workers.append(worker)
    return worker


def wait_for_workers(server: PrefectServer, pool: str, names: list[str], timeout: float = 60) -> None:
    """Until every named worker has sent a heartbeat for ``pool``."""
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while time.monotonic() < deadline:
        for worker in server.workers:
            if worker.name in names and worker.process.poll() is not None:
                raise RuntimeError(f"worker {worker.name} exited: {worker.log()[-3000:]}")
        response = httpx.post(
            f"{server.url}/work_pools/{pool}/workers/filter", json={"limit": 100, "offset": 0}, timeout=5
        )
        if response.status_code == 200:
            seen = {w["name"] for w in response.json()}
            if set(names) <= seen:
                return
        time.sleep(0.5)
    raise RuntimeError(f"workers {sorted(set(names) - seen)} did not report to {pool} within {timeout:.0f} s")


@contextmanager
def running_prefect_server(
    workdir: Path | None = None,
    *,
    postgres: str = DEFAULT_POSTGRES,
    port: int | None = None,
    timeout: float = 120,
    services_off: tuple[str, ...] = ("SCHEDULER",),
    settings: Mapping[str, str] | None = None,
) -> Iterator[PrefectServer]:
    """A Prefect server on a fresh PostgreSQL database; workers, server and database are gone afterwards.

    ``services_off`` names server services (PREFECT_SERVER_SERVICES_<NAME>_ENABLED) not to run: by default
    the scheduler, so deployments with schedules start no run of their own while a test runs.
    ``settings``: more PREFECT_* settings of the server process (a faster scheduler loop, say).
    """
    home = Path(tempfile.mkdtemp(prefix="prefect-server-", dir=workdir))
    database = f"prefect_{secrets.token_hex(6)}"
    port = port or free_port()
    url = f"http://127.0.0.1:{port}/api"
    create_database(postgres, database)
    try:
        extra = {
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": _with_database(postgres, database, "postgresql+asyncpg"),
            "PREFECT_SERVER_UI_ENABLED": "false",
            # Leases of concurrency slots on disk, not in the server's memory: a restarted server still knows
            # who holds each slot, and its repossessor hands back those of runs that died (docs/faults.md).
            "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.filesystem",
            **{f"PREFECT_SERVER_SERVICES_{name}_ENABLED": "false" for name in services_off},
            **(settings or {}),
        }
        log_path = home / "server.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=prefect_env(url, home, extra),
                start_new_session=True,
            )
        server = PrefectServer(url, home, database, process, log_path)
        try:
            _wait_healthy(server, timeout)
            yield server
        finally:
            for worker in server.workers:
                worker.stop()
            _stop(process)
    finally:
        drop_database(postgres, database)


def _wait_healthy(server: PrefectServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"prefect server exited with {server.process.returncode}: {server.log()[-3000:]}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"prefect server did not answer within {timeout:.0f} s: {server.log()[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, help="a postgresql:// URL to create the database")
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    with running_prefect_server(postgres=args.postgres, port=args.port) as server:
        print(f"PREFECT_API_URL={server.url}  (database {server.database}, home {server.home})", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
