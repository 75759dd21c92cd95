"""The scheduler in-process on a simulated clock, calling real RPC endpoints over Unix sockets.

Every target is a real ``RpcServer`` on the socket of the service it stands for; it records each
call with the simulated time, and can be told to fail, refuse or hang. Time only moves when a
test moves it, and only once the scheduler is idle, so whole weeks run in seconds.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from services.asx.calendar import SYDNEY, AsxCalendar
from services.base.clock import SimulatedClock
from services.base.config import TradingHome, load_settings
from services.base.errors import DependencyUnavailable, InvalidParams, NotFound, Rejected
from services.base.redis_server import EmbeddedRedis
from services.base.rpc import rpc_method
from services.base.rpc.client import RpcClient
from services.base.rpc.methods import MethodTable
from services.base.rpc.server import RpcServer
from services.scheduler.scheduler_service import SchedulerService
from tests.conftest import eventually

CALENDAR = AsxCalendar()
SERVICES = ("market_data", "prediction", "sentiment", "paper_trading", "manager")


def local(day: date, hh_mm: str) -> datetime:
    return datetime.combine(day, time.fromisoformat(hh_mm), SYDNEY)


def stamp(when: datetime) -> str:
    return when.astimezone(SYDNEY).strftime("%Y-%m-%d %H:%M %Z")


class Target:
    """One service's endpoint. ``plans["method"]`` is a list of what the next calls do."""

    def __init__(self, name: str, harness: Harness) -> None:
        self.name = name
        self.harness = harness

    async def _answer(self, method: str) -> dict[str, Any]:
        key = f"{self.name}.{method}"
        self.harness.calls.append((stamp(self.harness.clock.now()), key))
        plan = self.harness.plans.get(key)
        action = plan.pop(0) if plan else "ok"
        if action == "fail":
            raise DependencyUnavailable(f"{self.name}: upstream unreachable")
        if action == "refuse":
            raise Rejected("not now", reason="test")
        if action == "hang":
            await asyncio.sleep(30)
        if action == "slow":
            await asyncio.sleep(0.3)
        return {"service": self.name, "method": method}

    @rpc_method
    async def refresh_all_data(self) -> dict[str, Any]:
        return await self._answer("refresh_all_data")

    @rpc_method
    async def generate_predictions(self) -> dict[str, Any]:
        return await self._answer("generate_predictions")

    @rpc_method
    async def refresh_sentiment_cache(self) -> dict[str, Any]:
        return await self._answer("refresh_sentiment_cache")

    @rpc_method
    async def end_of_day_sync(self) -> dict[str, Any]:
        return await self._answer("end_of_day_sync")

    @rpc_method
    async def backup(self) -> dict[str, Any]:
        return await self._answer("backup")


@dataclass
class Harness:
    home: TradingHome
    redis: EmbeddedRedis
    clock: SimulatedClock
    calls: list[tuple[str, str]] = field(default_factory=list)
    plans: dict[str, list[str]] = field(default_factory=dict)
    servers: dict[str, RpcServer] = field(default_factory=dict)
    scheduler: SchedulerService | None = None

    async def start_target(self, name: str) -> None:
        server = RpcServer(MethodTable.from_object(Target(name, self)), self.home.socket_path(name))
        await server.start()
        self.servers[name] = server

    async def stop_target(self, name: str) -> None:
        await self.servers.pop(name).close(0)

    async def start_scheduler(self, config: str | None = None) -> SchedulerService:
        if config is not None:
            self.home.config_file.write_text(config)
        settings = load_settings(self.home, env={"REDIS_URL": self.redis.url})
        self.scheduler = SchedulerService(settings, clock=self.clock, calendar=CALENDAR)
        await self.scheduler.start()
        await self.settle()
        return self.scheduler

    async def stop_scheduler(self) -> None:
        if self.scheduler is not None:
            await self.scheduler.stop()
            self.scheduler = None

    async def settle(self) -> None:
        scheduler = self.scheduler
        assert scheduler is not None
        await eventually(lambda: scheduler.idle)

    async def run_until(self, until: datetime) -> None:
        """Step the clock from timer to timer, letting the scheduler finish each step's work."""
        while True:
            await self.settle()
            deadline = self.clock.next_deadline()
            if deadline is None or deadline > until:
                break
            await self.clock.advance_to(deadline)
        await self.clock.advance_to(until)
        await self.settle()

    def client(self) -> RpcClient:
        return RpcClient(self.home.socket_path("scheduler"), timeout=10)


