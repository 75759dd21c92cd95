"""The scheduler as a real process on the real clock, calling a real service process."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from datetime import date

import pytest

from services.asx.calendar import AsxCalendar
from services.asx.market_hours import Phase
from services.base.config import TradingHome
from services.base.errors import InvalidParams
from services.base.redis_server import EmbeddedRedis
from services.base.rpc.client import RpcClient
from tests.conftest import ServiceProcess

# A schedule that never fires during the test: only manual runs happen.
NIGHTLY = {"at": "03:00", "days": "all"}


@pytest.fixture
def scheduler(home: TradingHome, redis: EmbeddedRedis) -> Iterator[ServiceProcess]:
    process = ServiceProcess(home, name="scheduler", module="services.scheduler", REDIS_URL=redis.url)
    process.wait_ready()
    yield process
    process.stop()


async def test_runs_a_real_service_and_keeps_its_history_through_a_kill(
    home: TradingHome, redis: EmbeddedRedis, scheduler: ServiceProcess, sample_service: ServiceProcess
) -> None:
    async with RpcClient(scheduler.socket, timeout=20) as client:
        status = await client.call("get_market_status")
        session_day = AsxCalendar().is_session(date.fromisoformat(status["date"]))
        assert status["is_trading_day"] is session_day
        assert status["phase"] in {str(phase) for phase in Phase}
        assert status["next_open_local"].endswith(("+10:00", "+11:00"))
        assert status["next_open_utc"].endswith("+00:00")
        assert {task["id"] for task in await client.call("list_tasks")} >= {
            "morning_analysis",
            "daily_backup",
        }

        echo = {"id": "echo", "service": "sample", "method": "echo", "params": {"message": "hello"},
                "schedule": NIGHTLY}  # fmt: skip
        await client.call("schedule_task", {"config": echo})
        run = await client.call("execute_task", {"task_id": "echo"})
        assert (run["outcome"], run["trigger"], run["error"]) == ("succeeded", "manual", None)

        nowhere = {"id": "nowhere", "service": "not_running", "method": "work", "retries": 0,
                   "schedule": NIGHTLY}  # fmt: skip
        await client.call("schedule_task", {"config": nowhere})
        failed = await client.call("execute_task", {"task_id": "nowhere"})
        assert failed["outcome"] == "failed"
        assert "not_running.sock" in failed["error"]

        with pytest.raises(InvalidParams) as bad:
            await client.call("schedule_task", {"config": {**echo, "schedule": {"at": "noon"}}})
        assert bad.value.data["field"] == "config.schedule.at"

    scheduler.process.send_signal(signal.SIGKILL)
    scheduler.process.wait()
    restarted = ServiceProcess(home, name="scheduler", module="services.scheduler", REDIS_URL=redis.url)
    restarted.wait_ready()
    try:
        async with RpcClient(restarted.socket, timeout=20) as client:
            tasks = {task["id"]: task for task in await client.call("list_tasks")}
            assert tasks["echo"]["origin"] == "rpc"
            assert tasks["echo"]["params"] == {"message": "hello"}
            assert tasks["echo"]["last_status"] == "succeeded"
            assert tasks["nowhere"]["consecutive_failures"] == 1
            history = await client.call("get_task_history", {"task_id": "echo"})
            assert history["runs"][0]["result"] == "hello"
            health = await client.call("health")
            assert health["checks"]["tasks"]["status"] == "ok"
            assert health["task_count"] == len(tasks)
    finally:
        restarted.stop()
