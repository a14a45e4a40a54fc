"""Which restore points a retention policy keeps. Pure: no I/O, so the policy is easy to test and explain.

Pruning never breaks a chain: every ancestor of a kept point is kept too, because an incremental's file
needs its backing file.
"""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, Field

from catalog.restore_points import PointView


class RetentionPolicy(BaseModel):
    keep_last: int = Field(default=7, ge=1, description="The newest N points")
    keep_daily: int = Field(default=0, ge=0, description="The newest point of each of the last N days with one")
    keep_weekly: int = Field(default=0, ge=0, description="The newest point of each of the last N ISO weeks")


def _newest_per(points: list[PointView], period: object, count: int) -> set[int]:
    kept: dict[object, int] = {}
    for point in points:  # newest first
        key = period(point.created_at)  # type: ignore[operator]
        if key not in kept:
            if len(kept) == count:
                break
            kept[key] = point.id
    return set(kept.values())


def points_to_keep(points: list[PointView], policy: RetentionPolicy) -> set[int]:
    newest_first = sorted(points, key=lambda p: (p.created_at, p.id), reverse=True)
    keep = {p.id for p in newest_first[: policy.keep_last]}
    keep |= _newest_per(newest_first, lambda t: t.astimezone(dt.UTC).date(), policy.keep_daily)
    keep |= _newest_per(newest_first, lambda t: t.astimezone(dt.UTC).isocalendar()[:2], policy.keep_weekly)
    by_id = {p.id: p for p in points}
    for point_id in list(keep):
        parent = by_id[point_id].parent_id
        while parent is not None and parent in by_id:
            keep.add(parent)
            parent = by_id[parent].parent_id
    return keep
