"""common.names: every deterministic name, its parser where one exists, and names built from hostile input."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from common import names
from vmferry.repository import Repository, RepositoryError

HOSTILE = [
    "web 01",
    "../../etc/passwd",
    "a/b\\c",
    "Сервер-база",  # Cyrillic
    "数据库",
    "db\x00null",
    "tab\tand\nnewline",
    "x" * 5000,
    "%&><",
    "",
]
PREFECT_KEY = re.compile(r"^[a-z0-9-]+$")  # prefect.types.names: artifact keys


@pytest.mark.parametrize("key", [0, 7, 2000, 16000, 2**31 - 1])
def test_disk_ids_round_trip(key: int) -> None:
    disk = names.disk_id(key)
    assert disk == f"disk-{key}" and names.is_disk_id(disk)
    assert names.device_key_of(disk) == key
    retired = names.retired_disk_id(disk, 42)
    assert retired == f"{disk}~42" and not names.is_disk_id(retired)
    assert names.original_disk_id(retired) == disk and names.original_disk_id(disk) == disk


@pytest.mark.parametrize("text", [*HOSTILE, "disk-", "disk--1", "disk-12a", "disk-2000~3", "Disk-2000", " disk-1"])
def test_anything_but_a_disk_id_is_refused_where_a_name_reaches_a_file_or_export(text: str) -> None:
    assert not names.is_disk_id(text)
    for build in (
        names.device_key_of,
        names.disk_file_name,
        names.export_log_file_name,
        lambda t: names.export_name(1, t),
        lambda t: names.volume_name("0123456789abcdef", 1, t, 5),
    ):
        with pytest.raises(ValueError, match="not a catalog disk id"):
            build(text)


def test_names_outside_the_hub_are_made_of_ids_only() -> None:
    assert names.export_name(12, "disk-2000") == "vm12-disk-2000"
    assert names.volume_name("a1b2c3d4-e5f6", 3, "disk-2001", 17) == "vmferry-vm3-disk-2001-r17-a1b2c3d4"
    assert names.destination_vm_name(3, "test") == "vmferry-vm3-test"
    assert names.destination_vm_name(3, "live") == "vmferry-vm3-live"
    with pytest.raises(ValueError):
        names.destination_vm_name(3, "test; rm -rf /")
    with pytest.raises((ValueError, TypeError)):
        names.export_name("1; reboot", "disk-2000")  # type: ignore[arg-type]


@pytest.mark.parametrize("job_id", ["0f8c5a5e-3c1e-4e8b-9a55-0c8f6c2b1d2e", "a", "job.with-dots_1"])
def test_job_snapshot_names_round_trip(job_id: str) -> None:
    name = names.job_snapshot_name(job_id)
    assert name.startswith(names.SNAPSHOT_PREFIX) and names.job_of_snapshot(name) == job_id
    assert job_id in names.job_snapshot_description(job_id)


@pytest.mark.parametrize("name", ["before-upgrade", "vmferry-", "VMFERRY-x", "", "my vmferry-x"])
def test_a_snapshot_not_named_by_us_claims_no_job(name: str) -> None:
    assert names.job_of_snapshot(name) is None


def test_the_cbt_stun_snapshot_claims_a_job_no_catalog_has() -> None:
    # the reconciler then finds no such job and keeps it ("absent"): a name alone never gets a snapshot removed
    assert names.job_of_snapshot(names.CBT_ENABLE_SNAPSHOT) == "cbt-enable"


def test_repository_names_round_trip(tmp_path: Path) -> None:
    assert names.parse_vm_dir(names.vm_dir_name(12)) == 12
    assert names.parse_point_dir(names.point_dir_name(7)) == (7, False)
    assert names.parse_point_dir(names.point_dir_name(7, partial=True)) == (7, True)
    for foreign in ["vm-", "vm-1a", "point-", "point-7.partial.old", "point-7.PARTIAL", "vm-1/..", *HOSTILE]:
        assert names.parse_vm_dir(foreign) is None and names.parse_point_dir(foreign) is None
    repository = Repository(tmp_path, "r")
    partial = repository.prepare_partial(12, 7)
    assert partial == tmp_path / "vm-12" / "point-7.partial"
    assert repository.partial_dirs() == [partial]
    assert repository.relative_disk_path(12, 7, "disk-2000") == "vm-12/point-7/disk-2000.qcow2"
    with pytest.raises(RepositoryError, match="not a catalog disk id"):
        repository.relative_disk_path(12, 7, "../disk-2000")


def test_owner_tags_round_trip_and_name_only_this_installation() -> None:
    tags = names.owner_tags("inst-1", "5012-abc", 17, 2)
    assert set(tags) == set(names.OWNER_TAG_KEYS)
    assert names.tagged_disk(tags, "inst-1") == 17
    assert names.tagged_disk(tags, "inst-2") is None  # another catalog's volume
    assert names.tagged_disk({}, "inst-1") is None
    assert names.tagged_disk({**tags, names.TAG_DISK: "17; drop"}, "inst-1") is None
    assert names.tagged_disk({**tags, names.TAG_DISK: "-1"}, "inst-1") is None


@pytest.mark.parametrize("vm_name", HOSTILE)
def test_artifact_keys_are_what_prefect_accepts_for_any_vm_name(vm_name: str) -> None:
    key = names.artifact_key("backup", vm_name)
    assert PREFECT_KEY.match(key), key
    assert key.startswith("backup-") and len(key) <= len("backup-") + names.MAX_SLUG + 11
    assert names.artifact_key("backup", vm_name) == key  # deterministic
    assert names.log_artifact_key(key) == f"{key}-log" and PREFECT_KEY.match(names.log_artifact_key(key))


def test_ascii_names_keep_their_readable_keys() -> None:
    assert names.slug("DB 3/prod_%x") == "db-3-prod-x"
    assert names.artifact_key("backup", "DB3.example") == "backup-db3-example"
    assert names.slug("") == "unnamed"


def test_names_that_lose_letters_in_a_key_do_not_share_it() -> None:
    # all-Cyrillic names would all slug to nothing; long names differing only at the end would be cut alike
    assert names.slug("Сервер") != names.slug("База")
    assert names.slug("x" * 300 + "a") != names.slug("x" * 300 + "b")
    assert names.slug("Café").startswith("cafe-")


@pytest.mark.parametrize("vm_name", HOSTILE)
def test_prefect_names_never_carry_what_prefect_refuses(vm_name: str) -> None:
    banned = set("/%&><")
    assert not banned & set(names.repository_limit_name(vm_name).removeprefix("repo-backup-"))
    assert not banned & set(names.vm_limit_name(vm_name)) and not banned & set(names.hub_limit_name(vm_name))
    assert not banned & set(names.vcenter_limit_name(vm_name, 8443))
    assert names.vm_tag(vm_name) == f"vm:{vm_name}"  # a tag is data; the UI filters on it as given


def test_limit_names_an_earlier_release_created_keep_their_names() -> None:
    assert names.repository_limit_name("Main Repo") == "repo-backup-Main Repo"
    assert names.vcenter_limit_name("VC.example.com") == "vcenter-snapshots-vc.example.com"
    assert names.vcenter_limit_name("fe80::1", 8443) == "vcenter-snapshots-fe80-1-8443"
    assert names.vm_limit_name(" 5012-ABC ") == "vm-5012-abc"
    assert names.vm_volumes_limit_name("0123456789", 4) == "vm-volumes-01234567-4"


def test_flow_run_names() -> None:
    assert names.BACKUP_RUN.format(vm="db3", kind="full") == "backup-db3-full"
    assert names.verify_run_name(7, "db3", True) == "verify-point-7"
    assert names.verify_run_name(None, "db3", True) == "verify-db3-boot"
    assert names.verify_run_name(None, None, False) == "verify-newest"
    assert names.disk_event_resource("5012-abc", 2000) == "vmferry.vm.5012-abc.disk.2000"
