"""A real service process under a flood of batches and a slowloris of half-lines: calls past the
room are refused, silent connections are closed, health keeps answering on a fresh connection,
and SIGTERM stops the process cleanly."""

from __future__ import annotations

import asyncio
import signal

import orjson

from services.base.config import TradingHome
from services.base.redis_server import EmbeddedRedis
from services.base.rpc import RpcClient
from tests.conftest import ServiceProcess, eventually

LIMITS = {
    "TRADING__RPC__MAX_CONNECTIONS": "24",
    "TRADING__RPC__MAX_IN_FLIGHT_PER_CONNECTION": "16",
    "TRADING__RPC__MAX_IN_FLIGHT_TOTAL": "64",
    "TRADING__RPC__MAX_BATCH_SIZE": "200",
    "TRADING__RPC__SILENT_TIMEOUT_S": "1",
}


async def health(service: ServiceProcess) -> str:
    async with RpcClient(service.socket, timeout=10) as client:
        return str((await client.call("health"))["status"])


def batch(size: int, start: int) -> bytes:
    calls = [
        {"jsonrpc": "2.0", "method": "sleep", "params": {"seconds": 30}, "id": start + n} for n in range(size)
    ]
    return orjson.dumps(calls) + b"\n"


async def test_a_flood_and_a_slowloris_leave_the_service_answering_and_stoppable(
    home: TradingHome, redis: EmbeddedRedis
) -> None:
    service = ServiceProcess(home, REDIS_URL=redis.url, **LIMITS)
    try:
        await asyncio.to_thread(service.wait_ready)
        socket = str(service.socket)
        # A flood: seven connections each send a batch of 200 slow calls, then one of 10.
        flooders = [await asyncio.open_unix_connection(socket) for _ in range(7)]
        for _reader, writer in flooders:
            writer.write(batch(200, 0) + batch(10, 1000))
            await writer.drain()
        for reader, _writer in flooders:  # 200 calls never fit in a connection's room of 16
            answer = orjson.loads(await asyncio.wait_for(reader.readline(), 10))
            assert answer["error"]["code"] == -32005
        # Six batches of 10 fit under the service's total of 64; the seventh does not.
        async with RpcClient(service.socket, timeout=10) as client:

            async def settled() -> bool:
                metrics = await client.call("metrics")
                return bool(metrics["counters"].get("rpc.busy") == 8 and metrics["rpc"]["in_flight"] == 60)

            await eventually(settled)
        # A slowloris: connections that send half a line and wait.
        loris = [await asyncio.open_unix_connection(socket) for _ in range(12)]
        for _reader, writer in loris:
            writer.write(b'{"jsonrpc": "2.0", "method": "echo", "par')
            await writer.drain()
        assert await health(service) == "ok"  # a fresh connection still gets an answer

        async def slow_ones_closed() -> bool:
            closed = [reader.at_eof() or await _closed(reader) for reader, _w in loris]
            return all(closed)

        await eventually(slow_ones_closed, within=15)
        async with RpcClient(service.socket, timeout=10) as client:
            metrics = await client.call("metrics")
        assert metrics["counters"]["rpc.silent_closed"] >= 12
        assert metrics["rpc"]["in_flight"] == 60
        # SIGTERM with 60 calls still sleeping: a bounded drain, then a clean exit.
        service.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(service.process.wait, 30)
        assert code == 0
        for _reader, writer in (*flooders, *loris):
            writer.close()
    finally:
        service.stop()


async def _closed(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), 0.05) == b""
    except TimeoutError:
        return False
