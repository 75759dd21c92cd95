"""The work a process does for its clock's timers, so that whoever moves a simulated clock knows
when the work the last step started is done.

A timer fires and starts work: a call to another service, a thread, a database write, a run of a
scheduled task. Moving a simulated clock on before that work is done would let it happen at a
later time than its timer's. ``Work`` is the account: an item (a task, or any future the work ends
with) counts from ``track`` until it is done, except while it rests, waiting for a later time on
the clock or for something else to happen (``resting``). ``busy`` says whether any item is at work.

A service says "this is work for a timer" with ``spawn(..., on_clock=True)`` or
``self.timer_work.track(...)``, and marks the waits inside that work with
``self.timer_work.resting(...)``. On the real clock nothing reads the account but ``busy`` itself;
it costs a dictionary entry per item.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

from services.base.clock import Clock

Wake: TypeAlias = "asyncio.Future[Any] | asyncio.Event"


@dataclass(frozen=True, slots=True)
class _Rest:
    until: datetime | None
    wake: tuple[Wake, ...]

    def over(self, now: datetime) -> bool:
        if self.until is not None and self.until <= now:
            return True
        return any(w.is_set() if isinstance(w, asyncio.Event) else w.done() for w in self.wake)


class Work:
    """Items of work for the clock's timers, each at work or resting."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        # Each item and its rests, innermost last: it rests while the innermost is not over.
        self._items: dict[asyncio.Future[Any], list[_Rest]] = {}

    def track(self, item: asyncio.Future[Any]) -> None:
        """Count ``item`` as at work from now until it is done (tracking it again changes nothing)."""
        if item in self._items or item.done():
            return
        self._items[item] = []
        item.add_done_callback(self._forget)

    def _forget(self, item: asyncio.Future[Any]) -> None:
        self._items.pop(item, None)

    @contextlib.contextmanager
    def resting(
        self, item: asyncio.Future[Any], *, until: datetime | None = None, wake: Sequence[Wake] = ()
    ) -> Iterator[None]:
        """Inside the block ``item`` waits and is not at work, until the clock reads ``until`` or
        one of ``wake`` is done (or set): from that moment it is at work again, before the code
        after the wait has even run, so no step can slip between the two. An item not tracked
        rests anyway; nothing is recorded."""
        if until is None and not wake:
            raise ValueError("a rest ends at a time or when something wakes it")
        rests = self._items.get(item)
        if rests is None:
            yield
            return
        rest = _Rest(until, tuple(wake))
        rests.append(rest)
        try:
            yield
        finally:
            rests.remove(rest)

    @property
    def busy(self) -> bool:
        """Some item is at work: not done, and not resting (or its rest is over)."""
        now = self._clock.now()
        return any(
            not item.done() and (not rests or rests[-1].over(now)) for item, rests in self._items.items()
        )
