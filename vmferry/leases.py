"""Keeping a running job's port leases alive. Prefect-free: the copy's compensation stack enters it.

A lease expires so that a crashed job's ports come back; a job that is alive must never see its ports expire
under it, however long its copy runs, so a thread renews them while the job holds them.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from catalog.db import Catalog
from catalog.ports import renew_job_leases

log = logging.getLogger(__name__)


def renewal_interval(ttl: dt.timedelta) -> float:
    """A third of the lease: two renewals can fail (a catalog that stalls) before a lease runs out."""
    return max(ttl.total_seconds() / 3, 0.1)


@contextmanager
def renewing_leases(catalog: Catalog, job_id: str, ttl: dt.timedelta) -> Iterator[None]:
    """Renew every lease ``job_id`` holds every third of ``ttl`` until the block ends."""
    stop = threading.Event()
    interval = renewal_interval(ttl)

    def renew() -> None:
        while not stop.wait(interval):
            try:
                renew_job_leases(catalog, job_id, ttl)
            except Exception as exc:  # the next round tries again; the reconciler never frees a live job's port
                log.warning("could not renew the port leases of job %s: %s", job_id, exc)

    thread = threading.Thread(target=renew, name=f"lease-renewer-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=interval + 30)