@pytest.fixture
async def harness(home: TradingHome, redis: EmbeddedRedis) -> AsyncIterator[Harness]:
    # Sunday 20 December 2026, noon in Sydney.
    harness = Harness(home, redis, SimulatedClock(local(date(2026, 12, 20), "12:00")))
    for name in SERVICES:
        await harness.start_target(name)
    yield harness
    await harness.stop_scheduler()
    for name in list(harness.servers):
        await harness.stop_target(name)


def default_day(day: date, *, trading: bool, close: str = "16:00") -> list[tuple[str, str]]:
    """The default schedule's calls on one day, written out from the issue's list."""
    calls = [(stamp(local(day, "02:00")), "manager.backup")]
    if not trading:
        return calls
    calls += [
        (stamp(local(day, "09:30")), "prediction.generate_predictions"),
        (stamp(local(day, "09:45")), "market_data.refresh_all_data"),
        (stamp(local(day, "09:50")), "sentiment.refresh_sentiment_cache"),
    ]
    slot, end = local(day, "10:15"), local(day, close)
    while slot < end:
        calls += [
            (stamp(slot), "market_data.refresh_all_data"),
            (stamp(slot), "prediction.generate_predictions"),
        ]
        slot += timedelta(minutes=15)
    calls += [
        (stamp(local(day, "17:00")), "prediction.generate_predictions"),
        (stamp(local(day, "17:30")), "paper_trading.end_of_day_sync"),
    ]
    return calls


async def test_christmas_week_runs_exactly_the_default_schedule(harness: Harness) -> None:
    redis = aioredis.Redis.from_url(harness.redis.url)
    events = redis.pubsub()
    await events.psubscribe("trading.task_*")
    await harness.start_scheduler()
    await harness.run_until(local(date(2026, 12, 29), "00:00"))

    expected = [
        *default_day(date(2026, 12, 21), trading=True),
        *default_day(date(2026, 12, 22), trading=True),
        *default_day(date(2026, 12, 23), trading=True),
        *default_day(date(2026, 12, 24), trading=True, close="14:10"),  # early close: last slot 14:00
        *default_day(date(2026, 12, 25), trading=False),  # Christmas
        *default_day(date(2026, 12, 26), trading=False),  # Saturday (Boxing Day)
        *default_day(date(2026, 12, 27), trading=False),
        *default_day(date(2026, 12, 28), trading=False),  # Boxing Day observed
    ]
    assert harness.calls == expected
    assert ("2026-12-24 14:00 AEDT", "prediction.generate_predictions") in harness.calls
    assert ("2026-12-24 14:15 AEDT", "market_data.refresh_all_data") not in harness.calls

    async with harness.client() as client:
        tasks = {task["id"]: task for task in await client.call("list_tasks")}
        assert {task["last_status"] for task in tasks.values()} == {"succeeded"}
        assert {task["consecutive_failures"] for task in tasks.values()} == {0}
        # Next: Tuesday 29 December, the first session after the holidays.
        assert tasks["morning_analysis"]["next_run_local"] == "2026-12-29T09:30:00+11:00"
        assert tasks["morning_analysis"]["next_run_utc"] == "2026-12-28T22:30:00.000000+00:00"
        assert tasks["daily_backup"]["next_run_local"] == "2026-12-29T02:00:00+11:00"
        history = await client.call("get_task_history", {"task_id": "paper_trading_eod", "limit": 10})
        assert [run["scheduled_for"][:10] for run in history["runs"]] == [
            "2026-12-24", "2026-12-23", "2026-12-22", "2026-12-21",
        ]  # fmt: skip
        assert history["runs"][0]["attempts"][0]["outcome"] == "succeeded"

    received = []
    while (message := await events.get_message(timeout=0.5)) is not None:
        if message["type"] == "pmessage":
            received.append(orjson.loads(message["data"]))
    await events.aclose()
    await redis.aclose()
    assert len(received) == len(expected)
    assert {event["type"] for event in received} == {"task_completed"}
    assert received[0]["data"]["task_id"] == "daily_backup"


