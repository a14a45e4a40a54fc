"""What operators read in the UI: a description on every deployment and on every parameter of its run form."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from deployments.deploy import load_config
from orchestration.runs import describe_progress, table_rows

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENTS = load_config(ROOT / "deployments" / "prefect.yaml")["deployments"]
ENTRYPOINTS = sorted({d["entrypoint"] for d in DEPLOYMENTS})


def load_flow(entrypoint: str):
    path, name = entrypoint.split(":")
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)


@pytest.mark.parametrize("entrypoint", ENTRYPOINTS)
def test_every_parameter_has_a_description(entrypoint):
    properties = load_flow(entrypoint).parameters.model_dump()["properties"]
    undescribed = sorted(name for name, schema in properties.items() if not schema.get("description"))
    assert undescribed == [], f"{entrypoint}: parameters without a description (docstring Args): {undescribed}"


def test_every_deployment_has_a_description():
    assert [f"{d['entrypoint']} {d['name']}" for d in DEPLOYMENTS if not (d.get("description") or "").strip()] == []


def test_progress_says_bytes_rate_and_time_left():
    assert describe_progress("copy of db3 disk-2000", 512 * 2**20, 2048 * 2**20, 10) == (
        "copy of db3 disk-2000: 512.0 MiB of 2,048.0 MiB, 51.2 MiB/s, about 30 s left"
    )
    assert describe_progress("copy of x", 0, 2**30, 0) == "copy of x: 0.0 MiB of 1,024.0 MiB"
    assert describe_progress("copy of x", 2**20, 2**30, 1).endswith("about 17 min left")


def test_table_headings_are_words():
    from flows.replicate import ReplicatedDisk

    (row,) = table_rows(
        [
            ReplicatedDisk(
                disk_id="disk-1", vm_disk_id=3, volume_id="v", device_path="/dev/vdb", bytes_written=1, change_id=None
            )
        ],
        {"device_path": "hub device"},
    )
    assert list(row) == ["disk id", "catalog disk id", "volume id", "hub device", "bytes written", "change id"]
