"""Compensations run after a failure, when the original error is what the operator must see."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("vmferry.compensation")


def quietly(action: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[[], None]:
    """Wrap a compensation so it never raises: a failure is logged for the reconciler, not re-raised."""

    def run() -> None:
        try:
            action(*args, **kwargs)
        except Exception:
            log.exception(
                "compensation %s%s failed; the reconciler will retry it", getattr(action, "__name__", action), args
            )

    return run