async def test_spring_forward_keeps_local_times(harness: Harness) -> None:
    # Sunday 4 October 2026: at 02:00 AEST the clocks go forward to 03:00 AEDT.
    harness.clock = SimulatedClock(local(date(2026, 10, 3), "12:00"))
    await harness.start_scheduler()
    await harness.run_until(local(date(2026, 10, 5), "10:00"))
    assert harness.calls == [
        ("2026-10-04 03:00 AEDT", "manager.backup"),  # 02:00 did not exist: it runs at the jump
        ("2026-10-05 02:00 AEDT", "manager.backup"),
        ("2026-10-05 09:30 AEDT", "prediction.generate_predictions"),
        ("2026-10-05 09:45 AEDT", "market_data.refresh_all_data"),
        ("2026-10-05 09:50 AEDT", "sentiment.refresh_sentiment_cache"),
    ]
    history = await harness.scheduler.get_task_history("daily_backup")  # type: ignore[union-attr]
    assert [run["started_at"] for run in history["runs"]] == [
        "2026-10-04T15:00:00.000000+00:00",
        "2026-10-03T16:00:00.000000+00:00",  # 23 hours apart: the day was an hour short
    ]


async def test_fall_back_runs_the_repeated_hour_once(harness: Harness) -> None:
    # Sunday 4 April 2027: at 03:00 AEDT the clocks go back to 02:00 AEST, so 02:00 happens twice.
    harness.clock = SimulatedClock(local(date(2027, 4, 3), "12:00"))
    await harness.start_scheduler()
    await harness.run_until(local(date(2027, 4, 5), "09:55"))
    assert harness.calls == [
        ("2027-04-04 02:00 AEDT", "manager.backup"),
        ("2027-04-05 02:00 AEST", "manager.backup"),
        ("2027-04-05 09:30 AEST", "prediction.generate_predictions"),
        ("2027-04-05 09:45 AEST", "market_data.refresh_all_data"),
        ("2027-04-05 09:50 AEST", "sentiment.refresh_sentiment_cache"),
    ]
    async with harness.client() as client:
        status = await client.call("get_market_status")
        assert status["phase"] == "pre_open"
        assert status["next_open_local"] == "2027-04-05T10:00:00+10:00"
        assert status["next_open_utc"] == "2027-04-05T00:00:00+00:00"


async def test_retries_back_off_from_30_seconds_capped_at_300(harness: Harness) -> None:
    config = """
[scheduler]
default_tasks = false
[scheduler.tasks.refresh]
service = "market_data"
method = "refresh_all_data"
schedule = { at = "09:45" }
retries = 5
retry_backoff_s = 30
retry_backoff_max_s = 100
"""
    harness.plans["market_data.refresh_all_data"] = ["fail"] * 5
    await harness.start_scheduler(config)
    await harness.run_until(local(date(2026, 12, 21), "10:00"))
    # 30, 60, then 120 and 240 capped at 100: attempts at +0, +30, +90, +190, +290, +390 s.
    assert [when for when, _ in harness.calls] == [
        "2026-12-21 09:45 AEDT", "2026-12-21 09:45 AEDT", "2026-12-21 09:46 AEDT",
        "2026-12-21 09:48 AEDT", "2026-12-21 09:49 AEDT", "2026-12-21 09:51 AEDT",
    ]  # fmt: skip
    history = await harness.scheduler.get_task_history("refresh")  # type: ignore[union-attr]
    run = history["runs"][0]
    assert run["outcome"] == "succeeded"
    starts = [datetime.fromisoformat(a["started_at"]) for a in run["attempts"]]
    assert [int((b - a).total_seconds()) for a, b in itertools.pairwise(starts)] == [
        30,
        60,
        100,
        100,
        100,
    ]
    assert [a["outcome"] for a in run["attempts"]] == ["failed"] * 5 + ["succeeded"]
    assert run["attempts"][0]["error"] == "market_data: upstream unreachable"


