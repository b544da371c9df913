"""One socket's client-frame rate limit, for both protocols.

A token bucket, plus the count of frames refused since the client last
calmed down: the first refusal is answered (``WARN``), a burst's worth more
closes the socket (``CLOSE``). ``admit`` acts on the verdict for the JSON
consumer and every Socket.IO transport alike; the rule lives here once.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Awaitable, Callable

from django.conf import settings


class Verdict(enum.Enum):
    ALLOW = "allow"
    WARN = "warn"  # the first refusal: tell the client once
    REFUSE = "refuse"  # refused quietly
    CLOSE = "close"  # kept flooding


class FrameRateLimit:
    """Allow ``rate`` frames a second on average, bursts of up to ``burst``."""

    __slots__ = ("burst", "rate", "refused", "tokens", "updated")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = time.monotonic()
        self.refused = 0

    @classmethod
    def from_settings(cls) -> FrameRateLimit:
        # Bursts big enough for a reconnecting client to subscribe again to
        # every payment it may follow at once.
        rate = settings.REALTIME_RATE_LIMIT
        return cls(rate=rate, burst=max(2 * rate, settings.REALTIME_MAX_SUBSCRIPTIONS))

    def check(self) -> Verdict:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            if self.tokens >= self.burst - 1:
                # The bucket was full: the client calmed down, the count
                # starts over. Not on any frame let through, or a flood that
                # waits for each refilled token (every 1/rate s) would never
                # be closed.
                self.refused = 0
            return Verdict.ALLOW
        self.refused += 1
        if self.refused == 1:
            return Verdict.WARN
        if self.refused >= 2 * self.rate:
            return Verdict.CLOSE
        return Verdict.REFUSE


async def admit(
    limit: FrameRateLimit,
    *,
    unit: str,
    holder: str,
    warn: Callable[[str, str], Awaitable[None]],
    close: Callable[[], Awaitable[None]],
    refuse: Callable[[str, str], Awaitable[None]] | None = None,
) -> bool:
    """Check one client frame (or packet) against ``limit``; act on the verdict.

    The first refusal calls ``warn(code, message)``, a flood calls
    ``close()``; every refusal short of the close calls ``refuse(code,
    message)`` too, if given (after ``warn``), for a frame the protocol
    must answer. True if the frame may be served. ``unit`` and ``holder``
    name what is counted and what is closed in the message.
    """
    verdict = limit.check()
    if verdict is Verdict.CLOSE:
        await close()
    elif verdict is not Verdict.ALLOW:
        code = "rate_limited"
        message = (
            f"{unit}: at most {limit.rate:g} {unit}s a second; slow down or the "
            f"{holder} is closed."
        )
        if verdict is Verdict.WARN:
            await warn(code, message)
        if refuse is not None:
            await refuse(code, message)
    return verdict is Verdict.ALLOW
