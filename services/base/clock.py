"""Injected time: a real clock for production and a simulated one that tests advance by hand.

Business time (timestamps, schedules, market phases) always comes from a ``Clock``. Timeouts
and reconnect back-off for sockets use the event loop's own time, because they guard real I/O.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from datetime import UTC, datetime, timedelta
from typing import Protocol

MAX_WALL_CLOCK_STEP_S = 60.0


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware, in UTC."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...

    async def sleep_until(self, when: datetime) -> None:
        """Wait until this clock reads ``when`` (returns at once if it already has)."""
        ...


class SystemClock:
    """Wall-clock time."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    async def sleep_until(self, when: datetime) -> None:
        # In steps, reading the wall clock again after each: the event loop's clock is monotonic
        # and stands still while the machine is suspended, so one long sleep would wake late.
        _require_aware(when)
        while True:
            remaining = (when - self.now()).total_seconds()
            await asyncio.sleep(max(0.0, min(remaining, MAX_WALL_CLOCK_STEP_S)))
            if remaining <= MAX_WALL_CLOCK_STEP_S:
                return


class SimulatedClock:
    """A clock that only moves when told to.

    ``advance`` moves time forward, waking every sleeper whose deadline falls inside the step in
    deadline order, and lets the woken tasks run (and set new timers) before moving on. So a test
    can run a whole trading day of timers in milliseconds.
    """

    def __init__(self, start: datetime) -> None:
        self._now = _require_aware(start).astimezone(UTC)
        self._timers: list[tuple[datetime, int, asyncio.Future[None]]] = []
        self._sequence = itertools.count()

    def now(self) -> datetime:
        return self._now

    async def sleep(self, seconds: float) -> None:
        await self.sleep_until(self._now + timedelta(seconds=max(0.0, seconds)))

    async def sleep_until(self, when: datetime) -> None:
        when = _require_aware(when).astimezone(UTC)
        if when <= self._now:
            await asyncio.sleep(0)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (when, next(self._sequence), waiter))
        await waiter

    @property
    def pending_timers(self) -> int:
        return sum(1 for _, _, waiter in self._timers if not waiter.done())

    def next_deadline(self) -> datetime | None:
        live = [when for when, _, waiter in self._timers if not waiter.done()]
        return min(live) if live else None

    async def advance(self, step: timedelta | float) -> None:
        """Move time forward by ``step`` (a timedelta or seconds), firing timers on the way."""
        delta = step if isinstance(step, timedelta) else timedelta(seconds=step)
        if delta < timedelta(0):
            raise ValueError("a clock cannot go backwards")
        await self.advance_to(self._now + delta)

    async def advance_to(self, target: datetime) -> None:
        target = _require_aware(target).astimezone(UTC)
        if target < self._now:
            raise ValueError(f"cannot go back from {self._now.isoformat()} to {target.isoformat()}")
        await _let_tasks_run()
        while self._timers and self._timers[0][0] <= target:
            when, _, waiter = heapq.heappop(self._timers)
            if waiter.done():  # the sleeper was cancelled
                continue
            self._now = max(self._now, when)
            waiter.set_result(None)
            await _let_tasks_run()
        self._now = target
        await _let_tasks_run()


async def _let_tasks_run(rounds: int = 5) -> None:
    # A woken task may await a few plain futures before it reaches its next timer.
    for _ in range(rounds):
        await asyncio.sleep(0)


def _require_aware(when: datetime) -> datetime:
    if when.tzinfo is None:
        raise ValueError(f"naive datetime {when.isoformat()}: times must carry a timezone")
    return when


def utc_iso(when: datetime) -> str:
    """The one text form of a stored or sent time: UTC, microseconds, so strings sort as times."""
    return _require_aware(when).astimezone(UTC).isoformat(timespec="microseconds")