async def test_default_retries_give_up_after_three_and_count_failures(harness: Harness) -> None:
    harness.plans["sentiment.refresh_sentiment_cache"] = ["fail"] * 8
    await harness.start_scheduler()
    await harness.run_until(local(date(2026, 12, 22), "10:00"))
    sentiment = [when for when, call in harness.calls if call == "sentiment.refresh_sentiment_cache"]
    # Monday: 09:50, +30 s, +60 s, +120 s: four attempts, then failed. Tuesday likewise.
    assert sentiment == [
        "2026-12-21 09:50 AEDT", "2026-12-21 09:50 AEDT", "2026-12-21 09:51 AEDT", "2026-12-21 09:53 AEDT",
        "2026-12-22 09:50 AEDT", "2026-12-22 09:50 AEDT", "2026-12-22 09:51 AEDT", "2026-12-22 09:53 AEDT",
    ]  # fmt: skip
    async with harness.client() as client:
        tasks = {task["id"]: task for task in await client.call("list_tasks")}
        assert tasks["morning_sentiment"]["last_status"] == "failed"
        assert tasks["morning_sentiment"]["consecutive_failures"] == 2
        assert tasks["morning_sentiment"]["last_run"]["error"] == "sentiment: upstream unreachable"
        health = await client.call("health")
        assert health["checks"]["tasks"]["status"] == "ok"  # two in a row: not yet degraded


async def test_failed_dependency_blocks_its_dependent(harness: Harness) -> None:
    # The 10:15 refresh fails every attempt; the 10:30 one succeeds.
    harness.plans["market_data.refresh_all_data"] = ["ok"] + ["fail"] * 4
    await harness.start_scheduler()
    await harness.run_until(local(date(2026, 12, 21), "10:35"))
    predictions = [when for when, call in harness.calls if call == "prediction.generate_predictions"]
    assert predictions == ["2026-12-21 09:30 AEDT", "2026-12-21 10:30 AEDT"]
    history = await harness.scheduler.get_task_history("intraday_predictions")  # type: ignore[union-attr]
    latest, blocked = history["runs"]
    assert latest["outcome"] == "succeeded"
    assert blocked["outcome"] == "blocked"
    assert blocked["error"].startswith("depends on 'intraday_market_data', whose last run today failed")
    assert blocked["attempts"] == []
    # It waited for the refresh's retries (30 + 60 + 120 s) before deciding.
    assert blocked["ended_at"] == "2026-12-20T23:18:30.000000+00:00"

    async with harness.client() as client:
        with pytest.raises(Rejected) as refused:
            await client.call("unschedule_task", {"task_id": "intraday_market_data"})
        assert refused.value.data["reason"] == "has_dependents"


async def test_dependency_not_run_today_blocks_manual_run_unless_forced(harness: Harness) -> None:
    await harness.start_scheduler()
    await harness.run_until(local(date(2026, 12, 21), "10:05"))  # Monday, market open
    async with harness.client() as client:
        run = await client.call("execute_task", {"task_id": "intraday_predictions"})
        assert run["outcome"] == "blocked"
        assert run["error"] == "depends on 'intraday_market_data', which has not run today"
        forced = await client.call("execute_task", {"task_id": "intraday_predictions", "force": True})
        assert forced["outcome"] == "succeeded"
        assert forced["trigger"] == "manual"

        await harness.run_until(local(date(2026, 12, 21), "16:30"))  # after the close
        with pytest.raises(Rejected) as refused:
            await client.call("execute_task", {"task_id": "intraday_market_data"})
        assert refused.value.data["reason"] == "phase"
        assert "the market is post_market" in refused.value.message


async def test_misfire_on_restart_runs_once_within_grace_and_records_the_rest(harness: Harness) -> None:
    await harness.start_scheduler()
    await harness.run_until(local(date(2026, 12, 21), "09:00"))
    await harness.stop_scheduler()
    harness.calls.clear()

    # Down from 09:00 to 09:56: 09:30 and 09:45 are beyond their 10-minute grace, 09:50 is within.
    await harness.clock.advance_to(local(date(2026, 12, 21), "09:56"))
    await harness.start_scheduler()
    assert harness.calls == [("2026-12-21 09:56 AEDT", "sentiment.refresh_sentiment_cache")]
    async with harness.client() as client:
        morning = await client.call("get_task_history", {"task_id": "morning_analysis"})
        assert morning["runs"][0]["outcome"] == "missed"
        assert morning["runs"][0]["scheduled_for"] == "2026-12-20T22:30:00.000000+00:00"
        sentiment = await client.call("get_task_history", {"task_id": "morning_sentiment"})
        assert sentiment["runs"][0]["trigger"] == "misfire"
        assert sentiment["runs"][0]["outcome"] == "succeeded"
        assert sentiment["runs"][0]["scheduled_for"] == "2026-12-20T22:50:00.000000+00:00"
        # The plan goes on from now.
        tasks = {task["id"]: task for task in await client.call("list_tasks")}
        assert tasks["morning_analysis"]["next_run_local"] == "2026-12-22T09:30:00+11:00"
        assert tasks["intraday_market_data"]["next_run_local"] == "2026-12-21T10:15:00+11:00"


