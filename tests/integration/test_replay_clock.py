"""One simulated time for every process of a replay: the replay.status and replay.advance RPCs."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.backtest.driver import ReplayDriver
from services.base.clock import utc_iso
from services.base.config import TradingHome, load_settings
from services.base.errors import DependencyUnavailable, InvalidParams, MethodNotFound
from services.base.redis_server import EmbeddedRedis
from services.base.rpc import rpc_method
from services.base.rpc.client import RpcClient
from services.base.service import BaseService
from services.base.simulation import Simulation
from services.scheduler.scheduler_service import SchedulerService
from tests.conftest import ServiceProcess, eventually

START = datetime(2015, 3, 2, 22, 0, tzinfo=UTC)


class Ticker(BaseService):
    """Counts its own timer: wakes every 15 simulated minutes."""

    name = "ticker"

    async def _start(self) -> None:
        self.ticks = 0
        self.spawn(self._tick(), name="tick")

    async def _tick(self) -> None:
        while True:
            await self.clock.sleep(900)
            self.ticks += 1


async def test_advance_fires_the_timers_on_the_way(home: TradingHome, redis: EmbeddedRedis) -> None:
    service = Ticker(load_settings(home, env={"REDIS_URL": redis.url}), simulation=Simulation(START))
    await service.start()
    try:
        async with RpcClient(home.socket_path("ticker"), timeout=10) as client:
            status = await client.call("replay.status")
            assert status["now"] == "2015-03-02T22:00:00.000000+00:00"
            assert status["next_deadline"] == "2015-03-02T22:15:00.000000+00:00"
            assert status["in_flight"] == 0
            after = await client.call("replay.advance", {"to": (START + timedelta(hours=2)).isoformat()})
            assert service.ticks == 8
            assert after["now"] == "2015-03-03T00:00:00.000000+00:00"
            assert after["next_deadline"] == "2015-03-03T00:15:00.000000+00:00"
            with pytest.raises(InvalidParams) as caught:
                await client.call("replay.advance", {"to": START.isoformat()})
            assert caught.value.data["field"] == "to"
    finally:
        await service.stop()


class SlowTicker(Ticker):
    """Its timer's work waits on a thread: the process is busy until that work is done."""

    name = "ticker"

    async def _start(self) -> None:
        self.release = asyncio.Event()
        self.spawn(self._tick(), name="tick")

    async def _tick(self) -> None:
        while True:
            await self.clock.sleep(900)
            await asyncio.to_thread(lambda: None)
            await self.release.wait()


async def test_a_process_is_busy_while_its_timer_work_runs(home: TradingHome, redis: EmbeddedRedis) -> None:
    service = SlowTicker(load_settings(home, env={"REDIS_URL": redis.url}), simulation=Simulation(START))
    await service.start()
    try:
        async with RpcClient(home.socket_path("ticker"), timeout=10) as client:
            assert (await client.call("replay.status"))["busy"] is False
            after = await client.call("replay.advance", {"to": (START + timedelta(minutes=15)).isoformat()})
            assert after["busy"] is True  # no call in flight, no event unsent: still at work
            assert (await client.call("replay.status"))["busy"] is True
            service.release.set()
            await asyncio.sleep(0.05)
            assert (await client.call("replay.status"))["busy"] is False
    finally:
        await service.stop()


async def test_a_service_outside_a_replay_has_no_replay_methods(
    home: TradingHome, redis: EmbeddedRedis
) -> None:
    service = Ticker(load_settings(home, env={"REDIS_URL": redis.url}))
    await service.start()
    try:
        async with RpcClient(home.socket_path("ticker"), timeout=10) as client:
            with pytest.raises(MethodNotFound):
                await client.call("replay.status")
            described = await client.call("rpc.discover")
            assert not [m for m in described["methods"] if m["name"].startswith("replay.")]
    finally:
        await service.stop()


async def test_a_process_started_for_a_replay_runs_on_its_clock(
    home: TradingHome, redis: EmbeddedRedis
) -> None:
    clock_file = home.root / "replay-clock"
    clock_file.write_text(START.isoformat())
    service = ServiceProcess(home, REDIS_URL=redis.url, TRADING_REPLAY_CLOCK=str(clock_file))
    service.wait_ready()
    try:
        async with RpcClient(service.socket, timeout=10) as client:
            status = await client.call("replay.status")
            assert status["now"] == "2015-03-02T22:00:00.000000+00:00"
            await client.call("replay.advance", {"to": "2015-03-03T06:00:00+00:00"})
            await asyncio.sleep(0)
            assert (await client.call("health"))["time"] == "2015-03-03T06:00:00.000000+00:00"
    finally:
        service.stop()


