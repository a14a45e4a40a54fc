"""NBD port leases held in the catalog, so two workers or a restarted hub never hand out the same port.

A lease is a row keyed by the port: the primary key makes a port unique while held. A lease expires, so a
crashed job's ports come back; a running job renews its leases (``renew_job_leases``) so they never expire under
it, and releases them explicitly on success and on failure. The allocator never hands out a port the caller's
``in_use`` says is served (an expired lease whose qemu-nbd still runs).
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable

from pydantic import BaseModel
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from catalog.db import Catalog
from catalog.errors import PortRangeExhausted
from catalog.models import PortLease, utcnow
from vmferry.settings import PortRange

_rng = random.SystemRandom()


class Lease(BaseModel):
    port: int
    job_id: str
    purpose: str | None
    expires_at: dt.datetime


def _not_in_use(candidates: list[int], in_use: Callable[[int], bool] | None) -> int | None:
    """A random one of ``candidates`` that nothing serves, or None."""
    for port in _rng.sample(candidates, len(candidates)):
        if in_use is None or not in_use(port):
            return port
    return None


def _try_lease(
    session: Session,
    port_range: PortRange,
    job_id: str,
    purpose: str | None,
    ttl: dt.timedelta,
    in_use: Callable[[int], bool] | None = None,
) -> Lease | None:
    now = utcnow()
    held = dict(
        session.execute(
            select(PortLease.port, PortLease.expires_at).where(
                PortLease.port.between(port_range.first, port_range.last)
            )
        ).all()
    )
    free = [port for port in port_range if port not in held]
    expired = [port for port, expires_at in held.items() if expires_at <= now]
    if not free and not expired:
        soonest = min(held.values())
        raise PortRangeExhausted(
            f"NBD port range {port_range} exhausted: all {len(port_range)} ports are leased by running jobs "
            f"(the first lease expires at {soonest:%Y-%m-%d %H:%M:%S} UTC). Widen VMFERRY_NBD_PORT_RANGE, "
            "lower the number of concurrent jobs, or run the reconciler to free abandoned leases."
        )
    expires_at = now + ttl
    # A random free port, so concurrent allocators rarely pick the same one; never one something still serves.
    port = _not_in_use(free, in_use)
    if port is not None:
        session.add(PortLease(port=port, job_id=job_id, purpose=purpose, leased_at=now, expires_at=expires_at))
        session.flush()
        return Lease(port=port, job_id=job_id, purpose=purpose, expires_at=expires_at)
    # an expired lease whose export is still alive is not abandoned: its job (or its orphan) still serves there
    port = _not_in_use(expired, in_use)
    if port is None:
        raise PortRangeExhausted(
            f"NBD port range {port_range} exhausted: every port is leased or still served (expired leases whose "
            "qemu-nbd runs are not reused). Widen VMFERRY_NBD_PORT_RANGE, lower the number of concurrent jobs, or "
            "run the reconciler to stop orphaned exports and free abandoned leases."
        )
    taken = session.execute(
        update(PortLease)
        .where(PortLease.port == port, PortLease.expires_at <= now)
        .values(job_id=job_id, purpose=purpose, leased_at=now, expires_at=expires_at)
    ).rowcount
    return Lease(port=port, job_id=job_id, purpose=purpose, expires_at=expires_at) if taken == 1 else None


def lease_port(
    catalog: Catalog,
    job_id: str,
    *,
    port_range: PortRange,
    ttl: dt.timedelta,
    purpose: str | None = None,
    in_use: Callable[[int], bool] | None = None,
) -> Lease:
    """Lease one port of ``port_range`` to ``job_id``; raises PortRangeExhausted when none is free.

    ``in_use(port)`` True: something serves that port (a live export, a listener), so it is not handed out even
    when its lease expired."""
    for _ in range(4 * len(port_range) + 8):
        try:
            lease = catalog.write(lambda session: _try_lease(session, port_range, job_id, purpose, ttl, in_use))
        except IntegrityError:
            continue  # another allocator took that port between our read and our insert
        if lease is not None:
            return lease
    raise PortRangeExhausted(
        f"could not lease a port of {port_range}: every attempt lost a race with a concurrent allocator"
    )


def release_port(catalog: Catalog, port: int, job_id: str) -> bool:
    """Release a lease held by ``job_id``. Idempotent: returns False when it was not (or no longer) held."""
    return bool(
        catalog.write(
            lambda session: (
                session.execute(delete(PortLease).where(PortLease.port == port, PortLease.job_id == job_id)).rowcount
            )
        )
    )


def release_job_ports(catalog: Catalog, job_id: str) -> list[int]:
    """Release every port ``job_id`` holds: the copy's last compensation, after its exports stopped, on failure and
    on success, so a lease taken by a task attempt whose answer was lost goes too."""

    def work(session: Session) -> list[int]:
        ports = list(session.scalars(select(PortLease.port).where(PortLease.job_id == job_id)))
        session.execute(delete(PortLease).where(PortLease.job_id == job_id))
        return ports

    return catalog.write(work)


def renew_lease(catalog: Catalog, port: int, job_id: str, ttl: dt.timedelta) -> bool:
    """Push a long job's lease expiry out; False when the lease was lost (expired and taken)."""
    return bool(
        catalog.write(
            lambda session: (
                session.execute(
                    update(PortLease)
                    .where(PortLease.port == port, PortLease.job_id == job_id)
                    .values(expires_at=utcnow() + ttl)
                ).rowcount
            )
        )
    )


def renew_job_leases(catalog: Catalog, job_id: str, ttl: dt.timedelta) -> int:
    """Push every lease ``job_id`` holds to ``ttl`` from now (a running job's renewer); how many it holds."""
    return int(
        catalog.write(
            lambda session: (
                session.execute(
                    update(PortLease).where(PortLease.job_id == job_id).values(expires_at=utcnow() + ttl)
                ).rowcount
            )
        )
    )


def held_leases(catalog: Catalog, job_id: str | None = None) -> list[Lease]:
    with catalog.session() as session:
        query = select(PortLease).order_by(PortLease.port)
        if job_id is not None:
            query = query.where(PortLease.job_id == job_id)
        return [
            Lease(port=row.port, job_id=row.job_id, purpose=row.purpose, expires_at=row.expires_at)
            for row in session.scalars(query)
        ]
