"""Work (what a process does for its clock's timers) and the Simulation a replay installs."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.base.clock import SimulatedClock, SystemClock
from services.base.config import TradingHome, load_settings
from services.base.errors import ConfigError
from services.base.service import BaseService
from services.base.simulation import REPLAY_CLOCK, ReplayClock, Simulation
from services.base.work import Work

START = datetime(2024, 3, 4, 0, 0, tzinfo=UTC)


async def test_a_tracked_item_is_at_work_until_it_is_done() -> None:
    work = Work(SimulatedClock(START))
    assert not work.busy
    item: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    work.track(item)
    work.track(item)  # twice is once
    assert work.busy
    item.set_result(None)
    assert not work.busy  # done: not at work, even before its callbacks have run
    work.track(item)  # a done item is not tracked again
    assert not work.busy


async def test_an_item_resting_until_a_time_is_at_work_again_the_moment_the_clock_reads_it() -> None:
    clock = SimulatedClock(START)
    work = Work(clock)
    item: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    work.track(item)
    with work.resting(item, until=START + timedelta(minutes=1)):
        assert not work.busy
        await clock.advance(59)
        assert not work.busy
        await clock.advance(1)
        assert work.busy  # the time has come: at work, though the block has not ended yet
    assert work.busy
    item.cancel()
    assert not work.busy


async def test_an_item_resting_on_a_future_or_an_event_is_at_work_once_it_is_done_or_set() -> None:
    work = Work(SimulatedClock(START))
    loop = asyncio.get_running_loop()
    item: asyncio.Future[None] = loop.create_future()
    other: asyncio.Future[None] = loop.create_future()
    changed = asyncio.Event()
    work.track(item)
    with work.resting(item, wake=[other, changed]):
        assert not work.busy
        changed.set()
        assert work.busy
        changed.clear()
        assert not work.busy
        other.set_result(None)
        assert work.busy
    item.set_result(None)


async def test_the_innermost_rest_decides_and_one_item_at_work_makes_the_process_busy() -> None:
    clock = SimulatedClock(START)
    work = Work(clock)
    loop = asyncio.get_running_loop()
    first: asyncio.Future[None] = loop.create_future()
    second: asyncio.Future[None] = loop.create_future()
    work.track(first)
    work.track(second)
    other: asyncio.Future[None] = loop.create_future()
    with work.resting(first, until=START + timedelta(hours=1)):
        assert work.busy  # the second is at work
        with work.resting(second, wake=[other]):
            assert not work.busy
            with work.resting(second, until=START + timedelta(seconds=1)):
                await clock.advance(1)
                assert work.busy
            assert not work.busy  # back to waiting for the other future
    for future in (first, second, other):
        future.cancel()


async def test_resting_needs_an_end_and_an_item_not_tracked_rests_unrecorded() -> None:
    work = Work(SystemClock())
    item: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    with pytest.raises(ValueError, match="a rest ends"), work.resting(item):
        pass
    with work.resting(item, until=datetime.now(UTC)):
        assert not work.busy
    assert not work.busy
    item.cancel()


async def test_on_the_replay_clock_a_woken_task_is_at_work_until_it_sleeps_again_or_ends() -> None:
    clock = ReplayClock(START)
    work_done = asyncio.Event()

    async def periodic() -> None:
        while True:
            await clock.sleep(60)
            await work_done.wait()  # the timer's work: a thread, a socket, another task
            work_done.clear()

    async def once() -> None:
        await clock.sleep(60)

    looping, single = asyncio.create_task(periodic()), asyncio.create_task(once())
    await asyncio.sleep(0)
    assert not clock.work.busy  # asleep on the clock is not at work
    await clock.advance(60)
    assert single.done()
    assert clock.work.busy  # the loop, still at its work; the ended task is not counted
    work_done.set()
    await asyncio.sleep(0)
    assert not clock.work.busy  # back asleep until the next minute
    await clock.advance(60)
    assert clock.work.busy
    looping.cancel()
    await asyncio.gather(looping, return_exceptions=True)
    assert not clock.work.busy


async def test_on_the_replay_clock_a_tracked_task_is_at_work_until_it_first_sleeps() -> None:
    clock = ReplayClock(START)
    started = asyncio.Event()

    async def works_then_sleeps() -> None:
        await started.wait()  # its first round of work, before any timer
        await clock.sleep(60)

    task = asyncio.create_task(works_then_sleeps())
    clock.work.track(task)
    await asyncio.sleep(0)
    assert clock.work.busy
    started.set()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not clock.work.busy
    await clock.advance(60)
    assert task.done()
    assert not clock.work.busy


async def test_a_sleep_for_a_time_already_passed_does_not_make_a_task_work() -> None:
    clock = ReplayClock(START)
    never = asyncio.Event()

    async def no_sleep_then_waits() -> None:
        await clock.sleep(0)
        await never.wait()

    task = asyncio.create_task(no_sleep_then_waits())
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not clock.work.busy
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


# -- the simulation and a service ---------------------------------------------------------------


class Plain(BaseService):
    name = "plain"


def test_an_ordinary_service_has_no_methods_of_a_simulation(home: TradingHome) -> None:
    service = Plain(load_settings(home, env={}))
    names = {spec.name for spec in service.rpc.methods}
    assert {"health", "metrics", "shutdown", "rpc.discover"} <= names
    assert not any(name.startswith("replay.") for name in names)
    assert isinstance(service.clock, SystemClock)


def test_a_simulated_service_has_its_clock_work_and_methods(home: TradingHome) -> None:
    simulation = Simulation(START)
    service = Plain(load_settings(home, env={}), simulation=simulation)
    assert service.clock is simulation.clock
    assert service.timer_work is simulation.work
    assert service.rpc.methods.get("replay.status") is not None
    advance = service.rpc.methods.get("replay.advance")
    assert advance is not None
    assert not advance.idempotent
    with pytest.raises(RuntimeError, match="already runs plain"):
        Plain(load_settings(home, env={}), simulation=simulation)
    with pytest.raises(ValueError, match="its own clock"):
        Plain(load_settings(home, env={}), simulation=Simulation(START), clock=SimulatedClock(START))


def test_a_simulated_service_counts_its_peers_calls(home: TradingHome) -> None:
    simulation = Simulation(START)
    service = Plain(load_settings(home, env={}), simulation=simulation)
    client = service.peer("other", timeout=1.0)
    assert client.on_call is not None
    client.on_call(1)
    assert simulation.outgoing == 1
    client.on_call(-1)
    assert simulation.outgoing == 0
    assert Plain(load_settings(home, env={})).peer("other", timeout=1.0).on_call is None


def test_the_environment_asks_for_a_simulation_at_the_replays_time(tmp_path: Path) -> None:
    assert Simulation.from_environment({}) is None
    clock_file = tmp_path / "replay-clock"
    clock_file.write_text("2015-03-02T22:00:00+00:00\n")
    simulation = Simulation.from_environment({REPLAY_CLOCK: str(clock_file)})
    assert simulation is not None
    assert simulation.clock.now() == datetime(2015, 3, 2, 22, 0, tzinfo=UTC)
    with pytest.raises(ConfigError, match=REPLAY_CLOCK):
        Simulation.from_environment({REPLAY_CLOCK: str(tmp_path / "absent")})
