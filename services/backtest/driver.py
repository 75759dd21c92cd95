"""The replay driver: moves every process of a replay through simulated time together, with the
``replay.status`` and ``replay.advance`` methods each process's ``Simulation`` answers
(``services/base/simulation.py``).

Each step: wait until the stack is quiet (no calls in flight, no durable event unsent, no signal
unread or unacknowledged on the stream, no timer's work unfinished), find the earliest timer any
process has, and advance every process to it: those with no timer due together, then those with
one, callees first. Every deadline of every process is a step: a process that fired a later
timer first could ask another (market data) about a time that has not come, a look-ahead. So a
replay's cost is the number of distinct deadlines: services on a replay clock should keep their
periodic timers coarse.

A process may die mid-replay (a crash, or a test killing it): the driver waits for the
supervisor to bring it back, up to ``restart_timeout_s``. A restarted process reads the replay's
time from ``clock_file`` (written before every step), and one still behind is moved up to the
others before the next step.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from services.base.clock import utc_iso
from services.base.errors import CallTimeout, TemporaryError
from services.base.rpc import RpcClient

# Quiet this many polls in a row: work one process hands to another between two answers of a
# poll (a call answered, an event written) shows in the next. (Redis pub/sub shows in none; in a
# replay nothing acts on it outside a session, when no step publishes.)
QUIET_POLLS = 2
POLL_S = 0.005
# One try of a driver's call (the others are quick: a status, a clock moved, a book read).
CALL_TIMEOUT_S = 30.0


@dataclass(slots=True)
class StepFigures:
    steps: int = 0
    waits: int = 0
    # Calls that failed because a process was down, each waited out until it was back.
    outages: int = 0
    wall_s: float = 0.0


class ReplayDriver:
    def __init__(
        self,
        clients: Mapping[str, RpcClient],
        *,
        backlog: Callable[[], Awaitable[int]] | None = None,
        clock_file: Path | None = None,
        quiet_timeout_s: float = 120.0,
        restart_timeout_s: float = 120.0,
    ) -> None:
        """``clients``: one per process on the replay clock, callees before callers (e.g.
        market_data ... scheduler). ``backlog``: signals on the stream not yet applied (unread plus
        unacknowledged), when there is a stream to watch; it may raise ``TemporaryError`` or
        ``OSError`` while its store is away. ``clock_file``: where restarted processes read the
        replay's time."""
        self.clients = dict(clients)
        self.backlog = backlog
        self.clock_file = clock_file
        self.quiet_timeout_s = quiet_timeout_s
        self.restart_timeout_s = restart_timeout_s
        self.figures = StepFigures()
        self.now: datetime | None = None  # where the last step took every process

    async def ask(self, name: str, method: str, params: dict[str, Any] | None = None) -> Any:
        """One call to a process, waiting out its restart if it is down.

        Each try gets ``CALL_TIMEOUT_S`` and, after a failure, a fresh connection: a call is
        never left waiting on a connection to a process that died or will not answer it. Asking
        again is safe: ``replay.status`` only reads, and ``replay.advance`` to where a process
        already is does nothing."""
        client = self.clients[name]
        deadline = time.monotonic() + self.restart_timeout_s
        while True:
            try:
                return await client.call(method, params, timeout=CALL_TIMEOUT_S, idempotent=True)
            except (TemporaryError, OSError) as exc:
                await client.close()
                if time.monotonic() > deadline:
                    raise CallTimeout(
                        f"{name} did not come back within {self.restart_timeout_s:g}s: {exc}"
                    ) from exc
                self.figures.outages += 1
                await asyncio.sleep(0.05)

    async def statuses(self) -> dict[str, dict[str, Any]]:
        names = list(self.clients)
        answers = await asyncio.gather(*(self.ask(n, "replay.status") for n in names))
        return dict(zip(names, answers, strict=True))

    async def _backlog(self) -> int:
        if self.backlog is None:
            return 0
        try:
            return await self.backlog()
        except (TemporaryError, OSError):
            return -1  # unknown while the stream's store is away: not quiet

    async def quiet(self) -> dict[str, dict[str, Any]]:
        """Wait until nothing is in flight anywhere for ``QUIET_POLLS`` polls; the last statuses."""
        deadline = time.monotonic() + self.quiet_timeout_s
        calm = 0
        while True:
            statuses = await self.statuses()
            current = self.now
            behind = [name for name, s in statuses.items() if current and _time(s["now"]) < current]
            if current and behind:  # restarted from an older time: bring it up to the others first
                for name in behind:
                    await self.ask(name, "replay.advance", {"to": utc_iso(current)})
                calm = 0
                continue
            busy = [name for name, s in statuses.items() if _busy(s)]
            waiting = await self._backlog()
            calm = calm + 1 if not busy and not waiting else 0
            if calm >= QUIET_POLLS:
                return statuses
            if calm:  # quiet once: look again at once, for work handed on between two answers
                continue
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
        deadlines = [_time(s["next_deadline"]) for s in statuses.values() if s["next_deadline"]]
        target = min((d for d in deadlines if d <= until), default=None)
        if target is None:
            return None
        await self.advance_all(target, statuses)
        self.figures.steps += 1
        return target

    async def advance_all(self, target: datetime, statuses: Mapping[str, dict[str, Any]]) -> None:
        """Every process to ``target``. Those with no timer due by then only move their clock: all
        at once, first. Those with one fire it one after another, in the order given, each once
        the one before has finished what its timer started: those others call (the data services)
        first, so a timer that calls another process finds it at the new time, done with its own."""
        if self.clock_file is not None:
            _write_atomically(self.clock_file, utc_iso(target))
        self.now = target
        to = {"to": utc_iso(target)}
        due = [
            name for name, s in statuses.items() if s["next_deadline"] and _time(s["next_deadline"]) <= target
        ]
        await asyncio.gather(
            *(self.ask(name, "replay.advance", to) for name in self.clients if name not in due)
        )
        due_in_order = [name for name in self.clients if name in due]
        for name in due_in_order:
            status = await self.ask(name, "replay.advance", to)
            if name != due_in_order[-1]:
                await self._finished(name, status)

    async def _finished(self, name: str, status: dict[str, Any]) -> None:
        """Wait until ``name`` is done with the work its last step started."""
        deadline = time.monotonic() + self.quiet_timeout_s
        while _busy(status):
            if time.monotonic() > deadline:
                raise CallTimeout(f"{name} was still busy after {self.quiet_timeout_s:g}s")
            self.figures.waits += 1
            await asyncio.sleep(POLL_S)
            status = await self.ask(name, "replay.status")

    async def run(
        self, until: datetime, *, on_step: Callable[[datetime], Awaitable[None]] | None = None
    ) -> None:
        """Step until no timer is left before ``until``, then move everyone to ``until``."""
        started = time.monotonic()
        while (reached := await self.step(until)) is not None:
            if on_step is not None:
                await on_step(reached)
        await self.advance_all(until, await self.quiet())
        await self.quiet()
        self.figures.wall_s += time.monotonic() - started


def _busy(status: Mapping[str, Any]) -> bool:
    return bool(status["in_flight"] or status["outbox_pending"] or status.get("busy"))


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _write_atomically(path: Path, text: str) -> None:
    """A process starting now reads the old time or the new, never half of one."""
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(text)
    os.replace(partial, path)
