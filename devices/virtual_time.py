"""Virtual time for simulated sessions: an asyncio loop whose clock jumps to the next timer instead of waiting.

`VirtualTimeLoop` is a normal selector event loop except for two things: `time()` returns a virtual clock, and when
nothing is ready to run and no I/O is pending, the loop moves that clock straight to its next timer rather than
sleeping. Work never takes virtual time, so a simulated strap can never fall behind its own schedule: an 8-hour
session runs as fast as the CPU allows and every packet arrives exactly when it is due (a `ScaledClock` at high speed
lets CPU hiccups turn into late packets and spurious gaps). A loop with nothing scheduled at all still blocks for real
(a thread may wake it with `call_soon_threadsafe`).

`LoopClock` is the session clock on such a loop (or any loop): seconds of the loop's time since it was restarted.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _JumpSelector(selectors.DefaultSelector):  # type: ignore[misc, valid-type]
    """Polls without blocking; when idle with a timeout, tells the loop to jump its clock by that timeout."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or (timeout is not None and timeout <= 0):
            return ready
        if timeout is None:  # nothing scheduled: only I/O or another thread can wake us
            return super().select(None)
        assert self.loop is not None
        self.loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time that starts at `start` seconds and only moves when the loop is idle."""

    def __init__(self, start: float = 0.0) -> None:
        self._virtual_now = float(start)
        selector = _JumpSelector()
        super().__init__(selector)
        selector.loop = self

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        """Move the virtual clock forward (never back)."""
        if seconds > 0:
            self._virtual_now += seconds


def run_virtual(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on a fresh `VirtualTimeLoop`."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main)


class LoopClock:
    """The session clock as the running event loop's time: seconds since `restart()` (or since first read).

    The loop is bound on the first call made inside it; after that `now()` may be read from any thread.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._t0 = 0.0

    def _bound(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:
                raise RuntimeError("LoopClock is read before its event loop runs: use it inside the loop") from None
            self._t0 = self._loop.time()
        return self._loop

    def restart(self) -> None:
        """Make now() read 0 again (called when the session actually starts)."""
        self._t0 = self._bound().time()

    def now(self) -> float:
        return self._bound().time() - self._t0

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))
