"""The scheduler's cost per task run against calling the same method directly, in one run.

    .venv/bin/python bench/scheduler_bench.py [--calls 300] [--weeks 2]

One process and one event loop: a real ``RpcServer`` stands in for every target service (each
method answers at once), a real embedded Redis takes the events, and the scheduler writes every
run and attempt to its SQLite history as it does in production.

1. ``execute_task``: N manual runs through the scheduler's socket (RPC in, run and attempt rows,
   RPC out to the target, event, answer), against N direct calls to the target's method.
2. Simulated weeks: the default schedule (8 tasks, 54 runs on a full trading day) on a simulated
   clock from 2026-11-02, stepping to each fire time once the scheduler is idle; simulated trading
   days per second and runs per second, against the same number of direct calls in a loop.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.asx.calendar import AsxCalendar
from services.base.clock import SimulatedClock, SystemClock
from services.base.config import TradingHome, load_settings
from services.base.redis_server import EmbeddedRedis
from services.base.rpc import RpcClient, rpc_method
from services.base.rpc.methods import MethodTable
from services.base.rpc.server import RpcServer
from services.scheduler.scheduler_service import SchedulerService

SERVICES = ("market_data", "prediction", "sentiment", "paper_trading", "manager")
START = datetime(2026, 11, 1, 13, 0, tzinfo=UTC)  # Monday 2 November 2026, 00:00 in Sydney


class Target:
    """Every method a default task calls, answering at once."""

    def __init__(self) -> None:
        self.calls = 0

    def _answer(self) -> dict[str, Any]:
        self.calls += 1
        return {"ok": True}

    @rpc_method
    async def refresh_all_data(self) -> dict[str, Any]:
        return self._answer()

    @rpc_method
    async def generate_predictions(self) -> dict[str, Any]:
        return self._answer()

    @rpc_method
    async def refresh_sentiment_cache(self) -> dict[str, Any]:
        return self._answer()

    @rpc_method
    async def end_of_day_sync(self) -> dict[str, Any]:
        return self._answer()

    @rpc_method
    async def backup(self) -> dict[str, Any]:
        return self._answer()


async def start_targets(home: TradingHome, target: Target) -> list[RpcServer]:
    servers = [RpcServer(MethodTable.from_object(target), home.socket_path(name)) for name in SERVICES]
    for server in servers:
        await server.start()
    return servers


async def settle(scheduler: SchedulerService) -> None:
    while not scheduler.idle:
        await asyncio.sleep(0.0005)


async def bench_execute(home: TradingHome, redis: EmbeddedRedis, calls: int) -> tuple[float, float]:
    settings = load_settings(home, env={"REDIS_URL": redis.url})
    scheduler = SchedulerService(settings, clock=SystemClock(), calendar=AsxCalendar())
    await scheduler.start()
    try:
        async with RpcClient(home.socket_path("prediction")) as direct:
            started = time.perf_counter()
            for _ in range(calls):
                await direct.call("generate_predictions")
            baseline = (time.perf_counter() - started) / calls
        async with RpcClient(home.socket_path("scheduler")) as client:
            started = time.perf_counter()
            for _ in range(calls):
                run = await client.call("execute_task", {"task_id": "evening_analysis", "force": True})
                assert run["outcome"] == "succeeded", run
            through = (time.perf_counter() - started) / calls
    finally:
        await scheduler.stop()
    return baseline, through


async def bench_weeks(
    home: TradingHome, redis: EmbeddedRedis, target: Target, weeks: int
) -> dict[str, float]:
    settings = load_settings(home, env={"REDIS_URL": redis.url})
    clock = SimulatedClock(START)
    calendar = AsxCalendar()
    scheduler = SchedulerService(settings, clock=clock, calendar=calendar)
    end = START + timedelta(weeks=weeks)
    before = target.calls
    await scheduler.start()
    try:
        started = time.perf_counter()
        while True:
            await settle(scheduler)
            deadline = clock.next_deadline()
            if deadline is None or deadline > end:
                break
            await clock.advance_to(deadline)
        elapsed = time.perf_counter() - started
    finally:
        await scheduler.stop()
    runs = target.calls - before
    async with RpcClient(home.socket_path("prediction")) as direct:
        started = time.perf_counter()
        for _ in range(runs):
            await direct.call("generate_predictions")
        baseline = time.perf_counter() - started
    sessions = len(calendar.sessions_between(START.date(), (end - timedelta(days=1)).date()))
    return {"elapsed": elapsed, "runs": runs, "sessions": sessions, "baseline": baseline}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--weeks", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sb-") as root:
        home = TradingHome(Path(root))
        home.create()
        redis = EmbeddedRedis(home)
        redis.start()
        target = Target()
        servers = await start_targets(home, target)
        try:
            baseline, through = await bench_execute(home, redis, args.calls)
            print(
                f"execute_task x{args.calls}: direct call {baseline * 1e6:.0f} us, "
                f"through the scheduler {through * 1e6:.0f} us; ratio {through / baseline:.1f}x"
            )
            week = await bench_weeks(home, redis, target, args.weeks)
        finally:
            for server in servers:
                await server.close(0)
            redis.stop()
    per_run = week["elapsed"] / week["runs"]
    direct = week["baseline"] / week["runs"]
    print(
        f"simulated {args.weeks} week(s): {week['sessions']} trading days, {week['runs']} runs in "
        f"{week['elapsed']:.2f} s: {week['sessions'] / week['elapsed']:.1f} trading days/s, "
        f"{week['runs'] / week['elapsed']:.0f} runs/s ({per_run * 1e6:.0f} us/run)"
    )
    print(f"same number of direct calls: {direct * 1e6:.0f} us/call; ratio {per_run / direct:.1f}x")


if __name__ == "__main__":
    asyncio.run(main())
