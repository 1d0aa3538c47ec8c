"""The one clock every timer goes through.

Nodes never call ``asyncio.sleep`` or ``loop.call_later`` themselves: they ask the
engine's clock.  In production that is :class:`RealClock`, which sleeps until the next
due time (no polling loop).  Tests use :class:`VirtualClock`, which jumps straight to the
next due timer, so a 3-minute delay or an hourly cron runs in microseconds.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable


class Timer:
    """A cancellable scheduled callback."""

    __slots__ = ("when", "callback", "cancelled", "_handle")

    def __init__(self, when: float, callback: Callable[[], object]):
        self.when = when
        self.callback = callback
        self.cancelled = False
        self._handle: asyncio.TimerHandle | None = None

    def cancel(self) -> None:
        self.cancelled = True
        if self._handle is not None:
            self._handle.cancel()


class Clock:
    """Interface. ``time()`` is wall-clock epoch seconds; timers are relative delays."""

    def time(self) -> float:
        raise NotImplementedError

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        raise NotImplementedError

    def call_at(self, when: float, callback: Callable[[], object]) -> Timer:
        """Run at the epoch time ``when`` (used by cron)."""
        return self.call_later(max(0.0, when - self.time()), callback)

    #: Tasks asleep on this clock; the virtual clock's settle does not wait for them.
    parked: set

    async def sleep(self, delay: float) -> None:
        fut = asyncio.get_running_loop().create_future()
        task = asyncio.current_task()
        parked = getattr(self, "parked", None)

        def wake():
            if parked is not None:
                parked.discard(task)
            if not fut.done():
                fut.set_result(None)

        timer = self.call_later(delay, wake)
        if parked is not None:
            parked.add(task)
            self._notify_parked()
        try:
            await fut
        finally:
            timer.cancel()
            if parked is not None:
                parked.discard(task)

    def _notify_parked(self) -> None:
        waiters = getattr(self, "park_waiters", None)
        while waiters:
            fut = waiters.pop()
            if not fut.done():
                fut.set_result(None)

    async def wait_for(self, aw: Awaitable, timeout: float):
        """Like ``asyncio.wait_for`` but timed by this clock."""
        task = asyncio.ensure_future(aw)
        timer = self.call_later(timeout, task.cancel)
        try:
            return await task
        except asyncio.CancelledError:
            if timer.cancelled:  # cancelled from outside, not by our timeout
                raise
            raise TimeoutError() from None
        finally:
            timer.cancel()


class RealClock(Clock):
    def time(self) -> float:
        return time.time()

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        loop = asyncio.get_running_loop()
        timer = Timer(loop.time() + delay, callback)
        timer._handle = loop.call_later(max(0.0, delay), callback)
        return timer


class VirtualClock(Clock):
    """Time stands still until :meth:`advance` moves it.

    ``advance`` fires due timers in time order and, between timers, lets the engine
    settle (deliver queued messages, finish in-flight async work) so that a timer a
    node sets while handling a message is seen in the same advance.
    """

    def __init__(self, start: float = 1_700_000_000.0):
        self.start = start
        self._now = start
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self.settle: Callable[[], Awaitable[None]] | None = None
        self.parked = set()
        self.park_waiters: list[asyncio.Future] = []  # settle() waits on these

    def time(self) -> float:
        return self._now

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        timer = Timer(self._now + max(0.0, delay), callback)
        heapq.heappush(self._heap, (timer.when, next(self._seq), timer))
        return timer

    def next_due(self) -> float | None:
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    async def advance(self, seconds: float) -> None:
        target = self._now + seconds
        await self._settle()
        while True:
            due = self.next_due()
            if due is None or due > target:
                break
            _, _, timer = heapq.heappop(self._heap)
            self._now = max(self._now, due)
            timer.callback()
            await self._settle()
        self._now = target
        await self._settle()

    async def _settle(self) -> None:
        if self.settle is not None:
            await self.settle()
        else:
            await asyncio.sleep(0)
