"""A shared token bucket around sources: the bandwidth limit of one agent job, all disks together."""

from __future__ import annotations

import threading
import time

from agent.dataplane.sources import Allocation, Source


class TokenBucket:
    def __init__(self, bytes_per_second: int) -> None:
        self.rate = bytes_per_second
        self._lock = threading.Lock()
        self._available = 0.0
        self._last = time.monotonic()

    def take(self, amount: int) -> None:
        """Block until ``amount`` bytes may pass (bursts of up to one second's worth)."""
        with self._lock:
            now = time.monotonic()
            self._available = min(self.rate, self._available + (now - self._last) * self.rate)
            self._last = now
            self._available -= amount
            debt = -self._available
        if debt > 0:
            time.sleep(debt / self.rate)


class ThrottledSource(Source):
    def __init__(self, inner: Source, bucket: TokenBucket) -> None:
        self.inner = inner
        self.bucket = bucket
        self.size = inner.size
        self.description = getattr(inner, "description", repr(inner))

    def readinto(self, offset: int, buf: memoryview | bytearray) -> None:
        self.bucket.take(len(buf))
        self.inner.readinto(offset, buf)

    def allocation(self, offset: int, length: int) -> Allocation | None:
        return self.inner.allocation(offset, length)

    def clone(self) -> ThrottledSource:
        return ThrottledSource(self.inner.clone(), self.bucket)

    def close(self) -> None:
        self.inner.close()
