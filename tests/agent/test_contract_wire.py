"""The agent contract's JSON is what docs/agent-contract.md shows: ``disk_key``, although Python says
``device_key`` (one vocabulary for a disk's identity, docs/architecture.md)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from common.contract import DiskProgress, JobRequest, JobStatus, Target


def test_requests_and_statuses_keep_the_documented_keys() -> None:
    request = JobRequest(
        job_id="j1", vm="vm-1", kind="full", targets=[Target(device_key=2000, nbd_url="nbd://h:1/x", capacity_bytes=5)]
    )
    sent = request.model_dump(mode="json")  # what clients/agent.py posts
    target = sent["targets"][0]
    assert set(target) >= {"disk_key", "nbd_url", "capacity_bytes"} and "device_key" not in target
    assert JobRequest.model_validate(json.loads(json.dumps(sent))) == request
    status = JobStatus(job_id="j1", vm="vm-1", kind="full", state="running", disks=[DiskProgress(device_key=7)])
    answered = json.loads(status.model_dump_json())
    assert answered["disks"][0]["disk_key"] == 7 and "device_key" not in answered["disks"][0]
    assert JobStatus.model_validate(answered).disks[0].device_key == 7


def test_the_documented_request_is_accepted_and_unknown_keys_are_not() -> None:
    documented = {"disk_key": 203, "nbd_url": "nbd://10.0.0.5:10100/vm12-disk-203", "capacity_bytes": 67108864}
    assert Target.model_validate(documented).device_key == 203
    with pytest.raises(ValidationError):
        Target.model_validate({**documented, "disk": 1})


def test_the_published_schema_names_disk_key() -> None:
    # FastAPI builds the agent's OpenAPI document from these schemas
    schema = Target.model_json_schema(by_alias=True)
    assert "disk_key" in schema["properties"] and "device_key" not in schema["properties"]
    assert "disk_key" in schema["required"]
