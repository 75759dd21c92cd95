"""The paper trading service: signals and manual orders into an exact ledger, under trading rules.

Signals come from the durable ``trading:signals`` stream through the ``paper_trading`` consumer
group. Each is recorded with its order in one transaction (the event id in the ``Inbox``), so a
signal is applied once however often it is delivered, and acknowledged only after that commit.
A BUY whose calibrated probability is at least ``buy_confidence``, with ``min_cases`` past cases
behind it, opens a position when none is open; a SELL closes one.

An order fills at the latest market-data price of the current session plus slippage while the
ASX is open. Outside market hours, or without a price of the current session, it waits and fills
at the next session's first price (or expires, ``after_hours = "expire"``); a price is never made
up. Stop-loss and take-profit are checked on every ``market_data_updated`` event and every
``check_interval_s`` while the market is open.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, TypeVar

import requests

from services.asx.calendar import SYDNEY, AsxCalendar
from services.base.clock import utc_iso
from services.base.config import Settings
from services.base.db import migrate, transaction
from services.base.errors import DependencyUnavailable, InvalidParams, Rejected, TradingError
from services.base.events import SIGNALS_STREAM, Event, EventType
from services.base.outbox import Inbox
from services.base.rpc import RpcClient, rpc_method
from services.base.service import BaseService, Check, ServiceState
from services.base.symbols import configured_symbol
from services.paper_trading import engine, ledger
from services.paper_trading.analytics import ClosedTrade, max_drawdown, ratios, trade_statistics
from services.paper_trading.config import PaperTradingConfig
from services.paper_trading.ledger import Fill, dollars, to_price
from services.paper_trading.rules import Costs, Portfolio
from services.paper_trading.schema import MIGRATIONS

# The most shares one manual order may name (SQLite's integers end at 2^63).
MAX_QUANTITY = 1_000_000_000

log = logging.getLogger("services.paper_trading")

T = TypeVar("T")
CONSUMER_GROUP = "paper_trading"
PERIODS = {"day": 1, "week": 7, "month": 31, "all": None}


@dataclass(frozen=True, slots=True)
class Quote:
    price: Decimal
    price_time: str  # the session date of the bar


@dataclass(frozen=True, slots=True)
class Marks:
    """The latest price of each open position, and which could not be priced just now."""

    prices: dict[str, Decimal]
    unpriced: frozenset[str]


class PaperTradingService(BaseService):
    name = "paper_trading"
    uses_database = True
    database_synchronous = "FULL"

    def __init__(
        self,
        settings: Settings,
        *,
        calendar: AsxCalendar | None = None,
        ig_env: Mapping[str, str] | None = None,
        ig_session: requests.Session | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(settings, **kwargs)
        # IG credentials' environment and HTTP session (tests replace the session's transport).
        self._ig_env = ig_env
        self._ig_session = ig_session
        self._ig_service: Any = None
        self._mirror_lock = asyncio.Lock()
        self.config = settings.section("paper_trading", PaperTradingConfig)
        self.calendar = calendar or AsxCalendar()
        self.costs = Costs(self.config)
        self.stop_loss = Decimal(str(self.config.stop_loss))
        self.take_profit = Decimal(str(self.config.take_profit))
        # Every change of the book runs under this lock: signals, timer, RPC and stops interleave.
        self._book = asyncio.Lock()
        # A round of the open's work (waiting orders, then stops) is not interleaved with the stop
        # check a price update starts: the order of fills is the engine's, as in the back-test.
        self._round = asyncio.Lock()
        self._market_data: RpcClient | None = None
        self._quotes: dict[str, Quote] = {}
        self._last_price_error: str | None = None
        self._fills = 0

    # -- lifecycle ------------------------------------------------------------------------

    async def _start(self) -> None:
        now = self.clock.now()

        def prepare(conn: sqlite3.Connection) -> None:
            migrate(conn, MIGRATIONS)
            Inbox.create_tables(conn)
            with transaction(conn):
                ledger.open_account(conn, ledger.cents_of_dollars(self.config.starting_capital), now)
            ledger.reconcile(conn)

        await self._db(prepare)
        self._market_data = self.peer("market_data", timeout=self.config.price_timeout_s)
        self.bus.consume(
            SIGNALS_STREAM, CONSUMER_GROUP, f"paper_trading-{self.home.root.name}", self._on_signal
        )
        self.bus.subscribe(EventType.MARKET_DATA_UPDATED, self._on_price_update)
        self.spawn(self._watch(), name="watch", on_clock=True)

    async def _stop(self) -> None:
        if self._market_data is not None:
            await self._market_data.close()

    async def _watch(self) -> None:
        """Pending orders and stops, every ``check_interval_s`` while the market is open; while it
        is closed, nothing until the next session opens."""
        while True:
            now = self.clock.now()
            if self.calendar.open_session(now) is None:
                upcoming = self.calendar.next_open(now)
                await self.clock.sleep_until(upcoming.open if upcoming else now + timedelta(days=1))
                continue
            try:
                async with self._round:
                    await self._work_pending()
                    await self._check_stops(None)
            except Exception:  # logged; the next round tries again
                log.exception("checking orders and stops failed")
            await self.clock.sleep(self.config.check_interval_s)

    # -- signals --------------------------------------------------------------------------

    async def _on_signal(self, event: Event) -> None:
        """Record the signal and its order in one transaction; then try to fill the order. A
        signal that cannot be read is recorded as ignored: it must not block the stream."""
        now = self.clock.now()
        counted: list[str] = []

        def record(conn: sqlite3.Connection) -> int | None:
            with transaction(conn):
                if Inbox.seen(conn, event.id):
                    return None
                Inbox.record(conn, SIGNALS_STREAM, event.id, now)
                signal = _read_signal(event)
                if signal is None:
                    counted.append("malformed")
                    return None
                decision = self._decide(conn, signal, now)
                if isinstance(decision, str):
                    counted.append(decision)
                    return None
                side, quantity = decision
                return ledger.new_order(conn, symbol=signal.symbol, side=side, quantity=quantity,
                                        origin="signal", now=now, signal_id=event.id,
                                        confidence=signal.probability)  # fmt: skip

        async with self._book:
            order_id = await self._db(record)
        self.stats.incr("signals.received")
        for reason in counted:
            self.stats.incr(f"signals.ignored.{reason}")
        _log_signal(event, order_id, counted)
        if order_id is not None:
            await self._execute(order_id)

    def _decide(
        self, conn: sqlite3.Connection, signal: ReadSignal, now: datetime
    ) -> tuple[str, int | None] | str:
        """(side, quantity) of the order a signal makes, or why it makes none (``engine.on_signal``)."""
        waiting = dict(
            conn.execute(
                "SELECT side, id FROM orders WHERE symbol = ? AND status = 'pending' AND origin = 'signal'",
                (signal.symbol,),
            ).fetchall()
        )
        outcome = engine.on_signal(
            signal.symbol, signal.action, signal.probability, signal.cases,
            held=ledger.positions(conn).get(signal.symbol), waiting=frozenset(waiting), config=self.config,
        )  # fmt: skip
        if isinstance(outcome, engine.CancelWaitingBuy):
            ledger.set_order(conn, waiting["BUY"], "cancelled", "cancelled by a SELL signal", now)
            return outcome.reason
        if isinstance(outcome, engine.Ignored):
            return outcome.reason
        return outcome.side, outcome.quantity

    async def _on_price_update(self, event: Event) -> None:
        symbol = event.data.get("symbol")
        if symbol in self.config.symbols and self._market_open():
            async with self._round:
                await self._check_stops(str(symbol))

    # -- orders ---------------------------------------------------------------------------

    async def _execute(self, order_id: int) -> dict[str, Any]:
        """Fill, reject, expire or leave an order waiting; the order's state after."""
        order = await self._db(lambda conn: _order(conn, order_id))
        if order is None or order["status"] != "pending":
            return order or {"id": order_id, "status": "gone", "reason": "the account was reset"}
        session = self.calendar.open_session(self.clock.now())
        if session is None:
            if self.config.after_hours == "expire":
                return await self._finish(order_id, "expired", "the market is closed (after_hours = expire)")
            return await self._wait_checked(
                order, "the market is closed: waits for the next session's first price"
            )
        try:
            quote = await self._quote(order["symbol"])
        except TradingError as exc:
            return await self._wait(order_id, f"no price: {exc.message}")
        if quote.price_time != session.date.isoformat():
            return await self._wait_checked(
                order, f"no price of today's session yet (latest {quote.price_time})", quote
            )
        # Prices are fetched before the book is locked: a slow market data must not hold it.
        marks = await self._marks()
        async with self._book:
            return await self._fill(order_id, quote, marks)

    async def _fill(self, order_id: int, quote: Quote, marks: Marks) -> dict[str, Any]:
        """Fill a pending order under the book lock (the caller holds it)."""
        now = self.clock.now()
        day = self._session_day().isoformat()

        def apply(conn: sqlite3.Connection) -> tuple[dict[str, Any] | None, Fill | None, int | None]:
            with transaction(conn):
                order = _order(conn, order_id)
                if order is None or order["status"] != "pending":
                    return order, None, None
                symbol, side = order["symbol"], order["side"]
                held = ledger.positions(conn).get(symbol)
                day_start = _day_open(conn, day, self._portfolio(conn, marks, 0).equity_cents)
                try:
                    fill = self._apply_order(conn, order, held, quote, marks, day_start, now)
                except Rejected as exc:
                    ledger.set_order(conn, order_id, "rejected", f"{exc.reason}: {exc.message}", now)
                    loss = self._portfolio(conn, marks, day_start).day_pnl_cents
                    return _order(conn, order_id), None, loss if exc.reason == "max_daily_loss" else None
                closed = side == "SELL" and held is not None and fill.quantity == held.quantity
                ledger.check_invariant(conn)
                return {**(_order(conn, order_id) or {}), "closed": closed}, fill, None

        order, fill, day_loss = await self._db(apply)
        if order is None:
            return {"id": order_id, "status": "gone", "reason": "the account was reset"}
        if fill is not None:
            log.info(
                "FILL order %d: %s %d %s at $%s (market $%s of %s), commission %s, realised %s%s",
                order_id, fill.side, fill.quantity, fill.symbol, fill.price, quote.price, quote.price_time,
                _money(fill.commission_cents), _money(fill.realised_cents),
                f" ({fill.reason})" if fill.reason not in ("manual", "signal") else "",
                extra={"order_id": order_id, "fill": fill.to_wire()},
            )  # fmt: skip
        elif order["status"] == "rejected":
            log.warning(
                "REJECTED order %d: %s %s %s: %s", order_id, order["side"], order["quantity"] or "",
                order["symbol"], order["reason"], extra={"order_id": order_id, "reason": order["reason"]},
            )  # fmt: skip
        if day_loss is not None:
            await self._risk_alert(day_loss)
        if fill is not None:
            self._fills += 1
            if self.config.ig.mirror_orders:
                self.spawn(self._mirror(fill), name=f"ig-mirror-{fill.id}")
            await self.bus.publish(
                EventType.TRADE_EXECUTED,
                {**fill.to_wire(), "origin": order["origin"], "signal_id": order["signal_id"]},
            )
            if order.get("closed"):
                await self.bus.publish(EventType.POSITION_CLOSED, {
                    "symbol": fill.symbol, "reason": fill.reason, "quantity": fill.quantity,
                    "price": str(fill.price), "realised_pnl": dollars(fill.realised_cents),
                })  # fmt: skip
            order["fill"] = fill.to_wire()
        return order

    def _apply_order(
        self,
        conn: sqlite3.Connection,
        order: dict[str, Any],
        held: ledger.Position | None,
        quote: Quote,
        marks: Marks,
        day_start: int,
        now: datetime,
    ) -> Fill:
        symbol = order["symbol"]
        plan = self._plan(conn, order, held, quote, marks, day_start)
        common = {"order_id": order["id"], "symbol": symbol, "quantity": plan.quantity, "price": plan.price,
                  "market_price": plan.market_price, "price_time": quote.price_time,
                  "commission": plan.commission_cents, "reason": order["origin"], "now": now}  # fmt: skip
        if plan.side == "SELL":
            return ledger.sell(conn, **common)
        return ledger.buy(conn, stop_loss=self.stop_loss, take_profit=self.take_profit, **common)

    async def _wait_checked(
        self, order: dict[str, Any], reason: str, quote: Quote | None = None
    ) -> dict[str, Any]:
        """A manual order that must wait for a price of the session is first checked against every
        rule at the last price (position limit, exposure, daily loss, cash): one that would be
        refused is refused now, not at the next open. Checked once, as it starts to wait (it has no
        reason yet), not on every check of a waiting order."""
        if order["origin"] == "manual" and order["quantity"] is not None and order["reason"] is None:
            try:
                last = quote or await self._quote(order["symbol"])
            except TradingError:
                last = None  # no price at all: nothing to check against yet
            if last is not None:
                refusal = await self._refusal_at(order, last)
                if refusal is not None:
                    return await self._finish(order["id"], "rejected", refusal)
        return await self._wait(order["id"], reason)

    async def _refusal_at(self, order: dict[str, Any], quote: Quote) -> str | None:
        """Why the rules would refuse ``order`` at ``quote``'s price, or None."""
        marks = await self._marks()
        day = self._session_day().isoformat()

        def check(conn: sqlite3.Connection) -> str | None:
            held = ledger.positions(conn).get(order["symbol"])
            row = conn.execute("SELECT equity_cents FROM day_open WHERE day = ?", (day,)).fetchone()
            day_start = int(row[0]) if row else self._portfolio(conn, marks, 0).equity_cents
            try:
                self._plan(conn, order, held, quote, marks, day_start)
            except Rejected as exc:
                return f"{exc.reason}: {exc.message} (at the last price ${quote.price} of {quote.price_time})"
            return None

        return await self._db(check)

    def _plan(
        self,
        conn: sqlite3.Connection,
        order: dict[str, Any],
        held: ledger.Position | None,
        quote: Quote,
        marks: Marks,
        day_start: int,
    ) -> engine.FillPlan:
        """The engine's fill of ``order`` at ``quote``, or ``Rejected`` naming the rule."""
        return engine.plan_fill(
            symbol=order["symbol"], side=order["side"], quantity=order["quantity"], origin=order["origin"],
            held=held, market_price=quote.price, portfolio=self._portfolio(conn, marks, day_start),
            held_value_cents=_value(held, marks) if held is not None else 0, costs=self.costs,
            config=self.config,
        )  # fmt: skip

    async def _wait(self, order_id: int, reason: str) -> dict[str, Any]:
        return await self._finish(order_id, "pending", reason)

    async def _finish(self, order_id: int, status: str, reason: str) -> dict[str, Any]:
        now = self.clock.now()

        def write(conn: sqlite3.Connection) -> tuple[dict[str, Any], bool]:
            with transaction(conn):
                order = _order(conn, order_id)
                if order is None:
                    return {"id": order_id, "status": "gone", "reason": "the account was reset"}, False
                changed = order["status"] == "pending" and (status, reason) != ("pending", order["reason"])
                if order["status"] == "pending":
                    ledger.set_order(conn, order_id, status, reason, now)
                return _order(conn, order_id) or order, changed

        async with self._book:
            order, changed = await self._db(write)
        if changed:  # once per state, not on every check of a waiting order
            word = "WAITS" if status == "pending" else status.upper()
            shares = order.get("quantity") or ""
            log.info("%s order %d: %s %s %s: %s", word, order_id, order.get("side"), shares,
                     order.get("symbol"), reason, extra={"order_id": order_id})  # fmt: skip
        return order

    async def _work_pending(self) -> None:
        pending = await self._db(
            lambda conn: [
                r[0]
                for r in conn.execute(
                    f"SELECT id FROM orders WHERE status = 'pending' ORDER BY {engine.PENDING_ORDER}"
                )
            ]
        )
        for order_id in pending:
            await self._execute(order_id)

    # -- stops ----------------------------------------------------------------------------

    async def _check_stops(self, only: str | None) -> None:
        """Close positions whose price crossed their stop-loss or take-profit; also send the day's
        risk alert once the daily loss limit is reached."""
        session = self.calendar.open_session(self.clock.now())
        if session is None:
            return
        marks = await self._marks()
        held = await self._db(ledger.positions)
        for symbol, position in held.items():
            quote = self._quotes.get(symbol)
            if (only is not None and symbol != only) or symbol in marks.unpriced or quote is None:
                continue
            if quote.price_time != session.date.isoformat():
                continue  # yesterday's close says nothing about today's stops
            reason = engine.stop_exit(position, quote.price)
            if reason is None:
                continue
            now = self.clock.now()

            def place(
                conn: sqlite3.Connection, symbol: str = symbol, reason: str = reason, now: datetime = now
            ) -> int | None:
                with transaction(conn):
                    current = ledger.positions(conn).get(symbol)
                    if current is None:
                        return None
                    return ledger.new_order(conn, symbol=symbol, side="SELL", quantity=current.quantity,
                                            origin=reason, now=now)  # fmt: skip

            async with self._book:
                order_id = await self._db(place)
                if order_id is not None:
                    level = position.stop_price if reason == "stop_loss" else position.take_profit_price
                    log.info(
                        "EXIT %s: %s %d at $%s crossed $%s (entry $%s): order %d",
                        reason.upper().replace("_", "-"), symbol, position.quantity, quote.price, level,
                        position.entry_price, order_id, extra={"order_id": order_id},
                    )  # fmt: skip
                    await self._fill(order_id, quote, marks)
        await self._check_daily_loss(marks)

    async def _check_daily_loss(self, marks: Marks) -> None:
        day = self._session_day().isoformat()

        def read(conn: sqlite3.Connection) -> int:
            with transaction(conn):
                equity = self._portfolio(conn, marks, 0).equity_cents
                return equity - _day_open(conn, day, equity)

        loss = await self._db(read)
        if loss <= -ledger.cents_of_dollars(self.config.max_daily_loss):
            await self._risk_alert(loss)

    # -- prices and the portfolio ---------------------------------------------------------

    async def _quote(self, symbol: str) -> Quote:
        assert self._market_data is not None
        try:
            answer = await self._market_data.call("get_market_data", {"symbol": symbol, "bars": 0})
            quote = Quote(to_price(answer["price"]), str(answer["price_time"])[:10])
        except TradingError as exc:
            self._last_price_error = f"{symbol}: {exc.message}"
            raise
        except (KeyError, TypeError, ValueError) as exc:
            self._last_price_error = f"{symbol}: malformed answer ({exc})"
            raise DependencyUnavailable(
                f"market_data gave no usable price for {symbol}", service="market_data"
            ) from exc
        self._last_price_error = None
        self._quotes[symbol] = quote
        return quote

    async def _marks(self) -> Marks:
        """The latest price of each open position; one market data cannot price now is valued at
        its last known price, else its entry price, and listed as unpriced."""
        held = await self._db(ledger.positions)
        quotes = await asyncio.gather(*(self._quote(symbol) for symbol in held), return_exceptions=True)
        prices: dict[str, Decimal] = {}
        unpriced = set()
        for (symbol, position), quote in zip(held.items(), quotes, strict=True):
            if isinstance(quote, Quote):
                prices[symbol] = quote.price
                continue
            if not isinstance(quote, TradingError):
                raise quote
            unpriced.add(symbol)
            prices[symbol] = self._quotes[symbol].price if symbol in self._quotes else position.entry_price
        return Marks(prices, frozenset(unpriced))

    def _portfolio(self, conn: sqlite3.Connection, marks: Marks, day_start: int) -> Portfolio:
        acct = ledger.account(conn)
        value = sum(_value(p, marks) for p in ledger.positions(conn).values())
        return Portfolio(acct.cash_cents, value, day_start)

    async def _risk_alert(self, day_loss_cents: int) -> None:
        """One ``risk_alert`` a day when the daily loss limit is reached (remembered across restarts)."""
        day = self._session_day().isoformat()

        def claim(conn: sqlite3.Connection) -> bool:
            with transaction(conn):
                return (
                    conn.execute(
                        "UPDATE day_open SET alerted = 1 WHERE day = ? AND alerted = 0", (day,)
                    ).rowcount
                    == 1
                )

        if not await self._db(claim):
            return
        log.warning(
            "RISK ALERT: the day's loss $%s reached the limit $%s: no new buys today",
            f"{-day_loss_cents / 100:,.2f}", f"{self.config.max_daily_loss:,.2f}",
        )  # fmt: skip
        await self.bus.publish(EventType.RISK_ALERT, {
            "rule": "max_daily_loss", "day": day, "day_pnl": dollars(day_loss_cents),
            "limit": self.config.max_daily_loss,
            "message": f"the day's loss ${-day_loss_cents / 100:,.2f} reached the limit "
                       f"${self.config.max_daily_loss:,.2f}: no new buys today",
        })  # fmt: skip

    # -- RPC ------------------------------------------------------------------------------

    @rpc_method
    async def execute_trade(
        self, symbol: str, action: Literal["BUY", "SELL"], quantity: int, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """A manual order. Filled now while the market is open, else it waits (``status: pending``).
        A rule that refuses it is -32002 with ``data.reason``. The same ``idempotency_key`` twice
        gives the first order's state, not a second order."""
        symbol = self._symbol(symbol)
        if not 1 <= quantity <= MAX_QUANTITY:
            raise InvalidParams(
                f"quantity must be a whole number of shares from 1 to {MAX_QUANTITY:,}", field="quantity"
            )
        if idempotency_key is not None and not 1 <= len(idempotency_key) <= 200:
            raise InvalidParams("idempotency_key must be 1 to 200 characters", field="idempotency_key")
        now = self.clock.now()

        def place(conn: sqlite3.Connection) -> tuple[int, bool]:
            """(the order, whether this call created it)."""
            with transaction(conn):
                if idempotency_key is not None:
                    row = conn.execute(
                        "SELECT id, symbol, side, quantity FROM orders WHERE idempotency_key = ?",
                        (idempotency_key,),
                    ).fetchone()
                    if row is not None:
                        if (row[1], row[2], row[3]) != (symbol, action, quantity):
                            raise Rejected(
                                f"idempotency_key was used for order {row[0]} ({row[2]} {row[3]} {row[1]}), "
                                f"not for {action} {quantity} {symbol}",
                                reason="idempotency_key_reused",
                                order_id=int(row[0]),
                            )
                        return int(row[0]), False
                held = ledger.positions(conn).get(symbol)
                short = action == "SELL" and (held is None or held.quantity < quantity)
                order_id = ledger.new_order(
                    conn, symbol=symbol, side=action, quantity=quantity, origin="manual", now=now,
                    idempotency_key=idempotency_key, status="rejected" if short else "pending",
                    reason=f"quantity_above_position: selling {quantity} {symbol} but holding "
                    f"{held.quantity if held else 0}" if short else None,
                )  # fmt: skip
                return order_id, True

        async with self._book:
            order_id, created = await self._db(place)
        order = await self._db(lambda conn: _order(conn, order_id))
        assert order is not None
        if created:
            log.info(
                "ORDER %d: manual %s %d %s", order_id, action, quantity, symbol, extra={"order_id": order_id}
            )
            if order["status"] == "rejected":
                log.warning("REJECTED order %d: %s", order_id, order["reason"], extra={"order_id": order_id})
        if created and order["status"] == "pending":
            order = await self._execute(order_id)
        if created and order["status"] == "rejected":
            reason, _, message = (order["reason"] or "rejected: ").partition(": ")
            raise Rejected(message, reason=reason, order_id=order_id)
        return order

    @rpc_method(idempotent=True)
    async def get_positions(self) -> list[dict[str, Any]]:
        """Open positions with their market value and unrealised P&L (at the latest price)."""
        marks = await self._marks()
        held = await self._db(ledger.positions)
        return [_position_wire(p, marks) for p in held.values()]

    @rpc_method(idempotent=True)
    async def get_portfolio_status(self) -> dict[str, Any]:
        """Cash, market value, equity, exposure, day and total P&L, and how much of each limit is used."""
        marks = await self._marks()
        day = self._session_day().isoformat()
        daily_limit = ledger.cents_of_dollars(self.config.max_daily_loss)

        def read(conn: sqlite3.Connection) -> dict[str, Any]:
            acct = ledger.account(conn)
            with transaction(conn):
                day_start = _day_open(conn, day, self._portfolio(conn, marks, 0).equity_cents)
            portfolio = self._portfolio(conn, marks, day_start)
            pending = conn.execute("SELECT count(*) FROM orders WHERE status = 'pending'").fetchone()[0]
            return {
                "cash": dollars(acct.cash_cents),
                "market_value": dollars(portfolio.market_value_cents),
                "equity": dollars(portfolio.equity_cents),
                "exposure": round(portfolio.market_value_cents / portfolio.equity_cents, 4)
                if portfolio.equity_cents > 0 else None,
                "day_pnl": dollars(portfolio.day_pnl_cents),
                "total_pnl": dollars(portfolio.equity_cents - acct.starting_cents),
                "realised_pnl": dollars(acct.realised_cents),
                "commissions": dollars(acct.commissions_cents),
                "starting_capital": dollars(acct.starting_cents),
                "positions": len(ledger.positions(conn)),
                "pending_orders": pending,
                "limits": {
                    "max_exposure": self.config.max_exposure,
                    "max_daily_loss": self.config.max_daily_loss,
                    "daily_loss_used": round(max(0, -portfolio.day_pnl_cents) / daily_limit, 4),
                    "max_position_value": self.config.max_position_value,
                    # A BUY signal opens a position at this calibrated probability, with these cases.
                    "buy_confidence": self.config.buy_confidence,
                    "min_cases": self.config.min_cases,
                },
                "reconciled": ledger.reconcile(conn),
            }  # fmt: skip

        return await self._db(read)

    @rpc_method(idempotent=True)
    async def get_trade_history(self, symbol: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Orders newest first with their fills; waiting, rejected, expired and cancelled ones
        with the reason."""
        if symbol is not None:
            symbol = self._symbol(symbol)
        if not 1 <= limit <= 1000:
            raise InvalidParams("limit must be between 1 and 1000", field="limit")

        def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            where, args = ("WHERE o.symbol = ?", (symbol, limit)) if symbol else ("", (limit,))
            rows = conn.execute(
                # An order not (yet) filled shows the quantity it asks for; a signal's BUY is sized
                # when it fills, so until then it has none.
                "SELECT o.id, o.symbol, o.side, o.status, o.reason, o.origin, o.updated_at, "
                "COALESCE(f.quantity, o.quantity), "
                "f.price, f.value_cents, f.commission_cents, f.realised_cents, f.filled_at FROM orders o "
                f"LEFT JOIN fills f ON f.order_id = o.id {where} ORDER BY o.id DESC LIMIT ?",
                args,
            ).fetchall()
            return [
                {"order_id": r[0], "symbol": r[1], "side": r[2], "status": r[3], "reason": r[4],
                 "origin": r[5], "time": r[12] or r[6], "quantity": r[7], "price": r[8],
                 "value": dollars(r[9]) if r[9] is not None else None,
                 "commission": dollars(r[10]) if r[10] is not None else None,
                 "realised_pnl": dollars(r[11]) if r[11] is not None else None}
                for r in rows
            ]  # fmt: skip

        return await self._db(read)

    @rpc_method(idempotent=True)
    async def get_trading_performance(
        self, period: Literal["day", "week", "month", "all"] = "all"
    ) -> dict[str, Any]:
        """Return, realised and unrealised P&L, trade statistics, drawdown, Sharpe, Sortino, exposure,
        per symbol, over the last day, week, month or everything."""
        days = PERIODS[period]
        since = None if days is None else utc_iso(self.clock.now() - timedelta(days=days))
        marks = await self._marks()

        def read(conn: sqlite3.Connection) -> dict[str, Any]:
            cutoff = since or ""
            # A closed trade's P&L is net: less its sell commission and its buys' share of theirs.
            trades = [ClosedTrade(*r) for r in conn.execute(
                "SELECT symbol, realised_cents, realised_cents - commission_cents - entry_commission_cents, "
                "filled_at FROM fills "
                "WHERE side = 'SELL' AND filled_at >= ? ORDER BY id", (cutoff,))]  # fmt: skip
            commissions = conn.execute(
                "SELECT coalesce(sum(commission_cents), 0) FROM fills WHERE filled_at >= ?", (cutoff,)
            ).fetchone()[0]
            equity_rows = conn.execute(
                "SELECT day, equity_cents, market_value_cents FROM equity WHERE taken_at >= ? ORDER BY day",
                (cutoff,),
            ).fetchall()
            # The period's base: the last snapshot before it (else the first in it, or the start).
            before = conn.execute(
                "SELECT equity_cents FROM equity WHERE taken_at < ? ORDER BY day DESC LIMIT 1", (cutoff,)
            ).fetchone()
            acct = ledger.account(conn)
            held = ledger.positions(conn)
            unrealised = sum(_value(p, marks) - p.cost_cents for p in held.values())
            equity_now = acct.cash_cents + sum(_value(p, marks) for p in held.values())
            curve = ([before[0]] if before else []) + [r[1] for r in equity_rows]
            if not equity_rows or equity_rows[-1][0] != self._session_day().isoformat():
                curve.append(equity_now)  # today, when its snapshot is not taken yet
            base = (
                before[0] if before else equity_rows[0][1] if equity_rows and since else acct.starting_cents
            )
            per_symbol: dict[str, Any] = {}
            for symbol in sorted({t.symbol for t in trades} | set(held)):
                mine = [t for t in trades if t.symbol == symbol]
                position = held.get(symbol)
                unrealised_here = _value(position, marks) - position.cost_cents if position else 0
                per_symbol[symbol] = {
                    **trade_statistics(mine),
                    "realised_pnl": dollars(sum(t.realised_cents for t in mine)),
                    "unrealised_pnl": dollars(unrealised_here),
                }
            exposures = [r[2] / r[1] for r in equity_rows if r[1] > 0]
            return {
                "period": period,
                "since": since,
                "total_return": round(equity_now / base - 1, 6) if base > 0 else None,
                "realised_pnl": dollars(sum(t.realised_cents for t in trades)),
                "unrealised_pnl": dollars(unrealised),
                "commissions": dollars(commissions),
                **trade_statistics(trades),
                "max_drawdown": max_drawdown(curve),
                **ratios(curve),
                "average_exposure": round(sum(exposures) / len(exposures), 4) if exposures else None,
                "equity_days": len(equity_rows),
                "per_symbol": per_symbol,
            }

        return await self._db(read)

    @rpc_method
    async def end_of_day_sync(self) -> dict[str, Any]:
        """Record today's equity (cash and positions at the latest prices): the daily snapshot."""
        marks = await self._marks()
        day = self._session_day().isoformat()
        now = self.clock.now()

        def write(conn: sqlite3.Connection) -> dict[str, Any]:
            with transaction(conn):
                portfolio = self._portfolio(conn, marks, 0)
                ledger.record_equity(
                    conn, day, portfolio.equity_cents, portfolio.cash_cents, portfolio.market_value_cents, now
                )
                return {"day": day, "equity": dollars(portfolio.equity_cents),
                        "cash": dollars(portfolio.cash_cents),
                        "market_value": dollars(portfolio.market_value_cents)}  # fmt: skip

        async with self._book:
            return await self._db(write)

    @rpc_method(idempotent=True)
    async def get_equity_curve(self) -> list[dict[str, Any]]:
        """Every daily equity snapshot, oldest first, in cents: ``day``, ``equity_cents``,
        ``cash_cents``, ``market_value_cents``."""
        return await self._db(ledger.equity_curve)

    @rpc_method(idempotent=True)
    async def get_fills(self, after_id: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Fills with an id above ``after_id``, oldest first (at most ``limit``, 1 to 1000): every
        trade, read a page at a time. Money in cents, prices as decimal strings."""
        if not 1 <= limit <= 1000:
            raise InvalidParams("limit must be between 1 and 1000", field="limit")
        if after_id < 0:
            raise InvalidParams("after_id must be 0 or more", field="after_id")
        return await self._db(lambda conn: ledger.fills_after(conn, after_id, limit))

    @rpc_method
    async def reset_account(self, confirm: bool = False) -> dict[str, Any]:
        """Start again with the starting capital: every order, fill, position and snapshot is deleted.
        Needs ``confirm: true``."""
        if confirm is not True:
            raise InvalidParams(
                "reset_account deletes the whole paper history: pass confirm: true", field="confirm"
            )
        now = self.clock.now()

        def reset(conn: sqlite3.Connection) -> dict[str, Any]:
            with transaction(conn):
                resets = int(conn.execute("SELECT resets FROM account").fetchone()[0])
                for table in ("fills", "orders", "positions", "equity", "day_open", "account"):
                    conn.execute(f"DELETE FROM {table}")
                ledger.open_account(conn, ledger.cents_of_dollars(self.config.starting_capital), now)
                conn.execute("UPDATE account SET resets = ?", (resets + 1,))
            return {"cash": dollars(ledger.account(conn).cash_cents), "reset_at": utc_iso(now)}

        async with self._book:
            return await self._db(reset)

    @rpc_method
    async def sync_with_ig_markets(self) -> dict[str, Any]:
        """Compare the paper book with an IG demo account (balance, open positions)."""
        from services.paper_trading.ig import IgNotConfigured, compare_with_ig

        marks = await self._marks()
        book = await self._db(lambda conn: (ledger.account(conn), ledger.positions(conn)))
        try:
            return await asyncio.to_thread(
                compare_with_ig, self.config.ig, self.home, book, marks.prices, self._ig_env, self._ig_session
            )
        except IgNotConfigured as exc:
            raise DependencyUnavailable(str(exc), service="ig_markets") from None

    async def _mirror(self, fill: Fill) -> None:
        """Place a paper fill on the IG demo account too (``ig.mirror_orders``), one at a time in
        fill order over one logged-in session; a failure is logged and counted, the paper fill
        stands."""
        from services.paper_trading.ig import IgNotConfigured, connect, mirror_fill

        def place() -> dict[str, Any]:
            if self._ig_service is None:
                self._ig_service = connect(self.config.ig, self.home, self._ig_env, self._ig_session)
            try:
                return mirror_fill(self._ig_service, self.config.ig, fill.symbol, fill.side, fill.quantity)
            except TradingError:
                self._ig_service = None  # log in afresh next time
                raise

        async with self._mirror_lock:
            try:
                deal = await asyncio.to_thread(place)
            except (IgNotConfigured, TradingError) as exc:
                self.stats.incr("ig.mirror_failed")
                log.error("mirroring %s %d %s on IG failed: %s", fill.side, fill.quantity, fill.symbol, exc)
                return
        self.stats.incr("ig.mirrored")
        log.info("mirrored fill %d on IG: %s", fill.id, deal.get("dealStatus"))

    # -- helpers --------------------------------------------------------------------------

    def _market_open(self) -> bool:
        return self.calendar.open_session(self.clock.now()) is not None

    def _session_day(self) -> date:
        return self.clock.now().astimezone(SYDNEY).date()

    def _symbol(self, symbol: str) -> str:
        return configured_symbol(symbol, self.config.symbols, setting="paper_trading.symbols")

    # -- health ---------------------------------------------------------------------------

    def health_checks(self) -> dict[str, Check]:
        checks = super().health_checks()
        if self.state is ServiceState.RUNNING:
            checks["prices"] = (
                {"status": "degraded", "detail": f"market data: {self._last_price_error}"}
                if self._last_price_error
                else {"status": "ok", "detail": "prices from market_data"}
            )
        return checks

    def health_figures(self) -> dict[str, Any]:
        if self.state is not ServiceState.RUNNING:
            return {}
        return {"fills_since_start": self._fills, "market_open": self._market_open()}


def _order(conn: sqlite3.Connection, order_id: int) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT id, symbol, side, quantity, status, reason, origin, signal_id, created_at, updated_at "
        "FROM orders WHERE id = ?",
        (order_id,),
    ).fetchone()
    keys = (
        "id",
        "symbol",
        "side",
        "quantity",
        "status",
        "reason",
        "origin",
        "signal_id",
        "created_at",
        "updated_at",
    )
    return dict(zip(keys, row, strict=True))


def _value(position: ledger.Position, marks: Marks) -> int:
    """A position's market value in cents: at its latest price, else at its entry price."""
    return ledger.cents_of(marks.prices.get(position.symbol, position.entry_price) * position.quantity)


def _day_open(conn: sqlite3.Connection, day: str, equity_cents: int) -> int:
    """Equity at the day's first valuation (recorded by it): the base of the day's P&L."""
    conn.execute("INSERT OR IGNORE INTO day_open (day, equity_cents) VALUES (?, ?)", (day, equity_cents))
    return int(conn.execute("SELECT equity_cents FROM day_open WHERE day = ?", (day,)).fetchone()[0])


def _money(cents: int) -> str:
    return f"{'-' if cents < 0 else ''}${abs(cents) / 100:,.2f}"


def _log_signal(event: Event, order_id: int | None, ignored: list[str]) -> None:
    """One line per signal consumed: what it said and what it made."""
    data = event.data
    probability = data.get("probability")
    said = f"{data.get('signal')} {data.get('symbol')} " + (
        f"P(right) {probability:.2f} of {data.get('cases')} cases"
        if isinstance(probability, float)
        else "uncalibrated"
    )
    made = f"order {order_id}" if order_id is not None else f"ignored ({', '.join(ignored) or 'repeat'})"
    if data.get("signal") != "HOLD" or order_id is not None:
        log.info("SIGNAL %s: %s", said, made, extra={"signal_id": event.id, "order_id": order_id})


@dataclass(frozen=True, slots=True)
class ReadSignal:
    symbol: str
    action: str  # BUY | SELL | HOLD
    probability: float | None  # calibrated; None: the signal is uncalibrated
    cases: int


def _read_signal(event: Event) -> ReadSignal | None:
    """A trade signal's symbol, action, calibrated probability and cases, or None if it cannot be
    read."""
    data = event.data
    symbol, action = data.get("symbol"), data.get("signal")
    probability, cases = data.get("probability"), data.get("cases", 0)
    if (
        event.type != EventType.TRADE_SIGNAL
        or not isinstance(symbol, str)
        or action not in ("BUY", "SELL", "HOLD")
    ):
        return None
    if probability is not None and (
        isinstance(probability, bool) or not isinstance(probability, int | float) or not 0 <= probability <= 1
    ):
        return None
    if isinstance(cases, bool) or not isinstance(cases, int) or cases < 0:
        return None
    return ReadSignal(symbol, str(action), None if probability is None else float(probability), cases)


def _position_wire(position: ledger.Position, marks: Marks) -> dict[str, Any]:
    price = marks.prices.get(position.symbol, position.entry_price)
    value = _value(position, marks)
    return {
        "symbol": position.symbol,
        "quantity": position.quantity,
        "avg_price": str(position.entry_price),
        "market_price": str(price),
        "market_value": dollars(value),
        "cost": dollars(position.cost_cents),
        "unrealised_pnl": dollars(value - position.cost_cents),
        "stop_price": str(position.stop_price),
        "take_profit_price": str(position.take_profit_price),
        "opened_at": position.opened_at,
        # False: market data could not price it now; valued at its last known or entry price.
        "priced": position.symbol not in marks.unpriced,
    }