async def test_run_cut_short_by_a_stop_is_recorded_as_interrupted(harness: Harness) -> None:
    harness.plans["market_data.refresh_all_data"] = ["fail"]
    await harness.start_scheduler()
    await harness.run_until(local(date(2026, 12, 21), "09:45:10"))  # in the back-off after attempt 1
    async with harness.client() as client:
        tasks = {task["id"]: task for task in await client.call("list_tasks")}
        assert tasks["morning_market_data"]["running"] is True
    await harness.stop_scheduler()

    with sqlite3.connect(harness.home.database("scheduler")) as conn:
        outcome, error = conn.execute(
            "SELECT outcome, error FROM runs WHERE task_id = 'morning_market_data'"
        ).fetchone()
    assert (outcome, error) == ("interrupted", "the scheduler stopped during this run")

    # Restarted within the task's misfire grace: the cut-short run is run again, once.
    harness.calls.clear()
    await harness.clock.advance_to(local(date(2026, 12, 21), "09:47"))
    await harness.start_scheduler()
    await harness.settle()
    assert harness.calls == [("2026-12-21 09:47 AEDT", "market_data.refresh_all_data")]
    async with harness.client() as client:
        runs = (await client.call("get_task_history", {"task_id": "morning_market_data"}))["runs"]
    outcomes = [(r["trigger"], r["outcome"]) for r in runs]
    assert outcomes == [("resume", "succeeded"), ("schedule", "interrupted")]
    assert runs[0]["scheduled_for"] == "2026-12-20T22:45:00.000000+00:00"


async def test_a_run_cut_short_long_ago_is_not_run_again(harness: Harness) -> None:
    harness.plans["market_data.refresh_all_data"] = ["fail"]
    await harness.start_scheduler()
    await harness.run_until(local(date(2026, 12, 21), "09:45:10"))
    await harness.stop_scheduler()
    harness.calls.clear()
    await harness.clock.advance_to(local(date(2026, 12, 21), "09:56"))  # past the 10-minute grace
    await harness.start_scheduler()
    await harness.settle()
    assert ("2026-12-21 09:56 AEDT", "market_data.refresh_all_data") not in harness.calls


async def test_target_down_or_missing_method_fails_with_the_reason(harness: Harness) -> None:
    await harness.stop_target("paper_trading")
    await harness.start_scheduler()
    await harness.run_until(local(date(2026, 12, 21), "17:45"))
    eod = await harness.scheduler.get_task_history("paper_trading_eod")  # type: ignore[union-attr]
    run = eod["runs"][0]
    assert run["outcome"] == "failed"
    assert len(run["attempts"]) == 4  # the first and three retries
    assert "cannot connect to" in run["error"]
    assert "paper_trading.sock" in run["error"]

    async with harness.client() as client:
        scheduled = await client.call(
            "schedule_task",
            {"config": {"id": "typo", "service": "prediction", "method": "generate_predicitons",
                        "schedule": {"at": "18:00", "days": "all"}}},
        )  # fmt: skip
        assert scheduled["origin"] == "rpc"
        await harness.run_until(local(date(2026, 12, 21), "18:01"))
        typo = await client.call("get_task_history", {"task_id": "typo"})
        assert typo["runs"][0]["outcome"] == "failed"
        assert len(typo["runs"][0]["attempts"]) == 1  # a method that does not exist is not retried
        assert typo["runs"][0]["error"].startswith("prediction.generate_predicitons does not exist")


