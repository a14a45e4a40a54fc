"""A job the agent would run, sent without the right token, is refused with 401 and changes nothing."""

from __future__ import annotations

import base64
import json
import subprocess
import time
import uuid

import httpx
import pytest

from clients.qemu import create_qcow2, start_qemu_nbd, stop_qemu_nbd
from common.contract import JobRequest, Target
from flows.discover import discover
from tests.copy.helpers import vm_snapshot_names
from vmferry.settings import PortRange

pytestmark = pytest.mark.usefixtures("prefect_backend", "nbd_port_range")


def _untouched(path) -> bool:
    """A fresh qcow2 nothing wrote to maps as unallocated only."""
    out = subprocess.run(["qemu-img", "map", "-U", "--output=json", str(path)], capture_output=True, check=True)
    return all(not extent["data"] for extent in json.loads(out.stdout))


def test_a_valid_job_with_a_wrong_token_creates_no_job_and_no_snapshot(
    make_scratch_vm, lab, agent_process, lab_vcenter_block, configured_catalog, nbd_port_range, tmp_path
):
    name = make_scratch_vm(disks=2)
    (vm,) = discover(lab_vcenter_block, [name])
    ports = list(PortRange.parse(nbd_port_range))[-2:]  # this test's own: nothing else runs meanwhile
    servers, targets = [], []
    try:
        for disk, port in zip(vm.present_disks(), ports, strict=True):
            path = tmp_path / f"{disk.disk_id}.qcow2"
            create_qcow2(path, disk.capacity_bytes)
            server = start_qemu_nbd(path, export_name=disk.disk_id, bind_address="127.0.0.1", port=port)
            servers.append(server)
            targets.append(Target(device_key=disk.device_key, nbd_url=server.url, capacity_bytes=disk.capacity_bytes))
        job_id = f"wrong-token-{uuid.uuid4().hex[:12]}"
        body = JobRequest(job_id=job_id, vm=vm.instance_uuid, kind="full", targets=targets).model_dump(mode="json")
        good = {"Authorization": f"Bearer {agent_process.token}"}
        jobs_url = f"{agent_process.url}/api/v1/jobs"
        refused = [
            {},
            {"Authorization": "Bearer not-the-token"},
            {"Authorization": f"Bearer {agent_process.token}x"},  # a prefix of the right token is not enough
            {"Authorization": f"Bearer {agent_process.token[:-1]}"},
            {"Authorization": "Basic " + base64.b64encode(f"vmferry:{agent_process.token}".encode()).decode()},
        ]
        for headers in refused:
            response = httpx.post(jobs_url, json=body, headers=headers)
            assert response.status_code == 401, headers
            assert response.headers["www-authenticate"] == "Bearer"
            assert agent_process.token not in response.text
        time.sleep(1)  # an accepted job would have its snapshot by now

        assert httpx.get(f"{jobs_url}/{job_id}", headers=good).status_code == 404
        assert httpx.get(f"{agent_process.url}/api/v1/health", headers=good).json()["running_jobs"] == []
        assert vm_snapshot_names(lab, name) == []
        assert all(_untouched(server.file_path) for server in servers)

        # The same body with the right token is a job the agent runs: the refusals were about the token alone.
        assert httpx.post(jobs_url, json=body, headers=good).status_code == 202
        deadline = time.monotonic() + 60
        while (status := httpx.get(f"{jobs_url}/{job_id}", headers=good).json())["state"] not in (
            "succeeded",
            "failed",
            "cancelled",
        ):
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
        assert status["state"] == "succeeded" and status["snapshot_removed"]
        assert not all(_untouched(server.file_path) for server in servers)
    finally:
        for server in servers:
            stop_qemu_nbd(server.pid, server.file_path)
