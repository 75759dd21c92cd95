"""The event bus against a real redis-server: pub/sub, durable streams, outbox, outages."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis

from services.base.clock import SimulatedClock, SystemClock
from services.base.config import RedisConfig, TradingHome
from services.base.db import Database, transaction
from services.base.events import CHANNEL_PREFIX, Event, EventBus, new_event_id
from services.base.logs import trace_var
from services.base.outbox import Inbox, Outbox
from services.base.redis_server import EmbeddedRedis
from tests.conftest import eventually

FAST = RedisConfig(connect_timeout_s=0.5, max_backoff_s=0.2, ping_interval_s=0.05)
STREAM = "test:signals"


class Applier:
    """A consumer that applies each event once: commit with the id, then acknowledge."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.fail_next = 0
        self.calls = 0

    async def setup(self) -> None:
        await self.db.run(Inbox.create_tables)

    async def __call__(self, event: Event) -> None:
        self.calls += 1
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("handler failure")

        def apply(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                if not Inbox.seen(conn, event.id):
                    Inbox.record(conn, STREAM, event.id, datetime.now(UTC))

        await self.db.run(apply)

    async def applied(self) -> list[str]:
        rows = await self.db.run(lambda conn: conn.execute("SELECT event_id FROM applied_events").fetchall())
        return sorted(row[0] for row in rows)


@pytest.fixture
async def buses(home: TradingHome, redis: EmbeddedRedis) -> AsyncIterator[tuple[EventBus, EventBus]]:
    producer_db = Database(home.database("producer"))
    producer = EventBus(
        redis.url, source="producer", clock=SystemClock(), redis_config=FAST, outbox_db=producer_db
    )
    consumer = EventBus(redis.url, source="consumer", clock=SystemClock(), redis_config=FAST)
    yield producer, consumer
    await producer.close()
    await consumer.close()
    producer_db.close()


async def test_broadcast_carries_the_envelope(buses: tuple[EventBus, EventBus]) -> None:
    producer, consumer = buses
    received: list[Event] = []

    async def on_event(event: Event) -> None:
        received.append(event)

    consumer.subscribe("market_data_updated", on_event)
    await producer.start()
    await consumer.start()
    await eventually(lambda: producer.connected and consumer.connected)

    token = trace_var.set("trace-42")
    try:
        # The subscriber may still be subscribing: publish until the first one arrives.
        async def delivered() -> bool:
            await producer.publish("market_data_updated", {"symbol": "CBA.AX", "close": 101.5})
            return bool(received)

        await eventually(delivered)
    finally:
        trace_var.reset(token)
    event = received[0]
    assert event.type == "market_data_updated"
    assert event.source == "producer"
    assert event.trace == "trace-42"
    assert event.data == {"symbol": "CBA.AX", "close": 101.5}
    assert datetime.fromisoformat(event.ts).tzinfo is not None
    assert len(event.id) == 32
    assert producer.metrics.counters["events.published"] >= 1
    assert consumer.metrics.counters["events.received"] >= 1


async def test_malformed_broadcast_is_counted_not_fatal(
    buses: tuple[EventBus, EventBus], redis: EmbeddedRedis
) -> None:
    _producer, consumer = buses
    good: list[Event] = []

    async def on_event(event: Event) -> None:
        good.append(event)

    consumer.subscribe("risk_alert", on_event)
    await consumer.start()
    raw = aioredis.Redis.from_url(redis.url)
    try:
        envelope = Event(
            "x" * 32, "risk_alert", "test", "2026-01-01T00:00:00+00:00", None, {"ok": True}
        ).encode()

        async def delivered() -> bool:
            await raw.publish(CHANNEL_PREFIX + "risk_alert", b"{not json")
            await raw.publish(CHANNEL_PREFIX + "risk_alert", envelope)
            return bool(good)

        await eventually(delivered)
    finally:
        await raw.aclose()
    assert good[0].data == {"ok": True}
    assert consumer.metrics.counters["events.malformed"] >= 1


async def test_publish_without_redis_is_dropped_and_counted(home: TradingHome) -> None:
    bus = EventBus(f"unix://{home.run}/absent.sock", source="lonely", clock=SystemClock(), redis_config=FAST)
    await bus.start()
    try:
        assert await bus.publish("risk_alert", {"level": "high"}) is None
        assert bus.metrics.counters["events.dropped"] == 1
        assert not bus.connected
    finally:
        await bus.close()


@pytest.fixture
async def applier(home: TradingHome) -> AsyncIterator[Applier]:
    db = Database(home.database("consumer"))
    consumer = Applier(db)
    await consumer.setup()
    yield consumer
    db.close()


@pytest.fixture
async def raw(redis: EmbeddedRedis) -> AsyncIterator[aioredis.Redis]:
    """A plain redis-py client, to look at streams as Redis holds them."""
    client = aioredis.Redis.from_url(redis.url)
    yield client
    await client.aclose()


async def test_durable_events_are_applied_once_and_acknowledged(
    buses: tuple[EventBus, EventBus], applier: Applier, raw: aioredis.Redis
) -> None:
    producer, consumer = buses
    consumer.consume(STREAM, "paper", "paper-1", applier)
    await producer.start()
    await consumer.start()
    sent = [await producer.publish_durable("trade_signal", {"n": n}, stream=STREAM) for n in range(25)]
    expected = sorted(event.id for event in sent)

    async def all_applied() -> bool:
        return await applier.applied() == expected

    await eventually(all_applied)
    await eventually(lambda: consumer.metrics.counters["events.consumed"] == 25)
    pending = await raw.xpending(STREAM, "paper")
    assert pending["pending"] == 0
    assert await producer.outbox_pending() == 0


async def test_failed_handler_leaves_event_pending_then_retries(
    buses: tuple[EventBus, EventBus], applier: Applier
) -> None:
    producer, consumer = buses
    applier.fail_next = 1
    consumer.consume(STREAM, "paper", "paper-1", applier)
    await producer.start()
    await consumer.start()
    event = await producer.publish_durable("trade_signal", {"n": 1}, stream=STREAM)

    async def applied() -> bool:
        return await applier.applied() == [event.id]

    await eventually(applied)
    assert applier.calls == 2  # failed once, delivered again, applied
    assert consumer.metrics.counters["events.handler_errors"] == 1


async def test_malformed_stream_entry_goes_to_dead_letter(
    buses: tuple[EventBus, EventBus], applier: Applier, raw: aioredis.Redis
) -> None:
    _producer, consumer = buses
    await raw.xadd(STREAM, {"event": b"garbage"})
    good = Event(new_event_id(SystemClock()), "trade_signal", "test", "2026-01-01T00:00:00+00:00", None, {})
    await raw.xadd(STREAM, {"event": good.encode()})
    consumer.consume(STREAM, "paper", "paper-1", applier)
    await consumer.start()

    async def applied() -> bool:
        return await applier.applied() == [good.id]

    await eventually(applied)
    assert await raw.xlen(f"{STREAM}:dead") == 1
    await eventually(lambda: consumer.metrics.counters["events.consumed"] == 1)
    assert (await raw.xpending(STREAM, "paper"))["pending"] == 0


async def test_outage_keeps_durable_events_and_restart_loses_none(
    buses: tuple[EventBus, EventBus], applier: Applier, redis: EmbeddedRedis
) -> None:
    """Redis killed mid-stream and restarted empty: nothing lost, nothing applied twice."""
    producer, consumer = buses
    broadcasts: list[Event] = []

    async def on_broadcast(event: Event) -> None:
        broadcasts.append(event)

    consumer.subscribe("prediction_generated", on_broadcast)
    consumer.consume(STREAM, "paper", "paper-1", applier)
    await producer.start()
    await consumer.start()
    before = [await producer.publish_durable("trade_signal", {"n": n}, stream=STREAM) for n in range(10)]

    async def first_batch_applied() -> bool:
        return len(await applier.applied()) == 10

    await eventually(first_batch_applied)

    redis.kill()
    await eventually(lambda: not producer.connected and not consumer.connected)
    during = [await producer.publish_durable("trade_signal", {"n": n}, stream=STREAM) for n in range(10, 20)]
    assert await producer.outbox_pending() == 10
    assert await producer.publish("prediction_generated", {"lost": True}) is None

    redis.start()  # a new server: the old stream and consumer group are gone
    await eventually(lambda: producer.connected and consumer.connected)
    expected = sorted(event.id for event in before + during)

    async def all_applied() -> bool:
        return await applier.applied() == expected

    await eventually(all_applied)
    assert await producer.outbox_pending() == 0

    async def broadcast_arrives() -> bool:
        await producer.publish("prediction_generated", {"after": True})
        return any(event.data == {"after": True} for event in broadcasts)

    await eventually(broadcast_arrives)
    # The restarted Redis lost the first ten, so they were sent again and skipped by id.
    assert applier.calls == 30


async def test_outbox_survives_a_producer_restart(home: TradingHome, redis: EmbeddedRedis) -> None:
    url = f"unix://{home.run}/absent.sock"
    db = Database(home.database("producer"))
    bus = EventBus(url, source="producer", clock=SystemClock(), redis_config=FAST, outbox_db=db)
    await bus.start()
    event = await bus.publish_durable("trade_signal", {"n": 1}, stream=STREAM)
    await bus.close()
    db.close()

    db = Database(home.database("producer"))
    bus = EventBus(redis.url, source="producer", clock=SystemClock(), redis_config=FAST, outbox_db=db)
    await bus.start()
    raw = aioredis.Redis.from_url(redis.url)
    try:
        await eventually(lambda: bus.connected)

        async def in_stream() -> bool:
            entries = await raw.xrange(STREAM)
            return [Event.decode(fields[b"event"]).id for _, fields in entries] == [event.id]

        await eventually(in_stream)
    finally:
        await raw.aclose()
        await bus.close()
        db.close()


def test_event_ids_sort_by_time() -> None:
    clock = SimulatedClock(datetime(2026, 3, 2, 0, 0, tzinfo=UTC))
    first = new_event_id(clock)
    asyncio.run(clock.advance(0.002))
    second = new_event_id(clock)
    assert first < second
    assert first != new_event_id(SimulatedClock(datetime(2026, 3, 2, 0, 0, tzinfo=UTC)))


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"[]", "not an object"),
        (b'{"id": 1, "type": "x", "source": "s", "ts": "t"}', "'id'"),
        (b'{"id": "a", "type": "x", "source": "s", "ts": "t", "data": []}', "'data'"),
        (b"nope", "not JSON"),
    ],
)
def test_decode_rejects_malformed_envelopes(raw: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Event.decode(raw)


def test_outbox_rows_round_trip(home: TradingHome) -> None:
    db = Database(home.database("producer"))
    try:
        Outbox.create_tables(db.conn)
        event = Event("0" * 32, "trade_signal", "p", "2026-01-01T00:00:00.000000+00:00", None, {"n": 1})
        with transaction(db.conn):
            Outbox.add(db.conn, STREAM, event)
            Outbox.add(db.conn, STREAM, event)  # the same event twice is stored once
        rows = Outbox.unsent(db.conn)
        assert [(stream, Event.decode(payload)) for _, stream, payload in rows] == [(STREAM, event)]
        Outbox.mark_sent(db.conn, [rows[0][0]], datetime(2026, 1, 1, 0, 1, tzinfo=UTC))
        assert Outbox.pending_count(db.conn) == 0
        assert Outbox.resend_recent(db.conn, datetime(2025, 12, 31, tzinfo=UTC)) == 1
        assert Outbox.pending_count(db.conn) == 1
        assert Outbox.note_redis_run(db.conn, "run-a") is None
        assert Outbox.note_redis_run(db.conn, "run-b") == "run-a"
    finally:
        db.close()