async def test_refused_call_is_not_retried(harness: Harness) -> None:
    harness.plans["prediction.generate_predictions"] = ["refuse"]
    await harness.start_scheduler()
    await harness.run_until(local(date(2026, 12, 21), "09:31"))
    history = await harness.scheduler.get_task_history("morning_analysis")  # type: ignore[union-attr]
    assert history["runs"][0]["outcome"] == "failed"
    assert history["runs"][0]["error"] == "not now"
    assert len(history["runs"][0]["attempts"]) == 1


async def test_a_hanging_target_times_out(harness: Harness) -> None:
    config = """
[scheduler]
default_tasks = false
[scheduler.tasks.slow]
service = "prediction"
method = "generate_predictions"
schedule = { at = "09:30" }
retries = 0
timeout_s = 0.2
"""
    harness.plans["prediction.generate_predictions"] = ["hang"]
    await harness.start_scheduler(config)
    await harness.run_until(local(date(2026, 12, 21), "09:31"))
    history = await harness.scheduler.get_task_history("slow")  # type: ignore[union-attr]
    assert history["runs"][0]["outcome"] == "failed"
    assert history["runs"][0]["error"] == "generate_predictions did not answer within 0.2s"


async def test_rpc_tasks_survive_restarts_and_bad_configs_name_the_field(harness: Harness) -> None:
    await harness.start_scheduler()
    async with harness.client() as client:
        base = {"id": "x", "service": "prediction", "method": "m", "schedule": {"at": "09:00"}}
        for config, field_name in [
            ({**base, "schedule": {"at": "25:00"}}, "config.schedule.at"),
            ({**base, "schedule": {"every_minutes": 0}}, "config.schedule.every_minutes"),
            ({**base, "colour": 1}, "config.colour"),
            ({**base, "phase": "lunch"}, "config.phase"),
            ({**base, "service": "../etc"}, "config.service"),
            ({**base, "depends_on": ["nope"]}, "config.depends_on"),
            ({key: value for key, value in base.items() if key != "schedule"}, "config.schedule"),
        ]:
            with pytest.raises(InvalidParams) as bad:
                await client.call("schedule_task", {"config": config})
            assert bad.value.data["field"] == field_name, config

        await client.call(
            "schedule_task",
            {"config": {"id": "lunch_check", "service": "prediction", "method": "generate_predictions",
                        "schedule": {"at": "12:30"}, "phase": ["open"]}},
        )  # fmt: skip
        removed = await client.call("unschedule_task", {"task_id": "paper_trading_eod"})
        assert removed == {"task_id": "paper_trading_eod", "removed": True, "origin": "default"}
        with pytest.raises(NotFound):
            await client.call("unschedule_task", {"task_id": "paper_trading_eod"})

    await harness.stop_scheduler()
    await harness.start_scheduler()
    async with harness.client() as client:
        tasks = {task["id"]: task for task in await client.call("list_tasks")}
        assert "paper_trading_eod" not in tasks
        assert tasks["lunch_check"]["origin"] == "rpc"
        assert tasks["lunch_check"]["next_run_local"] == "2026-12-21T12:30:00+11:00"
        assert tasks["lunch_check"]["schedule_text"] == "12:30 on trading days"
        with pytest.raises(NotFound):
            await client.call("get_task_history", {"task_id": "never_existed"})


async def test_market_status_across_a_holiday_and_an_early_close(harness: Harness) -> None:
    await harness.start_scheduler()
    async with harness.client() as client:
        sunday = await client.call("get_market_status")
        assert (sunday["phase"], sunday["reason"], sunday["is_trading_day"]) == ("closed", "weekend", False)
        assert sunday["next_open_local"] == "2026-12-21T10:00:00+11:00"
        await harness.run_until(local(date(2026, 12, 24), "14:15"))
        auction = await client.call("get_market_status")
        assert (auction["phase"], auction["reason"]) == ("closing_auction", "early close at 14:10")
        assert auction["next_open_local"] == "2026-12-29T10:00:00+11:00"
        await harness.run_until(local(date(2026, 12, 25), "11:00"))
        christmas = await client.call("get_market_status")
        assert (christmas["phase"], christmas["reason"]) == ("closed", "holiday: Christmas")
        assert christmas["next_close_utc"] == "2026-12-29T05:00:00+00:00"


