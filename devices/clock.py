"""Session clocks: seconds since session start, monotonic, injected everywhere (never read from globals).

A `ScaledClock` runs a simulated session many times faster than real time; a `ManualClock` makes tests
deterministic. Every stored time in the project is seconds on one of these clocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Protocol


class Clock(Protocol):
    """Seconds on the session clock (0 at session start) and a way to wait on it."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...

    def restart(self) -> None:
        """Make now() read 0 again: called when the session actually starts."""
        ...


async def sleep_unless(clock: Clock, seconds: float, stop: asyncio.Event) -> None:
    """Sleep `seconds` on `clock`, returning early (and cleanly) as soon as `stop` is set."""
    sleeper = asyncio.ensure_future(clock.sleep(max(0.0, seconds)))
    stopper = asyncio.ensure_future(stop.wait())
    _, pending = await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class ScaledClock:
    """Monotonic host time scaled by `speed` (1.0 = real time), starting at 0 when created."""

    def __init__(self, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.speed = speed
        self._t0 = time.monotonic()

    def restart(self) -> None:
        """Make now() read 0 again (called when the session actually starts)."""
        self._t0 = time.monotonic()

    def now(self) -> float:
        return (time.monotonic() - self._t0) * self.speed

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)


class RealClock(ScaledClock):
    """The real-time session clock."""

    def __init__(self) -> None:
        super().__init__(1.0)


class ManualClock:
    """A clock that only moves when told to; `sleep` advances it instantly (for tests and offline runs)."""

    def __init__(self, start: float = 0.0) -> None:
        self._t = start

    def now(self) -> float:
        return self._t

    def restart(self) -> None:
        self._t = 0.0

    def advance(self, seconds: float) -> None:
        self._t += seconds

    async def sleep(self, seconds: float) -> None:
        self._t += max(0.0, seconds)
        await asyncio.sleep(0)
