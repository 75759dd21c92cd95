"""The replay driver: moves every process of a replay through simulated time together.

Each step: wait until the stack is quiet (no calls in flight, no durable event unsent, no signal
unread or unacknowledged on the stream), find the earliest timer any process has, and advance
every process to it, callees first. Every deadline of every process is a step: a process that
fired a later timer first could ask another (market data) about a time that has not come, a
look-ahead. So a replay's cost is the number of distinct deadlines: services on a replay clock
should keep their periodic timers coarse.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.base.errors import CallTimeout
from services.base.rpc import RpcClient

QUIET_POLLS = 2  # quiet this many polls in a row: work that hands on to another process has landed
POLL_S = 0.005


@dataclass(slots=True)
class StepFigures:
    steps: int = 0
    waits: int = 0
    wall_s: float = 0.0


class ReplayDriver:
    def __init__(
        self,
        clients: Mapping[str, RpcClient],
        *,
        backlog: Callable[[], Awaitable[int]] | None = None,
        quiet_timeout_s: float = 120.0,
    ) -> None:
        """``clients``: one per process on the replay clock, callees before callers (e.g.
        market_data ... scheduler). ``backlog``: signals on the stream not yet applied (unread plus
        unacknowledged), when there is a stream to watch."""
        self.clients = dict(clients)
        self.backlog = backlog
        self.quiet_timeout_s = quiet_timeout_s
        self.figures = StepFigures()

    async def statuses(self) -> dict[str, dict[str, Any]]:
        names = list(self.clients)
        answers = await asyncio.gather(*(self.clients[n].call("replay.status") for n in names))
        return dict(zip(names, answers, strict=True))

    async def quiet(self) -> dict[str, dict[str, Any]]:
        """Wait until nothing is in flight anywhere for ``QUIET_POLLS`` polls; the last statuses."""
        deadline = time.monotonic() + self.quiet_timeout_s
        calm = 0
        while True:
            statuses = await self.statuses()
            busy = [
                name for name, s in statuses.items() if s["in_flight"] or s["outbox_pending"] or s.get("busy")
            ]
            waiting = await self.backlog() if self.backlog is not None else 0
            calm = calm + 1 if not busy and not waiting else 0
            if calm >= QUIET_POLLS:
                return statuses
            if time.monotonic() > deadline:
                raise CallTimeout(
                    f"the stack did not settle within {self.quiet_timeout_s:g}s: "
                    f"busy {', '.join(busy) or '-'}, {waiting} signals waiting"
                )
            self.figures.waits += 1
            await asyncio.sleep(POLL_S)

    async def step(self, until: datetime) -> datetime | None:
        """Advance every process to the earliest timer at or before ``until``; the time reached,
        or None when no timer is left before ``until``."""
        statuses = await self.quiet()
        deadlines = [
            datetime.fromisoformat(s["next_deadline"]) for s in statuses.values() if s["next_deadline"]
        ]
        target = min((d for d in deadlines if d <= until), default=None)
        if target is None:
            return None
        await self.advance_all(target)
        self.figures.steps += 1
        return target

    async def advance_all(self, target: datetime) -> None:
        """One process after another, in the order given: those others call (the data services)
        first, so a timer that calls another process finds it already at the new time."""
        for client in self.clients.values():
            await client.call("replay.advance", {"to": target.isoformat()})

    async def run(
        self, until: datetime, *, on_step: Callable[[datetime], Awaitable[None]] | None = None
    ) -> None:
        """Step until no timer is left before ``until``, then move everyone to ``until``."""
        started = time.monotonic()
        while (reached := await self.step(until)) is not None:
            if on_step is not None:
                await on_step(reached)
        await self.quiet()
        await self.advance_all(until)
        await self.quiet()
        self.figures.wall_s += time.monotonic() - started