def next_2330(now: datetime) -> datetime:
    """The next 23:30 UTC (10:30 in Sydney) after ``now``."""
    fire = now.replace(hour=23, minute=30, second=0, microsecond=0)
    return fire if fire > now else fire + timedelta(days=1)


@contextlib.asynccontextmanager
async def driven(*services: BaseService) -> AsyncIterator[ReplayDriver]:
    """Start ``services`` (callees first) and drive them together; stop them afterwards."""
    for service in services:
        await service.start()
    clients = {
        service.name: RpcClient(service.home.socket_path(service.name), timeout=10) for service in services
    }
    try:
        yield ReplayDriver(clients)
    finally:
        for client in clients.values():
            await client.close()
        for service in reversed(services):
            await service.stop()


class Callee(BaseService):
    name = "callee"

    async def _start(self) -> None:
        self.seen: list[str] = []

    @rpc_method
    async def work(self) -> str:
        await self.clock.sleep(0)  # a call that takes a moment
        self.seen.append(utc_iso(self.clock.now()))
        return utc_iso(self.clock.now())


class Caller(BaseService):
    """Calls the callee at 23:30 UTC every day (10:30 in Sydney), like a scheduled task."""

    name = "caller"

    async def _start(self) -> None:
        self.answers: list[Any] = []  # what the callee answered
        self.callee = self.peer("callee", timeout=10)
        self.spawn(self._daily(), name="daily")

    async def _stop(self) -> None:
        await self.callee.close()

    async def _daily(self) -> None:
        while True:
            await self.clock.sleep_until(next_2330(self.clock.now()))
            self.answers.append(await self.callee.call("work"))


async def test_the_driver_moves_processes_together_through_their_timers(
    home: TradingHome, redis: EmbeddedRedis
) -> None:
    settings = load_settings(home, env={"REDIS_URL": redis.url})
    callee = Callee(settings, simulation=Simulation(START))
    ticker = Ticker(settings, simulation=Simulation(START))
    caller = Caller(settings, simulation=Simulation(START))
    async with driven(callee, ticker, caller) as driver:
        await driver.run(START + timedelta(days=3))
        # Three calls, each answered at the callee's own time, which is the caller's fire time.
        assert (
            caller.answers
            == callee.seen
            == [
                "2015-03-02T23:30:00.000000+00:00",
                "2015-03-03T23:30:00.000000+00:00",
                "2015-03-04T23:30:00.000000+00:00",
            ]
        )
        assert ticker.ticks == 3 * 24 * 4
        assert {s["now"] for s in (await driver.statuses()).values()} == {"2015-03-05T22:00:00.000000+00:00"}
        # Every deadline of any process is a step (the caller's fall on the ticker's quarter hours),
        # so no process runs ahead of one it asks: 288 steps for three days.
        assert driver.figures.steps == 3 * 24 * 4


class Refresher(BaseService):
    """Refreshes what it serves at 23:30 UTC every day, on a thread: the caller's time too."""

    name = "callee"

    async def _start(self) -> None:
        self.version = 0
        self.spawn(self._refresh_daily(), name="refresh", on_clock=True)

    async def _refresh_daily(self) -> None:
        while True:
            await self.clock.sleep_until(next_2330(self.clock.now()))
            await asyncio.to_thread(time.sleep, 0.1)  # a slow refresh
            self.version += 1

    @rpc_method
    async def work(self) -> int:
        return self.version


async def test_a_callee_finishes_its_timer_work_before_a_caller_due_at_the_same_time_fires(
    home: TradingHome, redis: EmbeddedRedis
) -> None:
    settings = load_settings(home, env={"REDIS_URL": redis.url})
    callee = Refresher(settings, simulation=Simulation(START))
    caller = Caller(settings, simulation=Simulation(START))
    async with driven(callee, caller) as driver:
        await driver.run(START + timedelta(days=3))
    assert caller.answers == [1, 2, 3]  # each day's refresh done before that day's call


