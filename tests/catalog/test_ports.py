"""Port leases: unique while held, bounded by the range, expiring, released explicitly."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from sqlalchemy import update

from catalog.errors import PortRangeExhausted
from catalog.jobs import create_job
from catalog.models import PortLease, utcnow
from catalog.ports import held_leases, lease_port, release_job_ports, release_port, renew_lease
from vmferry.settings import PortRange

RANGE = PortRange(20100, 20139)  # 40 ports
HOUR = dt.timedelta(hours=1)


def test_fifty_concurrent_leases_from_forty_ports(catalog):
    jobs = [create_job(catalog, "backup") for _ in range(50)]
    barrier = threading.Barrier(50)
    granted: list[int] = []
    refused: list[Exception] = []
    unexpected: list[Exception] = []

    def lease(job_id: str) -> None:
        barrier.wait()
        try:
            granted.append(lease_port(catalog, job_id, port_range=RANGE, ttl=HOUR).port)
        except PortRangeExhausted as exc:
            refused.append(exc)
        except Exception as exc:
            unexpected.append(exc)

    threads = [threading.Thread(target=lease, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert unexpected == []
    assert len(granted) == 40 and len(set(granted)) == 40
    assert set(granted) == set(RANGE)
    assert len(refused) == 10
    for exc in refused:
        assert "20100-20139 exhausted" in str(exc) and "VMFERRY_NBD_PORT_RANGE" in str(exc)
    assert sorted(lease.port for lease in held_leases(catalog)) == sorted(granted)


def test_an_expired_lease_is_handed_out_again(catalog):
    small = PortRange(20200, 20200)
    crashed, fresh = create_job(catalog, "backup"), create_job(catalog, "backup")
    lease = lease_port(catalog, crashed, port_range=small, ttl=HOUR)
    with pytest.raises(PortRangeExhausted):
        lease_port(catalog, fresh, port_range=small, ttl=HOUR)
    with catalog.session() as session:
        session.execute(update(PortLease).values(expires_at=utcnow() - dt.timedelta(seconds=1)))
    again = lease_port(catalog, fresh, port_range=small, ttl=HOUR)
    assert again.port == lease.port and again.job_id == fresh
    # the crashed job can no longer release or renew what it lost
    assert release_port(catalog, lease.port, crashed) is False
    assert renew_lease(catalog, lease.port, crashed, HOUR) is False
    assert [(held.port, held.job_id) for held in held_leases(catalog)] == [(20200, fresh)]


def test_a_released_port_is_reusable_and_release_is_idempotent(catalog):
    small = PortRange(20300, 20300)
    first, second = create_job(catalog, "backup"), create_job(catalog, "replication")
    lease = lease_port(catalog, first, port_range=small, ttl=HOUR)
    assert release_port(catalog, lease.port, second) is False  # not the owner: nothing released
    assert release_port(catalog, lease.port, first) is True
    assert release_port(catalog, lease.port, first) is False
    assert lease_port(catalog, second, port_range=small, ttl=HOUR).port == lease.port


def test_release_job_ports_frees_every_port_of_that_job_only(catalog):
    failed, other = create_job(catalog, "backup"), create_job(catalog, "backup")
    mine = {lease_port(catalog, failed, port_range=RANGE, ttl=HOUR).port for _ in range(3)}
    theirs = lease_port(catalog, other, port_range=RANGE, ttl=HOUR).port
    assert set(release_job_ports(catalog, failed)) == mine
    assert [held.port for held in held_leases(catalog)] == [theirs]
    assert release_job_ports(catalog, failed) == []


def test_port_range_parsing():
    assert list(PortRange.parse("10100-10102")) == [10100, 10101, 10102]
    for bad in ("10100", "b-c", "10200-10100", "0-5", "1-70000"):
        with pytest.raises(ValueError):
            PortRange.parse(bad)
