"""The event bus versus raw redis-py on the same embedded redis-server, in one run.

    .venv/bin/python bench/events_bench.py

1. Latency: events published at a paced 1,000/s; publish-to-handler latency p50/p99
   (target p99 <= 2 ms). Baseline: redis-py PUBLISH and a raw PubSub reader.
2. Throughput: 50,000 events published in pipelined batches of 500 and received by a subscriber;
   events/s from first publish to last delivery (targets >= 0.8x raw and >= 30,000/s).
Publisher and subscriber share one process and event loop (uvloop); Redis runs in its own.
Lines starting with ``ratio`` compare the bus with raw redis-py.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson
import redis.asyncio as aioredis
import uvloop

from services.base.clock import SystemClock
from services.base.config import RedisConfig, TradingHome
from services.base.events import CHANNEL_PREFIX, Event, EventBus
from services.base.redis_server import EmbeddedRedis

PACED_RATE = 1000
PACED_SECONDS = 2.0
BURST_EVENTS = 50_000
BATCH = 500
ROUNDS = 3
CHANNEL = "bench_tick"

# Publish(payload) and a subscription started with a per-message callback.
Publish = Callable[[list[dict[str, float]]], Awaitable[None]]


async def bus_pair(
    url: str, on_data: Callable[[dict[str, float]], None]
) -> tuple[Publish, Callable[[], Awaitable[None]]]:
    config = RedisConfig(ping_interval_s=1.0)
    publisher = EventBus(url, source="bench", clock=SystemClock(), redis_config=config)
    subscriber = EventBus(url, source="bench-sub", clock=SystemClock(), redis_config=config)

    async def handler(event: Event) -> None:
        on_data(event.data)

    subscriber.subscribe(CHANNEL, handler)
    await publisher.start()
    await subscriber.start()
    while not (publisher.connected and subscriber.connected):
        await asyncio.sleep(0.01)

    async def publish(batch: list[dict[str, float]]) -> None:
        await publisher.publish_many([publisher.event(CHANNEL, data) for data in batch])

    async def close() -> None:
        await publisher.close()
        await subscriber.close()

    return publish, close


async def raw_pair(
    url: str, on_data: Callable[[dict[str, float]], None]
) -> tuple[Publish, Callable[[], Awaitable[None]]]:
    publisher = aioredis.Redis.from_url(url)
    subscriber = aioredis.Redis.from_url(url)
    pubsub = subscriber.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(CHANNEL_PREFIX + CHANNEL)

    async def read() -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            if message is not None and message["type"] == "message":
                on_data(orjson.loads(message["data"])["data"])

    reader = asyncio.create_task(read())

    async def publish(batch: list[dict[str, float]]) -> None:
        # The same envelope the bus sends, so both move the same bytes.
        async with publisher.pipeline(transaction=False) as pipe:
            for data in batch:
                envelope = {
                    "id": "0" * 32,
                    "type": CHANNEL,
                    "source": "bench",
                    "ts": "",
                    "trace": None,
                    "data": data,
                }
                pipe.publish(CHANNEL_PREFIX + CHANNEL, orjson.dumps(envelope))
            await pipe.execute()

    async def close() -> None:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await pubsub.aclose()
        await publisher.aclose()
        await subscriber.aclose()

    return publish, close


async def warm_up(publish: Publish, received: list[float]) -> None:
    while not received:  # until the subscription is live
        await publish([{"sent": time.perf_counter(), "warm": 1.0}])
        await asyncio.sleep(0.01)


async def paced_latency(
    make: Callable[..., Awaitable[tuple[Publish, Callable[[], Awaitable[None]]]]], url: str
) -> dict[str, float]:
    latencies: list[float] = []

    def on_data(data: dict[str, float]) -> None:
        latencies.append(time.perf_counter() - data["sent"])

    publish, close = await make(url, on_data)
    await warm_up(publish, latencies)
    await asyncio.sleep(0.05)
    latencies.clear()
    interval = 1.0 / PACED_RATE
    count = int(PACED_RATE * PACED_SECONDS)
    start = time.perf_counter()
    for n in range(count):
        delay = start + n * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await publish([{"sent": time.perf_counter()}])
    while len(latencies) < count:
        await asyncio.sleep(0.01)
    await close()
    latencies.sort()
    return {
        "p50_ms": latencies[len(latencies) // 2] * 1e3,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
    }


async def burst_throughput(
    make: Callable[..., Awaitable[tuple[Publish, Callable[[], Awaitable[None]]]]], url: str
) -> float:
    received: list[float] = []
    last = [0.0]

    def on_data(data: dict[str, float]) -> None:
        received.append(1.0)
        last[0] = time.perf_counter()

    publish, close = await make(url, on_data)
    await warm_up(publish, received)
    await asyncio.sleep(0.05)
    received.clear()
    start = time.perf_counter()
    for offset in range(0, BURST_EVENTS, BATCH):
        await publish([{"n": float(n)} for n in range(offset, offset + BATCH)])
    deadline = time.perf_counter() + 30
    while len(received) < BURST_EVENTS and time.perf_counter() < deadline:
        await asyncio.sleep(0.005)
    await close()
    if len(received) < BURST_EVENTS:
        raise SystemExit(f"only {len(received)} of {BURST_EVENTS} events arrived")
    return BURST_EVENTS / (last[0] - start)


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-", dir="/tmp"))
    home = TradingHome(root)
    redis = EmbeddedRedis(home)
    redis.start()
    try:
        latency: dict[str, list[dict[str, float]]] = {"bus": [], "raw": []}
        throughput: dict[str, list[float]] = {"bus": [], "raw": []}
        makers = {"bus": bus_pair, "raw": raw_pair}
        for _ in range(ROUNDS):
            for name, make in makers.items():
                latency[name].append(uvloop.run(paced_latency(make, redis.url)))
                throughput[name].append(uvloop.run(burst_throughput(make, redis.url)))
    finally:
        redis.stop()
        shutil.rmtree(root, ignore_errors=True)

    def med(name: str, figure: str) -> float:
        return statistics.median(run[figure] for run in latency[name])

    print(f"paced {PACED_RATE} events/s for {PACED_SECONDS:g}s, median of {ROUNDS} rounds")
    for name in makers:
        print(f"  {name:<4} latency p50 {med(name, 'p50_ms'):.3f} ms  p99 {med(name, 'p99_ms'):.3f} ms")
    print(f"burst of {BURST_EVENTS} events in pipelined batches of {BATCH}, median of {ROUNDS} rounds")
    for name in makers:
        print(f"  {name:<4} {statistics.median(throughput[name]):,.0f} events/s")
    latency_ratio = med("bus", "p99_ms") / med("raw", "p99_ms")
    throughput_ratio = statistics.median(throughput["bus"]) / statistics.median(throughput["raw"])
    print(f"ratio p99 latency bus/raw: {latency_ratio:.2f} (target: bus p99 <= 2 ms)")
    print(f"ratio throughput bus/raw: {throughput_ratio:.2f} (target >= 0.8, and >= 30,000/s)")


if __name__ == "__main__":
    main()
