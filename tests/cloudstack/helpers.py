"""Hand-made requests for the tests that need what no well-behaved client sends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import httpx

from clients.cloudstack import CloudStackClient, Volume
from infra.lab.cloudstack import CloudStackSimulator
from infra.lab.cloudstack.signature import compute_signature

UNVERIFIED = "unable to verify user credentials and/or request signature"


def expires_in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S+0000")


def raw_call(
    sim: CloudStackSimulator,
    params: dict[str, str],
    *,
    secret_key: str | None = None,
    signature: str | None = None,
    sign: bool = True,
    method: str = "GET",
) -> httpx.Response:
    """Sign ``params`` the way CloudStack verifies (the simulator's own Java mirror) and send them."""
    params = dict(params)
    if sign:
        params["signature"] = signature or compute_signature(params, secret_key or sim.secret_key)
    if method == "GET":
        return httpx.get(sim.url, params=params, timeout=5)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    return httpx.post(sim.url, content=urlencode(params).encode(), headers=form, timeout=5)


def client_for(sim: CloudStackSimulator, *, user: bool = False, page_size: int = 500) -> CloudStackClient:
    """Our client with the simulator's root admin keys, or (``user``) a plain account's."""
    key, secret = (sim.user_api_key, sim.user_secret_key) if user else (sim.api_key, sim.secret_key)
    return CloudStackClient(
        sim.url, key, secret, timeout=5, poll_interval=0.01, max_poll_interval=0.05, job_timeout=10, page_size=page_size
    )


def base_params(sim: CloudStackSimulator, command: str, **extra: str) -> dict[str, str]:
    return {"command": command, "response": "json", "apiKey": sim.api_key, **extra}


def new_volume(cs: CloudStackClient, sim: CloudStackSimulator, name: str = "data", size_gb: int = 1) -> Volume:
    info = sim.info()
    return cs.create_volume(name, size_gb, info.zone_id, info.custom_disk_offering_id)


def new_vm(cs: CloudStackClient, sim: CloudStackSimulator, *, startvm: bool = False, name: str | None = None):
    info = sim.info()
    return cs.deploy_vm(
        zone_id=info.zone_id,
        service_offering_id=info.service_offering_id,
        template_id=info.template_id,
        name=name,
        startvm=startvm,
    )


def ready_volume_on(sim: CloudStackSimulator, pool, name: str = "placed") -> str:
    """A detached 1 GiB volume already Ready on ``pool`` (as after an earlier attach there); its id."""
    cloud = sim.cloud
    with sim._lock:
        volume = cloud.alloc_volume(
            name=name, zone=pool.zone, disk_offering=cloud.disk_offerings[sim.info().custom_disk_offering_id],
            snapshot_id=None, size_gb=1,
        )  # fmt: skip
        cloud._materialize(volume, pool)
    return volume.id
