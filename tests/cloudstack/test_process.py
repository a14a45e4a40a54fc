"""The simulator as a separate process (python -m infra.lab.cloudstack), faults through its admin endpoint."""

from __future__ import annotations

import json
import stat

import pytest

from clients.cloudstack import CloudStackClient, CloudStackError, CloudStackJobFailed, device_path_for_volume
from infra.lab.cloudstack import start_simulator_process


def test_simulator_process_end_to_end(tmp_path):
    hub_id = "0b5e5a52-5a3c-4c9b-9f0a-2d9c4b1e7a10"
    sim = start_simulator_process(tmp_path / "cs", job_delay=0.02, hub_vm_id=hub_id)
    try:
        info = sim.info
        assert info.hub_vm_id == hub_id
        state_file = tmp_path / "cs" / "simulator.json"
        assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
        assert json.loads(state_file.read_text())["secret_key"] == info.secret_key

        client = CloudStackClient(info.url, info.api_key, info.secret_key, timeout=5, poll_interval=0.01)
        volume = client.create_volume("p", 1, info.zone_id, info.custom_disk_offering_id)
        client.attach_volume(volume.id, hub_id)
        assert device_path_for_volume(tmp_path / "cs" / "dev", volume.id).exists()

        sim.inject_fault("detachVolume", kind="job-failure", errortext="detach failed on host")
        with pytest.raises(CloudStackJobFailed, match='"detach failed on host"'):
            client.detach_volume(volume.id)
        sim.inject_fault("listVolumes", errortext="over the admin API", errorcode=431, cserrorcode=4350)
        with pytest.raises(CloudStackError) as caught:
            client.list_volumes()
        assert (caught.value.errorcode, caught.value.errortext) == (431, "over the admin API")
        sim.clear_faults()
        assert client.detach_volume(volume.id).device_id is None
        client.close()
    finally:
        sim.stop()
    assert sim.process.returncode == 0
