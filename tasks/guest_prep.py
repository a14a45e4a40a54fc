"""Guest preparation before a failover boots: the OS volume made ready for KVM by virt-v2v-in-place (clients/v2v.py).

One task, one side effect (the OS volume changed in place). It reports its stages as a Prefect progress artifact and
keeps virt-v2v's own log as a markdown artifact; when there is nothing to prepare it says why and changes nothing.
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from clients.v2v import EXPECTED_STAGES, prepare_for_kvm
from common.names import artifact_key, log_artifact_key


class GuestPreparation(BaseModel):
    vm: str
    volume_id: str
    prepared: bool
    reason: str
    seconds: float


@task(cache_policy=NO_CACHE, task_run_name="prepare-guest-{vm_name}")
def prepare_guest_for_kvm(
    vm_name: str, vm_context_id: int, volume_id: str, device: Path, virtio_win: Path | None = None
) -> GuestPreparation:
    """Retrying is safe: virt-v2v-in-place on an already converted guest converts it again to the same end."""
    logger = get_run_logger()
    key = artifact_key("guest-prep", vm_name)
    progress_id = create_progress_artifact(
        0.0, key=key, description=f"virt-v2v-in-place on the OS volume {volume_id} of {vm_name}"
    )

    def on_stage(number: int, text: str) -> None:
        logger.info("guest preparation of %s: %s", vm_name, text)
        update_progress_artifact(progress_id, min(95.0, 100.0 * number / len(EXPECTED_STAGES)))

    outcome = prepare_for_kvm(device, virtio_win=virtio_win, on_stage=on_stage)
    update_progress_artifact(progress_id, 100.0)
    if outcome.prepared:
        logger.info("guest preparation of %s done in %.0f s: %s", vm_name, outcome.seconds, outcome.reason)
    else:
        logger.info("guest preparation of %s skipped: %s", vm_name, outcome.reason)
    create_markdown_artifact(
        key=log_artifact_key(key),
        markdown=(
            f"# Guest preparation of {vm_name}: {'done' if outcome.prepared else 'skipped'}\n\n{outcome.reason}"
            f" ({outcome.seconds:.0f} s)\n\n```\n{outcome.log[-20000:] or '(virt-v2v-in-place did not run)'}\n```"
        ),
        description=f"virt-v2v-in-place log for {vm_name}",
    )
    return GuestPreparation(
        vm=vm_name,
        volume_id=volume_id,
        prepared=outcome.prepared,
        reason=outcome.reason,
        seconds=round(outcome.seconds, 1),
    )
