"""Events over Redis: broadcast pub/sub, durable streams with consumer groups, and the outbox relay.

- ``publish``: pub/sub on ``trading.<type>``. Best effort: while Redis is away the event is
  dropped and counted, never raised into the caller.
- ``publish_durable``: written to the producer's outbox (SQLite) first, then sent to a Redis
  stream by the relay task whenever Redis is reachable.
- ``consume``: reads a stream through a consumer group, calls the handler, and acknowledges only
  after the handler returned (it commits first, and skips ids it already applied).

Losing Redis never takes the service down: ``connected`` turns false, health says degraded, and
a watcher reconnects, resubscribes, and makes the relay send what queued up meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from services.base.clock import Clock, utc_iso
from services.base.config import EventsConfig, RedisConfig
from services.base.db import Database, transaction
from services.base.logs import trace_var
from services.base.metrics import Metrics
from services.base.outbox import Outbox, retention_cutoff

log = logging.getLogger("services.events")

CHANNEL_PREFIX = "trading."
SIGNALS_STREAM = "trading:signals"
RECONNECT_FIRST_S = 0.1


class EventType(StrEnum):
    MARKET_DATA_UPDATED = "market_data_updated"
    SENTIMENT_UPDATED = "sentiment_updated"
    ML_MODEL_UPDATE = "ml_model_update"
    PREDICTION_GENERATED = "prediction_generated"
    BUY_RATE_ALERT = "buy_rate_alert"
    TRADE_EXECUTED = "trade_executed"
    POSITION_CLOSED = "position_closed"
    RISK_ALERT = "risk_alert"
    STORAGE_ALERT = "storage_alert"
    TASK_COMPLETED = "task_completed"
    TASK_FAILED = "task_failed"
    SERVICE_STATE = "service_state"
    TRADE_SIGNAL = "trade_signal"


@dataclass(frozen=True, slots=True)
class Event:
    """The envelope every event travels in."""

    id: str
    type: str
    source: str
    ts: str
    trace: str | None
    data: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "id": self.id,
                "type": self.type,
                "source": self.source,
                "ts": self.ts,
                "trace": self.trace,
                "data": self.data,
            },
            option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY,
        )

    @classmethod
    def decode(cls, raw: bytes | str) -> Event:
        """Parse an envelope; ``ValueError`` says what is wrong with a malformed one."""
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"event is not JSON: {exc}") from None
        if type(message) is not dict:
            raise ValueError("event is not an object")
        for key in ("id", "type", "source", "ts"):
            if type(message.get(key)) is not str:
                raise ValueError(f"event field {key!r} must be a string")
        trace = message.get("trace")
        data = message.get("data", {})
        if trace is not None and type(trace) is not str:
            raise ValueError("event field 'trace' must be a string or null")
        if type(data) is not dict:
            raise ValueError("event field 'data' must be an object")
        return cls(message["id"], message["type"], message["source"], message["ts"], trace, data)


def new_event_id(clock: Clock) -> str:
    """Unique and sortable by creation time: milliseconds, then 80 random bits, in hex."""
    millis = int(clock.now().timestamp() * 1000)
    return f"{millis:012x}{os.urandom(10).hex()}"


Handler = Callable[[Event], Awaitable[None]]


class EventBus:
    def __init__(
        self,
        url: str,
        *,
        source: str,
        clock: Clock,
        redis_config: RedisConfig | None = None,
        config: EventsConfig | None = None,
        outbox_db: Database | None = None,
        metrics: Metrics | None = None,
        synthetic: bool = False,
    ) -> None:
        self.url = url
        self.source = source
        self.synthetic = synthetic  # a demo on generated prices: every event says so
        self.clock = clock
        self.redis_config = redis_config or RedisConfig()
        self.config = config or EventsConfig()
        self.outbox_db = outbox_db
        self.metrics = metrics or Metrics()
        self.connected = False
        self.last_error: str | None = None
        self._redis: aioredis.Redis | None = None
        self._handlers: dict[str, list[Handler]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._consumers: list[tuple[str, str, str, Handler]] = []
        self._outbox_wakeup = asyncio.Event()
        self._closing = False

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._redis = aioredis.Redis.from_url(
            self.url,
            socket_connect_timeout=self.redis_config.connect_timeout_s,
            socket_timeout=None,
            retry_on_timeout=False,
        )
        if self.outbox_db is not None:
            await self.outbox_db.run(Outbox.create_tables)
            self._spawn("relay", self._relay_loop())
        # One probe now, so a reachable Redis is connected when start returns.
        await self._probe()
        self._spawn("watch", self._watch_loop())
        if self._handlers:
            self._spawn("subscriber", self._subscriber_loop())
        for stream, group, consumer, handler in self._consumers:
            self._spawn(f"consumer:{stream}", self._consume_loop(stream, group, consumer, handler))

    async def close(self, timeout: float = 5.0) -> None:
        self._closing = True
        pending = set(self._tasks.values())
        deadline = asyncio.get_running_loop().time() + timeout
        # On Python 3.11, asyncio.wait_for loses a cancellation that arrives just as its inner
        # awaitable finishes (fixed in 3.12), so cancel until the tasks are done; the loops also
        # check ``_closing`` on every round.
        while pending and asyncio.get_running_loop().time() < deadline:
            for task in pending:
                task.cancel()
            _done, pending = await asyncio.wait(pending, timeout=0.1)
        if pending:
            log.error("event bus tasks did not stop: %s", ", ".join(task.get_name() for task in pending))
        self._tasks.clear()
        if self._redis is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._redis.aclose()
        self.connected = False

    def _spawn(self, name: str, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine, name=f"events:{name}")
        self._tasks[name] = task
        task.add_done_callback(_log_task_failure)

    # -- connection state -----------------------------------------------------------------

    def _lost(self, exc: BaseException) -> None:
        if self.connected:
            log.warning("Redis connection lost: %s", exc)
        self.connected = False
        self.last_error = str(exc) or type(exc).__name__

    async def _watch_loop(self) -> None:
        """Probe Redis every ``ping_interval_s``, backing off while it is unreachable."""
        backoff = RECONNECT_FIRST_S
        while not self._closing:
            if await self._probe():
                backoff = RECONNECT_FIRST_S
                await asyncio.sleep(self.redis_config.ping_interval_s)
            else:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.redis_config.max_backoff_s)

    async def _probe(self) -> bool:
        """Ping Redis; on (re)connect, check whether it lost its data and wake the relay."""
        assert self._redis is not None
        try:
            await asyncio.wait_for(self._redis.ping(), self.redis_config.connect_timeout_s)
            if not self.connected:
                await self._on_connected()
        except (RedisError, OSError, TimeoutError) as exc:
            self._lost(exc)
            return False
        return True

    async def _on_connected(self) -> None:
        assert self._redis is not None
        if self.outbox_db is not None:
            info = await self._redis.info("server")
            run_id = str(info.get("run_id", ""))
            previous = await self.outbox_db.run(lambda conn: Outbox.note_redis_run(conn, run_id))
            if previous is not None and previous != run_id:
                since = retention_cutoff(self.clock.now(), self.config.outbox_retention_days)
                count = await self.outbox_db.run(lambda conn: Outbox.resend_recent(conn, since))
                if count:
                    log.warning(
                        "Redis restarted (run id changed); re-sending %d recent durable events", count
                    )
        self.connected = True
        self.last_error = None
        log.info("connected to Redis")
        self._outbox_wakeup.set()

    # -- pub/sub --------------------------------------------------------------------------

    def event(self, type: str, data: dict[str, Any], *, trace: str | None = None) -> Event:
        """A new envelope from this service; the trace defaults to that of the call being served."""
        return Event(
            id=new_event_id(self.clock),
            type=str(type),
            source=self.source,
            ts=utc_iso(self.clock.now()),
            trace=trace if trace is not None else trace_var.get(),
            data={**data, "synthetic": True} if self.synthetic else data,
        )

    async def publish(self, type: str, data: dict[str, Any], *, trace: str | None = None) -> Event | None:
        """Broadcast an event; returns it, or ``None`` if Redis was unreachable (it is dropped)."""
        event = self.event(type, data, trace=trace)
        return event if await self.publish_many([event]) else None

    async def publish_many(self, events: Iterable[Event]) -> int:
        """Broadcast events in one pipelined round trip; returns how many were sent."""
        batch = list(events)
        if not batch:
            return 0
        if self._redis is None or not self.connected:
            self.metrics.incr("events.dropped", len(batch))
            return 0
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for event in batch:
                    pipe.publish(CHANNEL_PREFIX + event.type, event.encode())
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._lost(exc)
            self.metrics.incr("events.dropped", len(batch))
            return 0
        self.metrics.incr("events.published", len(batch))
        return len(batch)

    def subscribe(self, types: str | Iterable[str], handler: Handler) -> None:
        """Call ``handler`` for every broadcast event of these types (register before ``start``)."""
        for event_type in [types] if isinstance(types, str) else types:
            self._handlers.setdefault(CHANNEL_PREFIX + str(event_type), []).append(handler)
        if self._redis is not None:  # already running: subscribe again with the new channel
            old = self._tasks.pop("subscriber", None)
            if old is not None:
                old.cancel()
            self._spawn("subscriber", self._subscriber_loop())

    async def _subscriber_loop(self) -> None:
        assert self._redis is not None
        backoff = RECONNECT_FIRST_S
        while not self._closing:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*self._handlers)
                backoff = RECONNECT_FIRST_S
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                    if message is not None and message["type"] == "message":
                        await self._dispatch(message["channel"], message["data"])
            except (RedisError, OSError) as exc:
                self._lost(exc)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.redis_config.max_backoff_s)

    async def _dispatch(self, channel: bytes, payload: bytes) -> None:
        try:
            event = Event.decode(payload)
        except ValueError as exc:
            self.metrics.incr("events.malformed")
            log.warning("ignored a malformed event on %s: %s", channel.decode(errors="replace"), exc)
            return
        self.metrics.incr("events.received")
        for handler in self._handlers.get(channel.decode(), ()):
            try:
                await handler(event)
            except Exception:
                self.metrics.incr("events.handler_errors")
                log.exception(
                    "handler for %s failed", event.type, extra={"trace": event.trace, "event_id": event.id}
                )

    # -- durable streams ------------------------------------------------------------------

    async def publish_durable(
        self, type: str, data: dict[str, Any], *, stream: str = SIGNALS_STREAM, trace: str | None = None
    ) -> Event:
        """Store the event in the outbox (committed when this returns), then send it when possible."""
        if self.outbox_db is None:
            raise RuntimeError("publish_durable needs an outbox database")
        event = self.event(type, data, trace=trace)

        def store(conn: Any) -> None:
            with transaction(conn):
                Outbox.add(conn, stream, event)

        await self.outbox_db.run(store)
        self.wake_relay()
        return event

    def wake_relay(self) -> None:
        """Tell the relay that new outbox rows were committed (e.g. in the caller's transaction)."""
        self._outbox_wakeup.set()

    async def _relay_loop(self) -> None:
        assert self._redis is not None
        assert self.outbox_db is not None
        db = self.outbox_db
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outbox_wakeup.wait(), timeout=5.0)
            self._outbox_wakeup.clear()
            if not self.connected:
                continue
            try:
                while rows := await db.run(Outbox.unsent):
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for _seq, stream, payload in rows:
                            pipe.xadd(
                                stream,
                                {"event": payload},
                                maxlen=self.config.stream_max_len,
                                approximate=True,
                            )
                        await pipe.execute()
                    now = self.clock.now()
                    sent = [seq for seq, _stream, _payload in rows]
                    await db.run(partial(Outbox.mark_sent, seqs=sent, now=now))
                    self.metrics.incr("events.durable_sent", len(rows))
                cutoff = retention_cutoff(self.clock.now(), self.config.outbox_retention_days)
                await db.run(partial(Outbox.purge_sent, before=cutoff))
            except (RedisError, OSError) as exc:
                self._lost(exc)

    async def outbox_pending(self) -> int:
        if self.outbox_db is None:
            return 0
        return await self.outbox_db.run(Outbox.pending_count)

    def consume(self, stream: str, group: str, consumer: str, handler: Handler) -> None:
        """Apply every event of ``stream`` once per group (register before ``start``).

        The handler must commit its effects and record the event id (``Inbox``) before it
        returns, and skip ids it has already recorded; the event is acknowledged afterwards. A
        handler that raises leaves the event pending, and it is delivered again.
        """
        self._consumers.append((stream, group, consumer, handler))
        if self._redis is not None:
            self._spawn(f"consumer:{stream}", self._consume_loop(stream, group, consumer, handler))

    async def _consume_loop(self, stream: str, group: str, consumer: str, handler: Handler) -> None:
        assert self._redis is not None
        redis = self._redis
        backoff = RECONNECT_FIRST_S
        backlog = True  # first re-read what was delivered to us but never acknowledged
        group_ready = False
        while not self._closing:
            try:
                if not group_ready:
                    await _ensure_group(redis, stream, group)
                    group_ready = True
                reply = await redis.xreadgroup(
                    group,
                    consumer,
                    {stream: "0" if backlog else ">"},
                    count=100,
                    block=None if backlog else self.config.consumer_block_ms,
                )
                entries: list[tuple[bytes, dict[bytes, bytes]]] = reply[0][1] if reply else []  # type: ignore[index,assignment]
                if backlog and not entries:
                    backlog = False
                failed = False
                for entry_id, fields in entries:
                    if not await self._apply(stream, group, entry_id, fields, handler):
                        failed = True
                        break
                backoff = RECONNECT_FIRST_S
                if failed:
                    backlog = True  # deliver the failed event again, after a pause
                    await asyncio.sleep(1.0)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                backlog, group_ready = True, False  # Redis lost the stream; make the group again
            except (RedisError, OSError) as exc:
                self._lost(exc)
                backlog, group_ready = True, False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.redis_config.max_backoff_s)

    async def _apply(
        self, stream: str, group: str, entry_id: bytes, fields: dict[bytes, bytes], handler: Handler
    ) -> bool:
        assert self._redis is not None
        try:
            event = Event.decode(fields.get(b"event", b""))
        except ValueError as exc:
            log.error("moved malformed event %s on %s to %s:dead: %s", entry_id, stream, stream, exc)
            self.metrics.incr("events.malformed")
            await self._redis.xadd(f"{stream}:dead", {k: v for k, v in fields.items()} or {"event": b""})
            await self._redis.xack(stream, group, entry_id)
            return True
        try:
            await handler(event)
        except Exception:
            self.metrics.incr("events.handler_errors")
            log.exception(
                "handler for %s failed; it stays pending",
                event.type,
                extra={"trace": event.trace, "event_id": event.id},
            )
            return False
        await self._redis.xack(stream, group, entry_id)
        self.metrics.incr("events.consumed")
        return True


async def _ensure_group(redis: aioredis.Redis, stream: str, group: str) -> None:
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _log_task_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("task %s failed", task.get_name(), exc_info=task.exception())
