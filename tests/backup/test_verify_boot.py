"""``verify --boot``: a restore point of the lab guest boots in qemu; one whose OS disk lost its boot sector does not,
and the failure comes with the screen. Each boot is bounded by infra.lab.guest.BOOT_TIMEOUT_S."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from catalog.inventory import find_vm
from catalog.restore_points import get_point
from flows.backup import backup_vm
from flows.verify import VerificationFailed, verify_restore_point
from infra.lab.guest import BOOT_TIMEOUT_S, LOGIN_PROMPT, seed_guest_vm
from infra.lab.mutate import write_disk_bytes

pytestmark = pytest.mark.usefixtures("prefect_backend", "nbd_port_range")


def boot_artifact(point_id: int) -> str:
    with get_client(sync_client=True) as client:
        response = client.request(
            "POST",
            "/artifacts/filter",
            json={"artifacts": {"key": {"any_": [f"boot-verify-point-{point_id}"]}}, "sort": "ID_DESC", "limit": 1},
        )
    (artifact,) = response.json()
    return str(artifact["data"])


def test_a_good_point_boots_and_one_with_a_zeroed_boot_sector_fails_with_its_screen(
    lab, repository_block, agent_block, lab_vcenter_block, configured_catalog, tmp_path, monkeypatch
):
    monkeypatch.setenv("VMFERRY_BOOT_VERIFY_DIR", str(tmp_path / "screens"))
    name = f"guest-{uuid.uuid4().hex[:8]}"
    seed_guest_vm(lab.vcenter, lab.workdir, name, data_disks=1)
    good = backup_vm(name, repository_block, agent_block, lab_vcenter_block)

    verify_restore_point(good.id, repository_block, boot=True, boot_timeout_s=BOOT_TIMEOUT_S)
    report = boot_artifact(good.id)
    assert "boots" in report and "does NOT boot" not in report and LOGIN_PROMPT in report
    assert "data:image/png;base64," in report

    os_disk = next(d for d in find_vm(configured_catalog, name).disks if d.is_boot)
    write_disk_bytes(lab.vcenter, name, os_disk.device_key, 0, bytes(512))
    bad = backup_vm(name, repository_block, agent_block, lab_vcenter_block)
    assert get_point(configured_catalog, bad.id).parent_id == good.id  # an incremental on the good chain

    with pytest.raises(VerificationFailed, match="does not boot: the firmware found nothing to boot") as failed:
        verify_restore_point(None, repository_block, vm=name, boot=True, boot_timeout_s=BOOT_TIMEOUT_S)
    screenshot = Path(str(failed.value).rsplit("screenshot ", 1)[1])
    assert screenshot.read_bytes().startswith(b"\x89PNG")
    report = boot_artifact(bad.id)
    assert "does NOT boot" in report and "data:image/png;base64," in report

    verify_restore_point(good.id, repository_block)  # the boots wrote nothing: every file still reads as stored