async def test_runs_go_on_without_redis_and_health_says_so(harness: Harness) -> None:
    await harness.start_scheduler()
    harness.redis.stop()
    await harness.run_until(local(date(2026, 12, 21), "10:00"))
    assert [call for _, call in harness.calls] == [
        "manager.backup",
        "prediction.generate_predictions",
        "market_data.refresh_all_data",
        "sentiment.refresh_sentiment_cache",
    ]
    async with harness.client() as client:
        health = await client.call("health")
        assert health["status"] == "degraded"
        assert health["checks"]["redis"]["status"] == "degraded"
        assert health["checks"]["tasks"]["status"] == "ok"
        with pytest.raises(InvalidParams) as bad:
            await client.call("schedule_task", {"config": "daily at nine"})
        assert bad.value.data["field"] == "config"


async def test_one_task_never_runs_twice_at_once(harness: Harness) -> None:
    harness.plans["prediction.generate_predictions"] = ["slow"]
    await harness.start_scheduler()
    async with harness.client() as first, harness.client() as second:
        outcomes = await asyncio.gather(
            first.call("execute_task", {"task_id": "evening_analysis", "force": True}),
            second.call("execute_task", {"task_id": "evening_analysis", "force": True}),
            return_exceptions=True,
        )
    succeeded = [o for o in outcomes if isinstance(o, dict)]
    refused = [o for o in outcomes if isinstance(o, Rejected)]
    assert [run["outcome"] for run in succeeded] == ["succeeded"]
    assert [error.data["reason"] for error in refused] == ["already_running"]
    assert harness.calls == [("2026-12-20 12:00 AEDT", "prediction.generate_predictions")]


async def test_replacing_a_running_task_keeps_its_status_true(harness: Harness) -> None:
    harness.plans["prediction.generate_predictions"] = ["slow"]
    await harness.start_scheduler()
    async with harness.client() as client:
        started = await client.call(
            "execute_task", {"task_id": "evening_analysis", "force": True, "wait": False}
        )
        assert started["outcome"] == "running"
        replaced = await client.call(
            "schedule_task",
            {"config": {"id": "evening_analysis", "service": "prediction", "method": "generate_predictions",
                        "schedule": {"at": "17:15"}}},
        )  # fmt: skip
        assert replaced["running"] is True
        await harness.settle()
        task = next(t for t in await client.call("list_tasks") if t["id"] == "evening_analysis")
        assert (task["last_status"], task["running"], task["origin"]) == ("succeeded", False, "rpc")
        assert task["next_run_local"] == "2026-12-21T17:15:00+11:00"


async def test_a_changed_schedule_is_not_a_misfire_after_restart(harness: Harness) -> None:
    await harness.start_scheduler()
    await harness.run_until(local(date(2026, 12, 21), "09:00"))
    await harness.stop_scheduler()
    await harness.clock.advance_to(local(date(2026, 12, 21), "09:35"))
    config = """
[scheduler.tasks.morning_analysis]
service = "prediction"
method = "generate_predictions"
schedule = { at = "15:00" }
"""
    harness.calls.clear()
    await harness.start_scheduler(config)  # 09:30 was the old time: neither run nor missed now
    history = await harness.scheduler.get_task_history("morning_analysis")  # type: ignore[union-attr]
    assert history["runs"] == []
    assert ("2026-12-21 09:35 AEDT", "prediction.generate_predictions") not in harness.calls
    async with harness.client() as client:
        task = next(t for t in await client.call("list_tasks") if t["id"] == "morning_analysis")
        assert task["next_run_local"] == "2026-12-21T15:00:00+11:00"


async def test_a_fault_inside_the_scheduler_fails_the_run_and_is_not_left_running(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    scheduler = await harness.start_scheduler()

    async def broken(task: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(scheduler, "_call", broken)
    async with harness.client() as client:
        run = await client.call("execute_task", {"task_id": "evening_analysis", "force": True})
        assert run["outcome"] == "failed"
        assert run["error"] == "internal error in the scheduler: disk on fire"
        task = next(t for t in await client.call("list_tasks") if t["id"] == "evening_analysis")
        assert (task["running"], task["consecutive_failures"]) == (False, 1)
