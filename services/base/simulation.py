"""A replay's simulated time, all in one place.

``tradingctl replay`` (and ``tradingctl demo``) runs every service as its own process on a
simulated clock, and a driver (``services/backtest/driver.py``) moves them together through
history. The runner installs a ``Simulation`` in a process only when ``TRADING_REPLAY_CLOCK`` names
the file holding the replay's time; an ordinary run has none, and a service's own code reads the
same either way. A simulation brings the service:

- its clock, a ``ReplayClock`` starting at the replay's time (so a process restarted mid-replay
  joins at the others' time), on which a task a timer woke is work (``Work``) until it sleeps on
  the clock again or ends;
- its ``work``: the account of that, and of what the service itself tracks (``spawn``'s
  ``on_clock``, the scheduler's runs);
- a count of the calls it has waiting for an answer, kept by its peers' clients (``count_call``);
- the ``replay.status`` and ``replay.advance`` RPC methods, which the driver calls.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.base.clock import SimulatedClock, utc_iso
from services.base.errors import ConfigError, InvalidParams
from services.base.rpc.methods import rpc_method
from services.base.work import Work

if TYPE_CHECKING:
    from services.base.service import BaseService

# Set by a replay: the path of a file holding the replay's current time (ISO).
REPLAY_CLOCK = "TRADING_REPLAY_CLOCK"


class ReplayClock(SimulatedClock):
    """A simulated clock whose sleepers are accounted for: a task sleeping on it rests until its
    time comes, and is at work (``Work``) from then, or from its sleep being cancelled, until it
    sleeps on this clock again or ends. So a task woken by this clock must come back to it or end:
    one that goes on to wait for something else indefinitely keeps the replay from moving."""

    def __init__(self, start: datetime) -> None:
        super().__init__(start)
        self.work = Work(self)

    async def sleep_until(self, when: datetime) -> None:
        task = asyncio.current_task()
        # A time already passed is no sleep (and a naive one is refused), nor is a sleep in an RPC
        # method's first step, run before the method has a task of its own (a call in flight).
        if task is None or when.tzinfo is None or when <= self.now():
            await super().sleep_until(when)
            return
        self.work.track(task)
        with self.work.resting(task, until=when):
            await super().sleep_until(when)


class Simulation:
    """One process's part in a replay: its clock, its work, its calls out, and the RPC methods
    the driver moves it with. ``BaseService(..., simulation=...)`` installs it."""

    def __init__(self, start: datetime) -> None:
        self.clock = ReplayClock(start)
        self.work = self.clock.work
        # Calls this process has made and not yet had answered.
        self.outgoing = 0
        self._service: BaseService | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Simulation | None:
        """A simulation starting at the replay's time when ``TRADING_REPLAY_CLOCK`` is set, else None."""
        clock_file = environ.get(REPLAY_CLOCK)
        return cls(replay_time(Path(clock_file))) if clock_file else None

    def count_call(self, change: int) -> None:
        """The hook ``RpcClient`` calls as a call starts (+1) and ends (-1)."""
        self.outgoing += change

    def install(self, service: BaseService) -> None:
        """Add ``replay.status`` and ``replay.advance`` to ``service``'s RPC methods."""
        if self._service is not None:
            raise RuntimeError(f"this simulation already runs {self._service.name}")
        self._service = service
        service.rpc.methods.add_object(self)

    @rpc_method(name="replay.status", idempotent=True)
    async def status(self) -> dict[str, Any]:
        """This process's time, its next timer, and whether it is still at work: calls in flight
        besides this one, durable events not yet sent, work a timer started and has not finished."""
        service = self._running()
        deadline = self.clock.next_deadline()
        return {
            "service": service.name,
            "now": utc_iso(self.clock.now()),
            "next_deadline": utc_iso(deadline) if deadline else None,
            # Calls being served (besides this one) and calls made and not yet answered.
            "in_flight": max(0, service.rpc.in_flight - 1) + self.outgoing,
            "outbox_pending": await service.bus.outbox_pending() if service.db is not None else 0,
            "busy": self.work.busy,
        }

    @rpc_method(name="replay.advance")
    async def advance(self, to: datetime) -> dict[str, Any]:
        """Move to ``to``, firing this process's timers on the way in order. Time never goes
        back: an earlier ``to`` is -32602."""
        if to < self.clock.now():
            raise InvalidParams(
                f"the clock is at {utc_iso(self.clock.now())}, after {utc_iso(to)}", field="to"
            )
        await self.clock.advance_to(to)
        return await self.status()

    def _running(self) -> BaseService:
        assert self._service is not None, "install() first"
        return self._service


def replay_time(clock_file: Path) -> datetime:
    """The replay's current time, as its driver last wrote it to ``clock_file``."""
    try:
        return datetime.fromisoformat(clock_file.read_text().strip())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{REPLAY_CLOCK}: cannot read the replay's time from {clock_file}: {exc}") from exc
