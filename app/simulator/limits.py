"""Per-key sliding-window rate limiting, as documented in mavera-api.md section 9."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

WINDOW_S = 60.0
# What the headers report when the simulator runs without a limit (the Enterprise tier).
UNLIMITED_RPM = 600


@dataclass(frozen=True)
class RateVerdict:
    """Outcome of one rate-limit check, ready to become response headers."""

    allowed: bool
    limit: int
    remaining: int
    reset_at: int
    retry_after_s: int

    def headers(self) -> dict[str, str]:
        """The ``X-RateLimit-*`` headers sent on every response."""
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_at),
        }


class SlidingWindowLimiter:
    """Counts accepted requests per key over the last 60 s; ``rpm=None`` never rejects."""

    def __init__(
        self,
        rpm: int | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.rpm = rpm
        self._clock = clock
        self._wall_clock = wall_clock
        self._hits: dict[str, deque[float]] = {}

    @property
    def limit(self) -> int:
        """The per-minute cap reported in headers."""
        return self.rpm if self.rpm is not None else UNLIMITED_RPM

    def reset(self) -> None:
        """Forget every window."""
        self._hits.clear()

    def _window(self, key: str | None, now: float) -> deque[float]:
        hits = self._hits.setdefault(key, deque()) if key is not None else deque()
        while hits and hits[0] <= now - WINDOW_S:
            hits.popleft()
        return hits

    def _verdict(self, allowed: bool, hits: deque[float], now: float) -> RateVerdict:
        # The window frees its next slot when the oldest counted request turns 60 s old.
        frees_in = (hits[0] + WINDOW_S - now) if hits else WINDOW_S
        return RateVerdict(
            allowed=allowed,
            limit=self.limit,
            remaining=max(0, self.limit - len(hits)),
            reset_at=math.ceil(self._wall_clock() + frees_in),
            retry_after_s=max(1, math.ceil(frees_in)),
        )

    def hit(self, key: str) -> RateVerdict:
        """Count one request for ``key`` unless it is over the limit."""
        now = self._clock()
        hits = self._window(key, now)
        if self.rpm is not None and len(hits) >= self.rpm:
            return self._verdict(False, hits, now)
        hits.append(now)
        return self._verdict(True, hits, now)

    def peek(self, key: str | None) -> RateVerdict:
        """The current state for ``key`` (None: an unauthenticated caller) without counting."""
        now = self._clock()
        return self._verdict(True, self._window(key, now), now)
