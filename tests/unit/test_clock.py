"""SystemClock and SimulatedClock; utc_iso."""

from __future__ import annotations

import asyncio
import itertools
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from services.base.clock import SimulatedClock, SystemClock, utc_iso

START = datetime(2024, 3, 4, 0, 0, tzinfo=UTC)
AEST = timezone(timedelta(hours=10))


def test_system_clock_now_is_aware_utc() -> None:
    now = SystemClock().now()
    assert now.tzinfo is not None
    assert now.utcoffset() == timedelta(0)
    assert abs(now - datetime.now(UTC)) < timedelta(minutes=5)


async def test_system_clock_sleep_until_past_returns() -> None:
    clock = SystemClock()
    await clock.sleep_until(clock.now() - timedelta(days=1))
    await clock.sleep(-5)  # a negative sleep is no sleep


async def test_system_clock_rejects_naive_datetime() -> None:
    with pytest.raises(ValueError, match="naive"):
        await SystemClock().sleep_until(datetime(2024, 1, 1))


def test_simulated_clock_starts_where_told_and_normalises_to_utc() -> None:
    clock = SimulatedClock(datetime(2024, 3, 4, 10, 0, tzinfo=AEST))
    assert clock.now() == START
    assert clock.now().utcoffset() == timedelta(0)
    assert clock.now().tzinfo is UTC
    assert clock.pending_timers == 0
    assert clock.next_deadline() is None


def test_simulated_clock_rejects_naive_start() -> None:
    with pytest.raises(ValueError, match="naive"):
        SimulatedClock(datetime(2024, 3, 4))


async def test_simulated_clock_rejects_naive_sleep_until_and_advance_to() -> None:
    clock = SimulatedClock(START)
    with pytest.raises(ValueError, match="naive"):
        await clock.sleep_until(datetime(2024, 3, 5))
    with pytest.raises(ValueError, match="naive"):
        await clock.advance_to(datetime(2024, 3, 5))
    assert clock.now() == START


async def test_advance_moves_time_without_sleepers() -> None:
    clock = SimulatedClock(START)
    await clock.advance(90)
    assert clock.now() == START + timedelta(seconds=90)
    await clock.advance(timedelta(hours=1))
    assert clock.now() == START + timedelta(seconds=90, hours=1)


async def test_sleepers_wake_in_deadline_order() -> None:
    clock = SimulatedClock(START)
    woke: list[tuple[str, datetime]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.now()))

    # Created out of deadline order on purpose.
    tasks = [
        asyncio.create_task(sleeper(name, s)) for name, s in [("c", 30), ("a", 10), ("d", 300), ("b", 20)]
    ]
    await asyncio.sleep(0)
    assert clock.pending_timers == 4
    assert clock.next_deadline() == START + timedelta(seconds=10)

    await clock.advance(25)
    assert woke == [("a", START + timedelta(seconds=10)), ("b", START + timedelta(seconds=20))]
    assert clock.now() == START + timedelta(seconds=25)
    assert clock.pending_timers == 2

    await clock.advance(300)
    assert [name for name, _ in woke] == ["a", "b", "c", "d"]
    # Each sleeper saw the clock at its own deadline, not at the end of the step.
    assert woke[2][1] == START + timedelta(seconds=30)
    assert woke[3][1] == START + timedelta(seconds=300)
    assert clock.now() == START + timedelta(seconds=325)
    assert clock.pending_timers == 0
    await asyncio.gather(*tasks)


async def test_equal_deadlines_wake_in_sleep_order() -> None:
    clock = SimulatedClock(START)
    woke: list[int] = []

    async def sleeper(n: int) -> None:
        await clock.sleep_until(START + timedelta(minutes=1))
        woke.append(n)

    tasks = [asyncio.create_task(sleeper(n)) for n in range(5)]
    await asyncio.sleep(0)
    await clock.advance_to(START + timedelta(minutes=1))
    assert woke == [0, 1, 2, 3, 4]
    await asyncio.gather(*tasks)


