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
            # plain ids only: a block among the arguments would print its endpoint and keys into the log
            shown = tuple(a if isinstance(a, str | int) else type(a).__name__ for a in args)
            log.exception(
                "compensation %s%s failed; the reconciler will retry it", getattr(action, "__name__", action), shown
            )

    return run
