"""The VM slots (orchestration/runs.py, orchestration/limits.py) in tests whose flow process is SIGKILLed."""

from __future__ import annotations


def free_vm_slot(instance_uuid: str, vm_context_id: int | None = None) -> None:
    """What a Prefect server's repossessor does when a dead run's lease ends; the test harness runs none.

    Frees the VM's one-job slot and, given its context id, the slot of whoever moves its volumes. Only for a VM
    whose every flow process is known dead: a live holder would lose its slot.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectNotFound

    from catalog import default_catalog
    from catalog.installation import installation_id
    from common.names import vm_limit_name, vm_volumes_limit_name

    names = [vm_limit_name(instance_uuid)]
    if vm_context_id is not None:
        names.append(vm_volumes_limit_name(installation_id(default_catalog()), vm_context_id))
    with get_client(sync_client=True) as client:
        for name in names:
            try:
                client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=0))
            except ObjectNotFound:
                pass  # never taken
