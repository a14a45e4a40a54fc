"""Prefect global concurrency limits a flow sizes from the system it drives (orchestration/limits.py)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from common.names import hub_limit_name
from orchestration.limits import set_limit


# setting a limit to a size is the same whether done once or twice: retried like a catalog write
@task(retries=3, retry_delay_seconds=1, cache_policy=NO_CACHE)
def size_hub_limits(capacities: dict[str, int]) -> None:
    """Each hub's volume limit has exactly the slots CloudStack gives it (``capacities``: hub VM id -> volumes)."""
    logger = get_run_logger()
    for hub, capacity in capacities.items():
        set_limit(hub_limit_name(hub), capacity, logger)
