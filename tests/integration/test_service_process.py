"""A real service process: lifecycle, built-in methods, signals, config errors, Redis outages."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys

import orjson
import pytest
import redis.asyncio as aioredis

from services.base.config import TradingHome
from services.base.errors import InternalError, Rejected
from services.base.events import Event
from services.base.redis_server import EmbeddedRedis
from services.base.rpc import RpcClient
from tests.conftest import SAMPLE_SERVICE, ServiceProcess, eventually, service_env

FAST_REDIS = {"TRADING__REDIS__PING_INTERVAL_S": "0.05", "TRADING__REDIS__MAX_BACKOFF_S": "0.2"}


async def test_builtin_methods(sample_service: ServiceProcess) -> None:
    async with RpcClient(sample_service.socket) as client:
        assert await client.call("echo", {"message": "hello"}) == "hello"

        async def healthy() -> bool:
            return (await client.call("health"))["status"] == "ok"

        await eventually(healthy)
        health = await client.call("health")
        assert health["service"] == "sample"
        assert health["pid"] == sample_service.process.pid
        assert health["memory_rss"] > 0
        assert set(health["checks"]) == {"redis", "state", "database"}  # the sample has a database
        assert health["checks"]["database"]["status"] == "ok"
        assert health["uptime_s"] >= 0

        discovered = await client.call("rpc.discover")
        methods = {method["name"]: method for method in discovered["methods"]}
        assert {"health", "metrics", "shutdown", "rpc.discover", "echo", "typed"} <= set(methods)
        assert methods["echo"]["idempotent"] is True
        assert methods["shutdown"]["idempotent"] is False
        assert methods["echo"]["doc"] == "Return the message."
        assert [p["name"] for p in methods["typed"]["params"]][:3] == ["count", "ratio", "symbols"]
        assert "_start" not in methods
        assert "spawn" not in methods

        with pytest.raises(Rejected) as rejected:
            await client.call("reject", {"reason": "max_exposure"})
        assert rejected.value.reason == "max_exposure"

        metrics = await client.call("metrics")
        assert metrics["methods"]["echo"]["calls"] == 1
        assert metrics["methods"]["reject"]["errors"] == 1
        assert metrics["methods"]["echo"]["p50_ms"] is not None
        assert metrics["memory_rss"] > 0
        assert metrics["rpc"]["connections"] == 1


async def test_socket_is_private(sample_service: ServiceProcess, home: TradingHome) -> None:
    assert stat.S_IMODE(sample_service.socket.stat().st_mode) == 0o600
    assert stat.S_IMODE(home.run.stat().st_mode) == 0o700


async def test_internal_error_is_logged_under_the_callers_trace(
    sample_service: ServiceProcess, home: TradingHome
) -> None:
    async with RpcClient(sample_service.socket) as client:
        with pytest.raises(InternalError) as failure:
            await client.call("fail", trace="trace-7f3a")
    assert failure.value.message == "internal error"
    assert failure.value.data == {"trace": "trace-7f3a"}
    lines = [orjson.loads(line) for line in (home.logs / "sample.log").read_text().splitlines()]
    logged = [line for line in lines if line.get("trace") == "trace-7f3a"]
    assert logged
    assert logged[0]["level"] == "ERROR"
    assert "boom: a bug inside a method" in logged[0]["exc"]
    assert {"ts", "level", "service", "msg", "trace"} <= set(logged[0])


async def test_sigterm_drains_calls_in_flight(sample_service: ServiceProcess) -> None:
    async with RpcClient(sample_service.socket) as client:
        slow = asyncio.create_task(client.call("sleep", {"seconds": 0.5}))
        await eventually(_in_flight(client))
        sample_service.process.send_signal(signal.SIGTERM)
        assert await slow == 0.5
    assert await asyncio.to_thread(sample_service.process.wait, 10) == 0
    assert not sample_service.socket.exists()


def _in_flight(client: RpcClient):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        # metrics is answered inline, so it sees the sleeping call still in flight.
        return (await client.call("metrics"))["rpc"]["in_flight"] >= 1

    return check


async def test_shutdown_rpc_stops_the_process(sample_service: ServiceProcess) -> None:
    async with RpcClient(sample_service.socket) as client:
        assert (await client.call("shutdown"))["stopping"] is True
    assert await asyncio.to_thread(sample_service.process.wait, 10) == 0


def test_second_instance_is_refused(
    sample_service: ServiceProcess, home: TradingHome, redis: EmbeddedRedis
) -> None:
    second = subprocess.run(
        [sys.executable, str(SAMPLE_SERVICE)],
        env=service_env(home, REDIS_URL=redis.url),
        capture_output=True,
        timeout=30,
    )
    assert second.returncode == 1
    assert b"another instance of this service is running" in second.stderr

    async def first_still_answers() -> str:
        async with RpcClient(sample_service.socket) as client:
            return str(await client.call("echo", {"message": "still here"}))

    assert asyncio.run(first_still_answers()) == "still here"


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("TRADING__RPC__MAX_MESSAGE_BYTES", "lots", b"TRADING__RPC__MAX_MESSAGE_BYTES"),
        ("TRADING__RPC__NO_SUCH_KEY", "1", b"no_such_key"),
        ("TRADING__NOPE__KEY", "1", b"[nope]"),
    ],
)
def test_config_error_stops_start_up_naming_the_key(
    home: TradingHome, variable: str, value: str, named: bytes
) -> None:
    result = subprocess.run(
        [sys.executable, str(SAMPLE_SERVICE)],
        env=service_env(home, **{variable: value}),
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert b"configuration error" in result.stderr
    assert named in result.stderr


def test_config_file_error_names_the_key(home: TradingHome) -> None:
    home.config_file.write_text('[logging]\nlevel = "LOUD"\n')
    result = subprocess.run(
        [sys.executable, str(SAMPLE_SERVICE)], env=service_env(home), capture_output=True, timeout=30
    )
    assert result.returncode == 2
    assert b"logging.level" in result.stderr
    assert b"LOUD" in result.stderr


async def test_redis_outage_degrades_and_recovers_without_losing_durable_events(
    home: TradingHome, redis: EmbeddedRedis
) -> None:
    service = ServiceProcess(home, REDIS_URL=redis.url, **FAST_REDIS)
    try:
        service.wait_ready()
        async with RpcClient(service.socket) as client:

            async def status_is(expected: str) -> bool:
                return (await client.call("health"))["status"] == expected

            await eventually(lambda: status_is("ok"))
            redis.kill()
            await eventually(lambda: status_is("degraded"))
            health = await client.call("health")
            assert health["checks"]["redis"]["status"] == "degraded"
            # RPC is unaffected, and durable events wait in the outbox.
            assert await client.call("echo", {"message": "no redis"}) == "no redis"
            during = await client.call("emit_durable", {"count": 5})
            assert await client.call("outbox_pending") == 5
            assert await client.call("emit", {"data": {"phase": "outage"}}) is False

            redis.start()
            await eventually(lambda: status_is("ok"))

            async def all_applied() -> bool:
                return sorted(during) == await client.call("applied")

            await eventually(all_applied)
            assert await client.call("outbox_pending") == 0

            async def broadcast_received_again() -> bool:
                await client.call("emit", {"data": {"phase": "after"}})
                return {"phase": "after"} in await client.call("broadcasts_received")

            await eventually(broadcast_received_again)
        assert service.process.poll() is None
    finally:
        service.stop()
    assert service.process.returncode == 0


def test_service_needs_no_heavy_libraries(home: TradingHome) -> None:
    code = (
        "import sys; sys.path.insert(0, '.');"
        "import services.base.service, services.base.runner;"
        "print(sorted(m for m in ('numpy', 'pandas', 'sklearn', 'talib') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=os.getcwd()
    )
    assert out.stdout.strip() == "[]"


async def test_state_changes_are_published(home: TradingHome, redis: EmbeddedRedis) -> None:
    raw = aioredis.Redis.from_url(redis.url)
    pubsub = raw.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe("trading.service_state")  # returns once Redis confirmed it
    service = ServiceProcess(home, REDIS_URL=redis.url)
    try:
        service.wait_ready()
        async with RpcClient(service.socket) as client:
            await client.call("shutdown")
        assert await asyncio.to_thread(service.process.wait, 10) == 0
        transitions = []
        deadline = asyncio.get_running_loop().time() + 10.0
        while len(transitions) < 3:
            assert asyncio.get_running_loop().time() < deadline, f"only saw {transitions}"
            # None also stands for the subscribe confirmation that is skipped.
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None:
                continue
            event = Event.decode(message["data"])
            assert event.source == "sample"
            assert event.data["pid"] == service.process.pid
            transitions.append((event.data["previous"], event.data["state"]))
    finally:
        service.stop()
        await pubsub.aclose()
        await raw.aclose()
    assert transitions == [("starting", "running"), ("running", "stopping"), ("stopping", "stopped")]
