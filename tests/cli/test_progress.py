"""One follower of an agent job: the flow's own task publishes what it reads, and the command's bars listen.

The events carry the job the flow submitted (the restore point's job), never a guess, and end at every disk's
full size; a listener that fails does not fail the copy.
"""

from __future__ import annotations

import pytest

from vmferry.progress import CopyProgress, listening


@pytest.mark.usefixtures("prefect_backend", "nbd_port_range")
def test_the_flow_publishes_the_progress_of_its_own_job(
    lab, lab_vcenter_block, agent_block, configured_catalog, tmp_path
):
    from blocks import BackupRepository
    from flows.backup import backup_vm

    events: list[CopyProgress] = []

    def broken(event: CopyProgress) -> None:
        raise RuntimeError("a listener that fails")

    repository = BackupRepository(name="progress", path=str(tmp_path / "repository"))
    with listening(broken), listening(events.append):
        point = backup_vm("pgtest1", repository, agent_block, lab_vcenter_block, kind="full")
    assert point.state == "committed"
    assert events and {event.job_id for event in events} == {point.job_id}
    last = events[-1]
    assert last.finished
    sizes = {d.device_key: d.capacity_bytes for d in lab.manifest.vm("pgtest1").disks}
    assert {d.device_key: (d.bytes_done, d.bytes_total) for d in last.disks} == {
        key: (size, size) for key, size in sizes.items()
    }
    assert {d.label for d in last.disks} == {f"pgtest1 disk-{key}" for key in sizes}