async def test_periodic_task_fires_right_number_of_times_over_a_day() -> None:
    clock = SimulatedClock(START)
    fired: list[datetime] = []

    async def every_minute() -> None:
        while True:
            await clock.sleep(60)
            fired.append(clock.now())

    task = asyncio.create_task(every_minute())
    await clock.advance(timedelta(days=1))
    assert len(fired) == 24 * 60
    assert fired[0] == START + timedelta(minutes=1)
    assert fired[-1] == START + timedelta(days=1)
    assert all(b - a == timedelta(minutes=1) for a, b in itertools.pairwise(fired))
    assert clock.pending_timers == 1  # the next minute's timer

    await clock.advance(59)
    assert len(fired) == 24 * 60
    await clock.advance(1)
    assert len(fired) == 24 * 60 + 1

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_two_periodic_tasks_interleave() -> None:
    clock = SimulatedClock(START)
    events: list[str] = []

    async def every(name: str, seconds: float) -> None:
        while True:
            await clock.sleep(seconds)
            events.append(name)

    tasks = [asyncio.create_task(every("fast", 60)), asyncio.create_task(every("slow", 150))]
    await clock.advance(timedelta(minutes=10))
    assert events.count("fast") == 10
    assert events.count("slow") == 4
    # slow at 150 s comes between fast at 120 s and 180 s.
    assert events[:4] == ["fast", "fast", "slow", "fast"]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_advance_backwards_raises() -> None:
    clock = SimulatedClock(START)
    await clock.advance(60)
    with pytest.raises(ValueError, match="backwards"):
        await clock.advance(-1)
    with pytest.raises(ValueError, match="backwards"):
        await clock.advance(timedelta(seconds=-30))
    with pytest.raises(ValueError, match="cannot go back"):
        await clock.advance_to(START)
    assert clock.now() == START + timedelta(seconds=60)
    await clock.advance(0)
    await clock.advance_to(clock.now())
    assert clock.now() == START + timedelta(seconds=60)


async def test_cancelled_sleeper_does_not_break_advance() -> None:
    clock = SimulatedClock(START)
    woke: list[str] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(name)

    doomed = asyncio.create_task(sleeper("doomed", 10))
    survivor = asyncio.create_task(sleeper("survivor", 20))
    await asyncio.sleep(0)
    assert clock.pending_timers == 2

    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert clock.pending_timers == 1
    assert clock.next_deadline() == START + timedelta(seconds=20)

    await clock.advance(60)
    assert woke == ["survivor"]
    assert clock.now() == START + timedelta(seconds=60)
    await survivor


async def test_sleep_in_the_past_or_zero_returns_without_advance() -> None:
    clock = SimulatedClock(START)
    await asyncio.wait_for(clock.sleep(0), timeout=5)
    await asyncio.wait_for(clock.sleep(-10), timeout=5)
    await asyncio.wait_for(clock.sleep_until(START - timedelta(hours=1)), timeout=5)
    assert clock.pending_timers == 0
    assert clock.now() == START


async def test_sleep_until_accepts_other_timezones() -> None:
    clock = SimulatedClock(START)
    woke: list[datetime] = []

    async def sleeper() -> None:
        # 10:05 in UTC+10 is 00:05 UTC.
        await clock.sleep_until(datetime(2024, 3, 4, 10, 5, tzinfo=AEST))
        woke.append(clock.now())

    task = asyncio.create_task(sleeper())
    await clock.advance(timedelta(minutes=4, seconds=59))
    assert woke == []
    await clock.advance(1)
    assert woke == [START + timedelta(minutes=5)]
    await task


# --- utc_iso ------------------------------------------------------------------------------

ISO_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}\+00:00$")


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (datetime(2024, 3, 4, 5, 6, 7, tzinfo=UTC), "2024-03-04T05:06:07.000000+00:00"),
        (datetime(2024, 3, 4, 5, 6, 7, 123, tzinfo=UTC), "2024-03-04T05:06:07.000123+00:00"),
        (datetime(2024, 3, 4, 10, 0, 0, 500000, tzinfo=AEST), "2024-03-04T00:00:00.500000+00:00"),
        (
            datetime(2024, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=11))),
            "2023-12-31T13:30:00.000000+00:00",
        ),
    ],
)
def test_utc_iso_is_fixed_width_utc(when: datetime, expected: str) -> None:
    text = utc_iso(when)
    assert text == expected
    assert ISO_PATTERN.match(text)
    assert datetime.fromisoformat(text) == when


def test_utc_iso_strings_sort_as_times() -> None:
    times = [START + timedelta(microseconds=n * 999_999) for n in (5, 0, 3, 1, 12, 7)]
    texts = [utc_iso(t) for t in times]
    assert len({len(t) for t in texts}) == 1
    assert sorted(texts) == [utc_iso(t) for t in sorted(times)]


def test_utc_iso_rejects_naive() -> None:
    with pytest.raises(ValueError, match="naive"):
        utc_iso(datetime(2024, 3, 4))