async def test_the_scheduler_fires_its_tasks_at_their_times_through_a_replay(
    home: TradingHome, redis: EmbeddedRedis
) -> None:
    home.config_file.write_text(
        "[scheduler]\ndefault_tasks = false\n"
        '[scheduler.tasks.work]\nservice = "callee"\nmethod = "work"\nschedule = { at = "10:30" }\n'
    )
    settings = load_settings(home, env={"REDIS_URL": redis.url})
    monday = datetime(2015, 3, 1, 22, 0, tzinfo=UTC)  # Monday 09:00 in Sydney
    callee = Callee(settings, simulation=Simulation(monday))
    scheduler = SchedulerService(settings, simulation=Simulation(monday))
    await callee.start()
    await scheduler.start()
    clients = {name: RpcClient(home.socket_path(name), timeout=10) for name in ("callee", "scheduler")}
    try:
        await ReplayDriver(clients).run(monday + timedelta(days=7))
        # 10:30 in Sydney (AEDT, UTC+11) on the five sessions of the week.
        assert callee.seen == [f"2015-03-0{d}T23:30:00.000000+00:00" for d in (1, 2, 3, 4, 5)]
    finally:
        for client in clients.values():
            await client.close()
        await scheduler.stop()
        await callee.stop()


class Gate(BaseService):
    """Answers ``work`` only once its gate is open."""

    name = "callee"

    async def _start(self) -> None:
        self.gate = asyncio.Event()

    @rpc_method
    async def work(self) -> str:
        await self.gate.wait()
        return "done"


async def test_a_call_waiting_for_its_answer_keeps_the_caller_in_flight(
    home: TradingHome, redis: EmbeddedRedis
) -> None:
    settings = load_settings(home, env={"REDIS_URL": redis.url})
    callee = Gate(settings)
    caller = Caller(settings, simulation=Simulation(START))
    await callee.start()
    await caller.start()
    try:
        async with RpcClient(home.socket_path("caller"), timeout=10) as client:
            await client.call("replay.advance", {"to": next_2330(START).isoformat()})
            status = await client.call("replay.status")
            assert status["in_flight"] == 1  # its call to the callee, not the status call itself
            assert status["busy"] is True  # and the timer's work that made it
            callee.gate.set()
            await eventually(lambda: caller.answers == ["done"])
            await asyncio.sleep(0)
            status = await client.call("replay.status")
            assert (status["in_flight"], status["busy"]) == (0, False)
    finally:
        await caller.stop()
        await callee.stop()


class Flaky(Callee):
    """``work`` fails the first ``failures`` times it is called."""

    async def _start(self) -> None:
        await super()._start()
        self.failures = 2

    @rpc_method
    async def work(self) -> str:
        if self.failures:
            self.failures -= 1
            raise DependencyUnavailable("not yet")
        return await super().work()

    @rpc_method
    async def after(self) -> str:
        return await super().work()


async def test_a_scheduled_task_retrying_and_one_waiting_for_it_move_with_the_replay(
    home: TradingHome, redis: EmbeddedRedis
) -> None:
    """A run resting between attempts, and a run resting until the run it depends on ends, are
    not work: the replay moves on to the retry's time, and the dependent runs after it."""
    home.config_file.write_text(
        "[scheduler]\ndefault_tasks = false\n"
        '[scheduler.tasks.first]\nservice = "callee"\nmethod = "work"\nschedule = { at = "10:30" }\n'
        "retries = 2\nretry_backoff_s = 600\n"
        '[scheduler.tasks.second]\nservice = "callee"\nmethod = "after"\nschedule = { at = "10:30" }\n'
        'depends_on = ["first"]\n'
    )
    settings = load_settings(home, env={"REDIS_URL": redis.url})
    monday = datetime(2015, 3, 1, 22, 0, tzinfo=UTC)  # Monday 09:00 in Sydney
    callee = Flaky(settings, simulation=Simulation(monday))
    scheduler = SchedulerService(settings, simulation=Simulation(monday))
    await callee.start()
    await scheduler.start()
    clients = {name: RpcClient(home.socket_path(name), timeout=10) for name in ("callee", "scheduler")}
    try:
        await ReplayDriver(clients).run(monday + timedelta(hours=3))
        # Fails at 10:30 and 10:40 in Sydney, succeeds at 10:50 (600 s apart at most); the second
        # task, waiting for it all along, runs right after, at the same time.
        assert callee.seen == ["2015-03-01T23:50:00.000000+00:00"] * 2
    finally:
        for client in clients.values():
            await client.close()
        await scheduler.stop()
        await callee.stop()
