"""Where the tests' catalogs live. MariaDB is real (127.0.0.1:3306, root, no password by default)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CATALOG_BACKENDS = ["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)]

MARIADB_HOST = os.environ.get("VMFERRY_TEST_MARIADB_HOST", "127.0.0.1")
MARIADB_PORT = int(os.environ.get("VMFERRY_TEST_MARIADB_PORT", "3306"))
MARIADB_USER = os.environ.get("VMFERRY_TEST_MARIADB_USER", "root")
MARIADB_PASSWORD = os.environ.get("VMFERRY_TEST_MARIADB_PASSWORD", "")


def running_in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_mariadb(host: str = MARIADB_HOST, port: int = MARIADB_PORT) -> None:
    """Skip when MariaDB is missing on a developer's machine; in CI a missing MariaDB fails the test."""
    # Imported here, like every hub fixture's imports in tests/conftest.py: the agent's tests load this module
    # in a venv that has only the agent (tests/packaging/test_agent_alone.py).
    import pymysql

    try:
        pymysql.connect(host=host, port=port, user=MARIADB_USER, password=MARIADB_PASSWORD, connect_timeout=3).close()
    except pymysql.err.OperationalError as exc:
        message = f"MariaDB at {host}:{port} is unreachable ({exc.args[-1]})"
        if running_in_ci():
            pytest.fail(f"{message}; CI=true requires it, so this is a failure, not a skip", pytrace=False)
        pytest.skip(f"{message}; start it to run the MariaDB half of the catalog tests")


@contextmanager
def fresh_catalog_url(backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.db'}"
        return
    require_mariadb()
    import pymysql

    name = f"vmferry_t_{secrets.token_hex(6)}"
    admin = pymysql.connect(host=MARIADB_HOST, port=MARIADB_PORT, user=MARIADB_USER, password=MARIADB_PASSWORD)
    try:
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")  # name is ours, not user input
        yield f"mysql+pymysql://{MARIADB_USER}:{MARIADB_PASSWORD}@{MARIADB_HOST}:{MARIADB_PORT}/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.close()
