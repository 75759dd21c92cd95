"""Our JSON-RPC stack versus a raw uvloop line-echo server, both on Unix sockets, in one run.

    .venv/bin/python bench/rpc_bench.py

Each server runs in its own process. The same load generator drives both, in alternating rounds
(the median round is reported), with 1 sequential client and with 50 concurrent clients. Two
load generators are measured: our ``RpcClient`` (what services really use) and a minimal
client that writes a request line and waits for one line back. Lines starting with ``ratio``
compare ours with the raw echo: throughput at 50 clients (target >= 0.75) and p50 latency with
one client (target <= 1.3).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson
import uvloop

from services.base.config import TradingHome, load_settings
from services.base.redis_server import EmbeddedRedis
from services.base.rpc import RpcClient, rpc_method
from services.base.service import BaseService

ROUNDS = 3
SECONDS_PER_RUN = 0.8
CONCURRENT = 50


class EchoService(BaseService):
    name = "echo"

    @rpc_method(idempotent=True)
    async def echo(self, message: str) -> str:
        """Return the message."""
        return message


class LineEcho(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


def serve_raw(path: str) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_unix_server(LineEcho, path)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


def serve_ours(home: str, redis_url: str) -> None:
    os.environ["TRADING_HOME"] = home
    os.environ["REDIS_URL"] = redis_url
    from services.base.runner import run_service

    run_service(EchoService)


# -- load generators ------------------------------------------------------------------------


class _OneLine(asyncio.Protocol):
    def __init__(self) -> None:
        self.waiter: asyncio.Future[None] | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.buffer.endswith(b"\n") and self.waiter is not None:
            self.buffer = b""
            self.waiter.set_result(None)


Caller = Callable[[int], Awaitable[None]]


async def minimal_caller(path: str) -> tuple[Caller, Callable[[], None]]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_unix_connection(_OneLine, path)

    async def call(request_id: int) -> None:
        protocol.waiter = loop.create_future()
        transport.write(
            orjson.dumps(
                {"jsonrpc": "2.0", "id": request_id, "method": "echo", "params": {"message": "hello"}}
            )
            + b"\n"
        )
        await protocol.waiter

    return call, transport.close


async def rpc_client_caller(path: str) -> tuple[Caller, Callable[[], None]]:
    client = RpcClient(path)

    async def call(request_id: int) -> None:
        await client.call("echo", {"message": "hello"})

    await call(0)  # connect
    return call, lambda: asyncio.ensure_future(client.close()) and None


async def measure(
    path: str, clients: int, make: Callable[[str], Awaitable[tuple[Caller, Callable[[], None]]]]
) -> dict[str, float]:
    latencies: list[float] = []
    callers = [await make(path) for _ in range(clients)]
    stop_at = time.perf_counter() + SECONDS_PER_RUN

    async def run(call: Caller) -> None:
        request_id = 0
        while time.perf_counter() < stop_at:
            request_id += 1
            started = time.perf_counter()
            await call(request_id)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(run(call) for call, _ in callers))
    elapsed = time.perf_counter() - started
    for _, close in callers:
        close()
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_us": latencies[len(latencies) // 2] * 1e6,
        "p99_us": latencies[int(len(latencies) * 0.99)] * 1e6,
    }


def wait_for_socket(path: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{path} did not appear")
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-", dir="/tmp"))
    home = TradingHome(root)
    home.create()
    redis = EmbeddedRedis(home)
    redis.start()
    raw_path = home.run / "raw.sock"
    ours_path = home.socket_path("echo")
    context = multiprocessing.get_context("spawn")
    servers = [
        context.Process(target=serve_raw, args=(str(raw_path),), daemon=True),
        context.Process(target=serve_ours, args=(str(root), redis.url), daemon=True),
    ]
    try:
        for server in servers:
            server.start()
        wait_for_socket(raw_path)
        wait_for_socket(ours_path)
        load_settings(home)  # the echo service's config is the default
        results: dict[tuple[str, str, int], list[dict[str, float]]] = {}
        generators = {"minimal client": minimal_caller, "RpcClient": rpc_client_caller}
        for _ in range(args.rounds):
            for generator_name, make in generators.items():
                for clients in (1, CONCURRENT):
                    for server_name, path in (("raw echo", raw_path), ("ours", ours_path)):
                        figures = uvloop.run(measure(str(path), clients, make))
                        results.setdefault((generator_name, server_name, clients), []).append(figures)
        report(results, generators)
    finally:
        for server in servers:
            server.terminate()
            server.join(5)
        redis.stop()
        shutil.rmtree(root, ignore_errors=True)


def report(
    results: dict[tuple[str, str, int], list[dict[str, float]]], generators: dict[str, object]
) -> None:
    def median(key: tuple[str, str, int], figure: str) -> float:
        return statistics.median(run[figure] for run in results[key])

    print(f"{'load generator':<16} {'server':<9} {'clients':>7} {'req/s':>10} {'p50 us':>9} {'p99 us':>9}")
    for (generator, server, clients), _ in sorted(results.items()):
        key = (generator, server, clients)
        print(
            f"{generator:<16} {server:<9} {clients:>7} {median(key, 'rps'):>10.0f} "
            f"{median(key, 'p50_us'):>9.1f} {median(key, 'p99_us'):>9.1f}"
        )
    for generator in generators:
        throughput = median((generator, "ours", CONCURRENT), "rps") / median(
            (generator, "raw echo", CONCURRENT), "rps"
        )
        latency = median((generator, "ours", 1), "p50_us") / median((generator, "raw echo", 1), "p50_us")
        label = f"ours/raw ({generator})"
        print(f"ratio throughput at {CONCURRENT} clients, {label}: {throughput:.2f} (target >= 0.75)")
        print(f"ratio p50 latency with 1 client, ours/raw ({generator}): {latency:.2f} (target <= 1.3)")


if __name__ == "__main__":
    main()
