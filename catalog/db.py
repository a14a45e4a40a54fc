"""Opening the catalog, migrating it, and running transactions that survive lock contention."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from catalog.errors import CatalogUnavailable

T = TypeVar("T")

MIGRATIONS_DIR = Path(__file__).with_name("migrations")

# MariaDB: 1213 deadlock, 1205 lock wait timeout. Both mean "run the transaction again".
_MYSQL_RETRYABLE = {1213, 1205}


def _is_retryable(exc: BaseException, retry_integrity: bool) -> bool:
    if isinstance(exc, IntegrityError):
        return retry_integrity
    if isinstance(exc, OperationalError):
        orig = exc.orig
        args = getattr(orig, "args", ())
        if args and isinstance(args[0], int) and args[0] in _MYSQL_RETRYABLE:
            return True
        return "database is locked" in str(orig) or "database is busy" in str(orig)
    return False


# A catalog that stops answering must not hold a job (and every qemu-nbd, lease and snapshot it has) for ever:
# connecting, each read, each write and each lock wait end after this many seconds unless the settings say.
DEFAULT_TIMEOUT = 30.0


def _make_engine(url: str, timeout: float) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": timeout}, isolation_level=None)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001 - DBAPI objects
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            cursor.close()

        # pysqlite's deferred BEGIN lets two writers both read and then deadlock on upgrade; taking the write
        # lock at BEGIN serialises writers the way row locks do on MariaDB.
        @event.listens_for(engine, "begin")
        def _begin_immediate(conn) -> None:  # noqa: ANN001 - SQLAlchemy connection
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if parsed.get_backend_name() in ("mysql", "mariadb"):
        seconds = max(1, round(timeout))
        # Without read/write timeouts a frozen connection (a server or network that stops answering) blocks a
        # query for ever; the lock wait timeout bounds waiting for a row a stuck transaction holds.
        limits = {
            "connect_timeout": seconds,
            "read_timeout": seconds,
            "write_timeout": seconds,
            "init_command": f"SET SESSION innodb_lock_wait_timeout={seconds}",
        }
        # READ COMMITTED avoids most gap-lock deadlocks between concurrent upserts.
        return create_engine(
            url, pool_pre_ping=True, isolation_level="READ COMMITTED", pool_recycle=3600, connect_args=limits
        )
    return create_engine(url, pool_pre_ping=True)


class Catalog:
    """The shared catalog. Knows nothing of Prefect; every caller (flows, CLI, reconciler) goes through it."""

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.url = url
        self.timeout = timeout
        self.engine = _make_engine(url, timeout)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def describe(self) -> str:
        """The URL without its password, for messages and logs."""
        return make_url(self.url).render_as_string(hide_password=True)

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        try:
            with self.engine.begin() as connection:
                config = alembic_config(self.url)
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        except OperationalError as exc:
            raise CatalogUnavailable(f"cannot reach the catalog at {self.describe()}: {exc.orig}") from exc

    def check_connection(self) -> None:
        try:
            with self.engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
        except (OperationalError, DBAPIError) as exc:
            raise CatalogUnavailable(f"cannot reach the catalog at {self.describe()}: {exc.orig}") from exc

    def _unavailable(self, exc: DBAPIError) -> CatalogUnavailable:
        return CatalogUnavailable(
            f"the catalog at {self.describe()} failed or did not answer within {self.timeout:g} s "
            f"(VMFERRY_CATALOG_TIMEOUT_SECONDS): {exc.orig}; the job stops here and its resources are released "
            "without the catalog where possible; run the reconciler once the catalog is back"
        )

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A read-mostly session; commits on success, rolls back on error."""
        try:
            with self._sessions.begin() as session:
                yield session
        except OperationalError as exc:
            raise self._unavailable(exc) from exc

    def write(self, work: Callable[[Session], T], *, retry_integrity: bool = False, attempts: int = 12) -> T:
        """Run ``work`` in one transaction, re-running it on deadlocks and lock timeouts.

        ``retry_integrity`` also re-runs it when a concurrent writer won a unique-key race: correct only for
        work that reads before it writes, so the next attempt sees the winner's row. Lock waits are retried
        for at most twice the catalog timeout in all: a lock a frozen transaction holds is not waited out.
        """
        deadline = time.monotonic() + 2 * self.timeout
        for attempt in range(1, attempts + 1):
            try:
                with self._sessions.begin() as session:
                    return work(session)
            except (OperationalError, IntegrityError) as exc:
                last = attempt == attempts or time.monotonic() > deadline
                if last or not _is_retryable(exc, retry_integrity):
                    if isinstance(exc, OperationalError):
                        raise self._unavailable(exc) from exc
                    raise
                time.sleep(random.uniform(0.005, 0.05) * attempt)  # noqa: S311 - jitter, not crypto
        raise AssertionError("unreachable")

    def dispose(self) -> None:
        self.engine.dispose()


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Alembic's ini interpolation treats % specially; URL-encoded passwords contain it.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def open_catalog(url: str | None = None, *, migrate: bool = True, timeout: float | None = None) -> Catalog:
    """Open (and by default migrate) the catalog at ``url``, or the configured one, with the configured timeout."""
    if url is None or timeout is None:
        from vmferry.settings import get_settings

        settings = get_settings()
        url = url or settings.resolved_catalog_url()
        timeout = timeout or settings.catalog_timeout_seconds
    catalog = Catalog(url, timeout=timeout)
    if migrate:
        catalog.migrate()
    return catalog
