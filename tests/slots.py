"""The VM slots (vmferry/runs.py) in tests whose flow process is SIGKILLed."""

from __future__ import annotations


def free_vm_slot(instance_uuid: str) -> None:
    """What a Prefect server's repossessor does when a dead run's lease ends; the test harness runs none.

    Only for a VM whose every flow process is known dead: a live holder would lose its slot.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    from vmferry.limits import vm_limit_name

    with get_client(sync_client=True) as client:
        client.update_global_concurrency_limit(
            vm_limit_name(instance_uuid), GlobalConcurrencyLimitUpdate(active_slots=0)
        )
