"""The paper trading service over its socket with real Redis and SQLite, a simulated clock (so
market hours are chosen) and a stand-in market data service on its real socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from services.base.clock import SimulatedClock
from services.base.config import TradingHome, load_settings
from services.base.errors import DependencyUnavailable, InvalidParams, Rejected
from services.base.events import CHANNEL_PREFIX
from services.base.redis_server import EmbeddedRedis
from services.base.rpc.client import RpcClient
from services.paper_trading.paper_trading_service import PaperTradingService
from tests.conftest import eventually
from tests.paper_fakes import PriceBoard, send, signal_event

OPEN = datetime(2026, 11, 20, 0, 30, tzinfo=UTC)  # Friday 11:30 in Sydney: the ASX is open
SATURDAY = datetime(2026, 11, 21, 0, 30, tzinfo=UTC)
MONDAY_OPEN = datetime(2026, 11, 23, 0, 5, tzinfo=UTC)  # Monday 11:05 in Sydney
SESSION = "2026-11-20"
# The design's exits, which these tests' prices are set against (the defaults are tuned).
EXITS = "[paper_trading]\nstop_loss = 0.05\ntake_profit = 0.10\n"


class Stack:
    def __init__(
        self, home: TradingHome, redis: EmbeddedRedis, clock: SimulatedClock, config: str = EXITS
    ) -> None:
        self.home, self.redis, self.clock = home, redis, clock
        home.config_file.write_text(config)
        self.settings = load_settings(home, env={"REDIS_URL": redis.url})
        self.board = PriceBoard(self.settings)
        self.service = PaperTradingService(self.settings, clock=clock, ig_env={})
        self._listeners: list[tuple[aioredis.Redis, aioredis.client.PubSub]] = []

    async def events(self, *types: str) -> aioredis.client.PubSub:
        connection = aioredis.Redis.from_url(self.redis.url)
        pubsub = connection.pubsub()
        self._listeners.append((connection, pubsub))
        await pubsub.subscribe(*(f"{CHANNEL_PREFIX}{t}" for t in types))
        await pubsub.get_message(timeout=1.0)
        return pubsub

    async def close(self) -> None:
        for connection, pubsub in self._listeners:
            await pubsub.aclose()
            await connection.aclose()


@pytest.fixture
async def stack(home: TradingHome, redis: EmbeddedRedis) -> AsyncIterator[Stack]:
    PriceBoard.prices = {s: (100.0, SESSION) for s in ("CBA.AX", "WBC.AX", "ANZ.AX", "NAB.AX")}
    stack = Stack(home, redis, SimulatedClock(OPEN))
    await stack.board.start()
    await stack.service.start()
    yield stack
    await stack.close()
    await stack.service.stop()
    await stack.board.stop()


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[RpcClient]:
    async with RpcClient(stack.home.socket_path("paper_trading"), timeout=20) as rpc:
        yield rpc


async def collect(pubsub: aioredis.client.PubSub, count: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    async def enough() -> bool:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None:
            found.append(orjson.loads(message["data"]))
        return len(found) >= count

    await eventually(enough)
    return found


async def test_a_manual_buy_and_sell_to_the_cent(client: RpcClient, stack: Stack) -> None:
    events = await stack.events("trade_executed", "position_closed")
    bought = await client.call("execute_trade", {"symbol": "CBA.AX", "action": "BUY", "quantity": 50,
                                                 "idempotency_key": "first"})  # fmt: skip
    assert bought["status"] == "filled"
    fill = bought["fill"]
    assert fill["price"] == "100.0500"  # 5 bps of slippage
    assert fill["value"] == 5002.5
    assert fill["commission"] == 15.0  # $10 + 0.1% of $5,002.50 = $15.0025 -> $15.00
    again = await client.call("execute_trade", {"symbol": "CBA.AX", "action": "BUY", "quantity": 50,
                                                "idempotency_key": "first"})  # fmt: skip
    assert again["id"] == bought["id"]
    status = await client.call("get_portfolio_status")
    assert status["cash"] == 100_000 - 5002.5 - 15.0
    assert status["positions"] == 1
    positions = await client.call("get_positions")
    assert positions[0]["quantity"] == 50
    assert positions[0]["stop_price"] == "95.0475"
    assert positions[0]["take_profit_price"] == "110.0550"

    PriceBoard.prices["CBA.AX"] = (104.0, SESSION)
    sold = await client.call("execute_trade", {"symbol": "CBA.AX", "action": "SELL", "quantity": 50})
    assert sold["fill"]["price"] == "103.9480"
    assert sold["fill"]["realised_pnl"] == round(5197.40 - 5002.50, 2)
    status = await client.call("get_portfolio_status")
    assert (
        status["reconciled"]["cash_plus_cost"]
        == status["reconciled"]["starting_plus_realised_minus_commissions"]
    )
    assert status["positions"] == 0
    kinds = [e["type"] for e in await collect(events, 3)]
    assert kinds == ["trade_executed", "trade_executed", "position_closed"]
    history = await client.call("get_trade_history", {"symbol": "CBA.AX"})
    assert [h["side"] for h in history] == ["SELL", "BUY"]


async def test_each_rule_names_itself(client: RpcClient, stack: Stack) -> None:
    with pytest.raises(Rejected) as caught:
        await client.call("execute_trade", {"symbol": "CBA.AX", "action": "BUY", "quantity": 101})
    assert caught.value.data["reason"] == "max_position_value"
    with pytest.raises(Rejected) as caught:
        await client.call("execute_trade", {"symbol": "CBA.AX", "action": "SELL", "quantity": 1})
    assert caught.value.data["reason"] == "quantity_above_position"
    # The $10,000 limit is per position: a second buy may not take it past.
    await client.call("execute_trade", {"symbol": "CBA.AX", "action": "BUY", "quantity": 90})
    with pytest.raises(Rejected) as caught:
        await client.call("execute_trade", {"symbol": "CBA.AX", "action": "BUY", "quantity": 10})
    assert caught.value.data["reason"] == "max_position_value"
    assert "already held" in caught.value.message
    with pytest.raises(InvalidParams) as bad:
        await client.call("execute_trade", {"symbol": "XYZ.AX", "action": "BUY", "quantity": 1})
    assert bad.value.data["field"] == "symbol"
    history = await client.call("get_trade_history", {"limit": 20})
    rejected = [h["reason"].split(":")[0] for h in history if h["status"] == "rejected"]
    # Every refusal is in the history with its rule, the oversized sell included.
    assert rejected == ["max_position_value", "quantity_above_position", "max_position_value"]


async def test_signals_from_the_stream_apply_once(client: RpcClient, stack: Stack) -> None:
    connection = aioredis.Redis.from_url(stack.redis.url)
    try:
        buy = signal_event(1, "CBA.AX", "BUY", 0.8)
        await send(connection, [
            buy, buy, signal_event(2, "WBC.AX", "BUY", 0.4), signal_event(3, "ANZ.AX", "HOLD"),
            signal_event(5, "NAB.AX", "BUY", None, 0), signal_event(6, "NAB.AX", "BUY", 0.9, 12),
        ])  # fmt: skip

        async def applied() -> bool:
            return len(await client.call("get_positions")) == 1

        await eventually(applied)
        position = (await client.call("get_positions"))[0]
        # 5% of $100,000 at $100.05: 49 shares (not 50: slippage), one position despite two deliveries.
        assert (position["symbol"], position["quantity"]) == ("CBA.AX", 49)
        await send(connection, [signal_event(4, "CBA.AX", "SELL", 0.7)])

        async def closed() -> bool:
            return (await client.call("get_positions")) == []

        await eventually(closed)
    finally:
        await connection.aclose()
    metrics = await client.call("metrics")
    # Below the bar, uncalibrated, or with too few past cases behind it: no order.
    assert metrics["counters"]["signals.ignored.low_probability"] == 1
    assert metrics["counters"]["signals.ignored.uncalibrated"] == 1
    assert metrics["counters"]["signals.ignored.few_cases"] == 1
    assert metrics["counters"]["signals.ignored.hold"] == 1


async def test_after_hours_an_order_waits_for_the_next_session(stack: Stack, client: RpcClient) -> None:
    await stack.clock.advance_to(SATURDAY)
    waiting = await client.call("execute_trade", {"symbol": "NAB.AX", "action": "BUY", "quantity": 10})
    assert waiting["status"] == "pending"
    assert "market is closed" in waiting["reason"]
    PriceBoard.prices["NAB.AX"] = (90.0, "2026-11-23")  # Monday's first price
    await stack.clock.advance_to(MONDAY_OPEN)

    async def filled() -> bool:
        return bool(await client.call("get_positions"))

    await eventually(filled)
    history = await client.call("get_trade_history", {"symbol": "NAB.AX"})
    assert history[0]["status"] == "filled"
    assert history[0]["price"] == "90.0450"


async def test_no_price_no_fill(client: RpcClient, stack: Stack) -> None:
    PriceBoard.prices["WBC.AX"] = DependencyUnavailable("Yahoo Finance unreachable")
    waiting = await client.call("execute_trade", {"symbol": "WBC.AX", "action": "BUY", "quantity": 10})
    assert waiting["status"] == "pending"
    assert "Yahoo Finance unreachable" in waiting["reason"]
    health = await client.call("health")
    assert health["checks"]["prices"]["status"] == "degraded"
    PriceBoard.prices["WBC.AX"] = (100.0, "2026-11-19")  # yesterday's close is not today's price
    stale = await client.call("execute_trade", {"symbol": "WBC.AX", "action": "BUY", "quantity": 5})
    assert "no price of today's session yet" in stale["reason"]


async def test_stop_loss_and_take_profit(client: RpcClient, stack: Stack) -> None:
    events = await stack.events("position_closed")
    await client.call("execute_trade", {"symbol": "CBA.AX", "action": "BUY", "quantity": 40})
    await client.call("execute_trade", {"symbol": "WBC.AX", "action": "BUY", "quantity": 40})
    PriceBoard.prices["CBA.AX"] = (94.0, SESSION)  # below 95.0475
    PriceBoard.prices["WBC.AX"] = (111.0, SESSION)  # above 110.055
    await stack.clock.advance(61)  # the timer checks
    closed = {e["data"]["symbol"]: e["data"]["reason"] for e in await collect(events, 2)}
    assert closed == {"CBA.AX": "stop_loss", "WBC.AX": "take_profit"}
    assert await client.call("get_positions") == []
    performance = await client.call("get_trading_performance", {"period": "all"})
    assert performance["closed_trades"] == 2
    assert performance["win_rate"] == 0.5
    assert performance["per_symbol"]["CBA.AX"]["losses"] == 1


async def test_the_daily_loss_limit_stops_buys_and_alerts_once(client: RpcClient, stack: Stack) -> None:
    events = await stack.events("risk_alert")
    await client.call("execute_trade", {"symbol": "CBA.AX", "action": "BUY", "quantity": 99})
    await client.call("execute_trade", {"symbol": "WBC.AX", "action": "BUY", "quantity": 99})
    # Yesterday's equity recorded; then the prices fall 30% (stops are checked only on the timer).
    yesterday = "INSERT INTO equity VALUES ('2026-11-19', 10000000, 10000000, 0, '2026-11-19T06:00:00Z')"
    await stack.service.db.run(lambda conn: conn.execute(yesterday))  # type: ignore[union-attr]
    PriceBoard.prices["CBA.AX"] = (70.0, SESSION)
    PriceBoard.prices["WBC.AX"] = (70.0, SESSION)
    for _ in range(2):
        with pytest.raises(Rejected) as caught:
            await client.call("execute_trade", {"symbol": "ANZ.AX", "action": "BUY", "quantity": 10})
        assert caught.value.data["reason"] == "max_daily_loss"
    alerts = await collect(events, 1)
    assert alerts[0]["data"]["rule"] == "max_daily_loss"
    await stack.clock.advance(61)  # the timer sees the loss too: still one alert that day
    await asyncio.sleep(0.3)
    assert await events.get_message(ignore_subscribe_messages=True, timeout=0.5) is None
    status = await client.call("get_portfolio_status")
    assert status["day_pnl"] < -5000
    assert status["limits"]["daily_loss_used"] > 1


async def test_reset_needs_confirmation_and_ig_needs_credentials(client: RpcClient) -> None:
    await client.call("execute_trade", {"symbol": "CBA.AX", "action": "BUY", "quantity": 10})
    with pytest.raises(InvalidParams):
        await client.call("reset_account", {})
    assert (await client.call("reset_account", {"confirm": True}))["cash"] == 100_000
    assert await client.call("get_positions") == []
    with pytest.raises(DependencyUnavailable) as caught:
        await client.call("sync_with_ig_markets")
    assert "IG not configured" in caught.value.message


async def test_end_of_day_snapshot_feeds_performance(client: RpcClient, stack: Stack) -> None:
    await client.call("execute_trade", {"symbol": "CBA.AX", "action": "BUY", "quantity": 50})
    snapshot = await client.call("end_of_day_sync")
    assert snapshot["day"] == SESSION
    assert Decimal(str(snapshot["equity"])) == Decimal("100000") - Decimal("15.00") - Decimal("2.50")
    performance = await client.call("get_trading_performance", {"period": "week"})
    assert performance["equity_days"] == 1
    assert performance["unrealised_pnl"] == -2.5


async def test_waiting_signals_count_and_a_bad_signal_does_not_block_the_stream(
    client: RpcClient, stack: Stack
) -> None:
    await stack.clock.advance_to(SATURDAY)
    connection = aioredis.Redis.from_url(stack.redis.url)
    try:
        malformed = signal_event(10, "CBA.AX", "BUY")
        malformed.data["probability"] = "high"
        await send(connection, [
            malformed, signal_event(11, "WBC.AX", "BUY"), signal_event(12, "WBC.AX", "BUY"),
            signal_event(13, "ANZ.AX", "BUY"), signal_event(14, "ANZ.AX", "SELL"),
        ])  # fmt: skip

        async def all_seen() -> bool:
            counters = (await client.call("metrics"))["counters"]
            return counters.get("signals.received", 0) == 5

        await eventually(all_seen)
    finally:
        await connection.aclose()
    counters = (await client.call("metrics"))["counters"]
    assert counters["signals.ignored.malformed"] == 1
    assert counters["signals.ignored.already_open"] == 1  # the second WBC BUY: one is waiting
    assert counters["signals.ignored.cancelled_waiting_buy"] == 1
    history = await client.call("get_trade_history", {"limit": 10})
    assert sorted((h["symbol"], h["status"]) for h in history) == [
        ("ANZ.AX", "cancelled"),
        ("WBC.AX", "pending"),
    ]
    PriceBoard.prices["WBC.AX"] = (30.0, "2026-11-23")
    await stack.clock.advance_to(MONDAY_OPEN)

    async def one_position() -> bool:
        return len(await client.call("get_positions")) == 1

    await eventually(one_position)
    assert (await client.call("get_positions"))[0]["symbol"] == "WBC.AX"


async def test_expire_mode_expires_orders_outside_market_hours(
    home: TradingHome, redis: EmbeddedRedis
) -> None:
    stack = Stack(home, redis, SimulatedClock(SATURDAY), EXITS + 'after_hours = "expire"\n')
    await stack.board.start()
    await stack.service.start()
    try:
        order = await stack.service.execute_trade("CBA.AX", "BUY", 10)
        assert order["status"] == "expired"
        assert "after_hours = expire" in order["reason"]
    finally:
        await stack.service.stop()
        await stack.board.stop()


async def test_a_price_update_event_triggers_the_stop(client: RpcClient, stack: Stack) -> None:
    events = await stack.events("position_closed")
    await client.call("execute_trade", {"symbol": "NAB.AX", "action": "BUY", "quantity": 20})
    PriceBoard.prices["NAB.AX"] = (90.0, SESSION)
    await stack.service.bus.publish("market_data_updated", {"symbol": "NAB.AX"})
    closed = await collect(events, 1)
    assert closed[0]["data"]["reason"] == "stop_loss"


async def test_unpriced_positions_say_so(client: RpcClient) -> None:
    await client.call("execute_trade", {"symbol": "ANZ.AX", "action": "BUY", "quantity": 20})
    PriceBoard.prices["ANZ.AX"] = DependencyUnavailable("Yahoo Finance unreachable")
    position = (await client.call("get_positions"))[0]
    assert position["priced"] is False
    assert position["market_price"] == "100.0000"  # the last price market data gave


async def test_fills_and_the_equity_curve_are_read_a_page_at_a_time(client: RpcClient) -> None:
    for symbol in ("CBA.AX", "WBC.AX", "ANZ.AX"):
        await client.call("execute_trade", {"symbol": symbol, "action": "BUY", "quantity": 10})
    await client.call("end_of_day_sync")
    first = await client.call("get_fills", {"limit": 2})
    rest = await client.call("get_fills", {"after_id": first[-1]["id"], "limit": 2})
    assert [f["symbol"] for f in first + rest] == ["CBA.AX", "WBC.AX", "ANZ.AX"]
    cba = first[0]
    assert (cba["price"], cba["value_cents"], cba["commission_cents"]) == ("100.0500", 100_050, 1100)
    (day,) = await client.call("get_equity_curve")
    assert day == {
        "day": SESSION,
        "equity_cents": 10_000_000 - 3 * (1100 + 50),
        "cash_cents": 10_000_000 - 3 * (100_050 + 1100),
        "market_value_cents": 3 * 100_000,
    }
    with pytest.raises(InvalidParams) as caught:
        await client.call("get_fills", {"limit": 0})
    assert caught.value.data["field"] == "limit"


async def test_an_unwritable_database_fails_trades_naming_the_file_alerts_once_and_loses_nothing(
    client: RpcClient, stack: Stack
) -> None:
    alerts = await stack.events("storage_alert")
    await client.call("execute_trade", {"symbol": "CBA.AX", "action": "BUY", "quantity": 10})
    database = stack.service.db
    assert database is not None
    database.conn.execute("PRAGMA query_only = ON")  # every write now fails: SQLITE_READONLY
    path = str(stack.home.database("paper_trading"))
    for _ in range(3):
        with pytest.raises(DependencyUnavailable) as caught:
            await client.call("execute_trade", {"symbol": "WBC.AX", "action": "BUY", "quantity": 10})
        assert path in caught.value.message
    health = await client.call("health")
    assert health["status"] == "failing"
    assert path in health["checks"]["database"]["detail"]
    (alert,) = await collect(alerts, 1)
    assert alert["data"]["service"] == "paper_trading"
    assert path in alert["data"]["message"]
    # Writable again: the next trade goes through and health with it; the first trade is intact.
    database.conn.execute("PRAGMA query_only = OFF")
    await client.call("execute_trade", {"symbol": "WBC.AX", "action": "BUY", "quantity": 10})
    assert (await client.call("health"))["checks"]["database"]["status"] == "ok"
    held = {p["symbol"]: p["quantity"] for p in await client.call("get_positions")}
    assert held == {"CBA.AX": 10, "WBC.AX": 10}
    assert (await client.call("get_portfolio_status"))["reconciled"]


async def test_an_absurd_quantity_is_invalid_and_a_reused_idempotency_key_is_refused(
    client: RpcClient,
) -> None:
    with pytest.raises(InvalidParams) as caught:
        await client.call("execute_trade", {"symbol": "CBA.AX", "action": "BUY", "quantity": 2**63})
    assert caught.value.data["field"] == "quantity"
    first = await client.call(
        "execute_trade", {"symbol": "CBA.AX", "action": "BUY", "quantity": 10, "idempotency_key": "k1"}
    )
    again = await client.call(
        "execute_trade", {"symbol": "CBA.AX", "action": "BUY", "quantity": 10, "idempotency_key": "k1"}
    )
    assert again["id"] == first["id"]  # the same order, not a second one
    with pytest.raises(Rejected) as refused:
        await client.call(
            "execute_trade", {"symbol": "WBC.AX", "action": "BUY", "quantity": 20, "idempotency_key": "k1"}
        )
    assert refused.value.reason == "idempotency_key_reused"
    assert f"order {first['id']}" in refused.value.message
    held = {p["symbol"]: p["quantity"] for p in await client.call("get_positions")}
    assert held == {"CBA.AX": 10}


async def test_the_log_reads_as_a_trade_blotter(
    client: RpcClient, stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="services.paper_trading")
    connection = aioredis.Redis.from_url(stack.redis.url)
    try:
        await send(connection, [signal_event(40, "NAB.AX", "BUY", 0.9, 12)])  # too few cases behind it
        await eventually(lambda: "SIGNAL BUY NAB.AX" in caplog.text)
    finally:
        await connection.aclose()
    await client.call("execute_trade", {"symbol": "CBA.AX", "action": "BUY", "quantity": 40})
    with pytest.raises(Rejected):
        await client.call("execute_trade", {"symbol": "WBC.AX", "action": "SELL", "quantity": 5})
    PriceBoard.prices["CBA.AX"] = (94.0, SESSION)  # below the stop
    await stack.clock.advance(61)
    await eventually(lambda: "EXIT STOP-LOSS" in caplog.text)
    lines = [r.getMessage() for r in caplog.records if r.name == "services.paper_trading"]
    blotter = "\n".join(lines)
    assert "SIGNAL BUY NAB.AX P(right) 0.90 of 12 cases: ignored (few_cases)" in blotter
    assert "ORDER 1: manual BUY 40 CBA.AX" in blotter
    assert (
        "FILL order 1: BUY 40 CBA.AX at $100.0500 (market $100.0000 of 2026-11-20), commission $14.00"
        in blotter
    )
    assert "REJECTED order 2: quantity_above_position: selling 5 WBC.AX but holding 0" in blotter
    assert "EXIT STOP-LOSS: CBA.AX 40 at $94.0000 crossed $95.0475 (entry $100.0500): order 3" in blotter
    assert (
        "FILL order 3: SELL 40 CBA.AX at $93.9530 (market $94.0000 of 2026-11-20), commission $13.76, "
        "realised -$243.88 (stop_loss)" in blotter
    )


async def test_a_manual_order_placed_while_closed_is_checked_at_the_last_price(
    stack: Stack, client: RpcClient
) -> None:
    await stack.clock.advance_to(SATURDAY)
    # 150 shares at the last price of $100 is $15,000: over the $10,000 position limit, refused now.
    with pytest.raises(Rejected) as caught:
        await client.call("execute_trade", {"symbol": "CBA.AX", "action": "BUY", "quantity": 150})
    assert caught.value.reason == "max_position_value"
    assert "at the last price $100" in caught.value.message
    waiting = await client.call("execute_trade", {"symbol": "CBA.AX", "action": "BUY", "quantity": 50})
    assert (waiting["status"], waiting["quantity"]) == ("pending", 50)  # within the rules: it waits
    history = await client.call("get_trade_history", {"limit": 5})
    assert [(h["status"], h["quantity"]) for h in history] == [("pending", 50), ("rejected", 150)]


async def test_the_portfolio_says_the_bar_a_buy_signal_must_reach(client: RpcClient) -> None:
    limits = (await client.call("get_portfolio_status"))["limits"]
    assert (limits["buy_confidence"], limits["min_cases"]) == (0.61, 200)
