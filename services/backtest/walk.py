"""The days walked once through paper trading's rules: signals into orders, orders into fills.

The same engine (``paper_trading.engine``) decides and prices every order, and the same ledger
(``paper_trading.ledger``, on an in-memory database) books it, so cash, costs and P&L are the
service's to the cent. What the service does at each moment of a session, in order of time:

- a prediction round: each new decision (a repeat of one already made is not sent again) is a
  signal; an order it places waits for a price of an open session, or expires
  (``after_hours = "expire"``);
- the open: orders waiting fill at the session's first price, oldest first, then by symbol; then
  every position is checked against its stop-loss and take-profit at that price. Daily bars give
  no price between the open and the close, so one check at the open sees what checks every
  ``check_interval_s`` would; a stop crossed during the session and back by the close is not
  seen, as the live service with these bars would not see it either;
- the end-of-day snapshot (scheduler's ``paper_trading_eod``): equity at the latest prices.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from services.asx.calendar import SYDNEY, AsxCalendar
from services.base.db import migrate
from services.base.errors import Rejected
from services.paper_trading import engine, ledger
from services.paper_trading.config import PaperTradingConfig
from services.paper_trading.rules import Costs, Portfolio
from services.paper_trading.schema import MIGRATIONS


@dataclass(frozen=True, slots=True)
class Signal:
    symbol: str
    at: datetime
    action: str
    probability: float | None
    cases: int


@dataclass(frozen=True, slots=True)
class Book:
    """Paper trading's book after a walk: fills and equity snapshots as the ledger keeps them."""

    fills: list[dict[str, Any]]
    equity: list[dict[str, Any]]
    starting_cents: int
    cash_cents: int
    open_positions: dict[str, int]
    pending_orders: int
    reconciled: dict[str, int]
    ignored: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    risk_alerts: int = 0


# The latest price market data shows for a symbol at a moment, and the date of its bar.
PriceAt = Callable[[str, datetime], tuple[float, str] | None]


@dataclass(slots=True)
class _Order:
    id: int
    symbol: str
    side: str
    quantity: int | None
    origin: str
    created_at: datetime


class Walk:
    """Paper trading's book through time: call ``signal``, ``open`` and ``end_of_day`` in order."""

    def __init__(self, config: PaperTradingConfig, calendar: AsxCalendar, price_at: PriceAt, start: datetime):
        self.config = config
        self.calendar = calendar
        self.price_at = price_at
        self.costs = Costs(config)
        self.stop_loss = Decimal(str(config.stop_loss))
        self.take_profit = Decimal(str(config.take_profit))
        self.conn = sqlite3.connect(":memory:", isolation_level=None)
        migrate(self.conn, MIGRATIONS)
        ledger.open_account(self.conn, ledger.cents_of_dollars(config.starting_capital), start)
        self.pending: list[_Order] = []
        self._held: dict[str, ledger.Position] | None = None
        self.day_open: dict[str, int] = {}
        self.alerted: set[str] = set()
        self.ignored: dict[str, int] = {}
        self.rejected: dict[str, int] = {}

    # -- the moments of a session ------------------------------------------------------------

    def signal(self, signal: Signal) -> None:
        """A trade signal arrives (``_on_signal``)."""
        held = self._positions().get(signal.symbol)
        waiting = {o.side: o for o in self.pending if o.symbol == signal.symbol and o.origin == "signal"}
        outcome = engine.on_signal(
            signal.symbol,
            signal.action,
            signal.probability,
            signal.cases,
            held=held,
            waiting=frozenset(waiting),
            config=self.config,
        )
        if isinstance(outcome, engine.CancelWaitingBuy):
            cancelled = waiting["BUY"]
            self.pending.remove(cancelled)
            ledger.set_order(self.conn, cancelled.id, "cancelled", "cancelled by a SELL signal", signal.at)
        if not isinstance(outcome, engine.NewOrder):
            self._count(self.ignored, outcome.reason)
            return
        order_id = ledger.new_order(
            self.conn,
            symbol=signal.symbol,
            side=outcome.side,
            quantity=outcome.quantity,
            origin="signal",
            now=signal.at,
            confidence=signal.probability,
        )
        self._execute(
            _Order(order_id, signal.symbol, outcome.side, outcome.quantity, "signal", signal.at), signal.at
        )

    def open(self, now: datetime) -> None:
        """A session's open: waiting orders, then stops, then the daily loss check (``_watch``)."""
        for order in sorted(self.pending, key=lambda o: (o.created_at, o.symbol, o.id)):
            self._execute(order, now)
        session = self.calendar.open_session(now)
        assert session is not None
        marks = self._marks(now)
        for symbol, position in self._positions().items():
            quote = self.price_at(symbol, now)
            if quote is None or quote[1] != session.date.isoformat():
                continue  # no price of today's session: nothing to say about its stops
            reason = engine.stop_exit(position, ledger.to_price(quote[0]))
            if reason is not None:
                order_id = ledger.new_order(
                    self.conn, symbol=symbol, side="SELL", quantity=position.quantity, origin=reason, now=now
                )
                self._fill(_Order(order_id, symbol, "SELL", position.quantity, reason, now), quote, now)
                marks = self._marks(now)
        equity = self._portfolio(marks, 0).equity_cents
        loss = equity - self._day_open(now, equity)
        if loss <= -ledger.cents_of_dollars(self.config.max_daily_loss):
            self._alert(now)

    def end_of_day(self, now: datetime) -> None:
        """The daily equity snapshot (``end_of_day_sync``)."""
        portfolio = self._portfolio(self._marks(now), 0)
        day = now.astimezone(SYDNEY).date().isoformat()
        ledger.record_equity(
            self.conn, day, portfolio.equity_cents, portfolio.cash_cents, portfolio.market_value_cents, now
        )

    def finish(self) -> Book:
        """The book at the end, read as the service answers over RPC."""
        acct = ledger.account(self.conn)
        return Book(
            fills=ledger.fills_after(self.conn, 0, 1 << 62),
            equity=ledger.equity_curve(self.conn),
            starting_cents=acct.starting_cents,
            cash_cents=acct.cash_cents,
            open_positions={s: p.quantity for s, p in ledger.positions(self.conn).items()},
            pending_orders=len(self.pending),
            reconciled=ledger.reconcile(self.conn),
            ignored=self.ignored,
            rejected=self.rejected,
            risk_alerts=len(self.alerted),
        )

    # -- orders ---------------------------------------------------------------------------

    def _execute(self, order: _Order, now: datetime) -> None:
        """Fill, expire or leave waiting (``_execute``)."""
        if order not in self.pending:
            self.pending.append(order)
        session = self.calendar.open_session(now)
        if session is None:
            if self.config.after_hours == "expire":
                self._finish(order, "expired", "the market is closed (after_hours = expire)", now)
            return
        quote = self.price_at(order.symbol, now)
        if quote is None or quote[1] != session.date.isoformat():
            return  # no price of today's session yet: waits
        self._fill(order, quote, now)

    def _fill(self, order: _Order, quote: tuple[float, str], now: datetime) -> None:
        if order in self.pending:
            self.pending.remove(order)
        marks = self._marks(now)
        held = self._positions().get(order.symbol)
        day_start = self._day_open(now, self._portfolio(marks, 0).equity_cents)
        portfolio = self._portfolio(marks, day_start)
        try:
            plan = engine.plan_fill(
                symbol=order.symbol,
                side=order.side,
                quantity=order.quantity,
                origin=order.origin,
                held=held,
                market_price=ledger.to_price(quote[0]),
                portfolio=portfolio,
                held_value_cents=self._value(held, marks) if held is not None else 0,
                costs=self.costs,
                config=self.config,
            )
        except Rejected as exc:
            ledger.set_order(self.conn, order.id, "rejected", f"{exc.reason}: {exc.message}", now)
            self._count(self.rejected, exc.reason)
            if exc.reason == "max_daily_loss":
                self._alert(now)
            return
        common: dict[str, Any] = {
            "order_id": order.id,
            "symbol": order.symbol,
            "quantity": plan.quantity,
            "price": plan.price,
            "market_price": plan.market_price,
            "price_time": quote[1],
            "commission": plan.commission_cents,
            "reason": order.origin,
            "now": now,
        }
        if plan.side == "SELL":
            ledger.sell(self.conn, **common)
        else:
            ledger.buy(self.conn, stop_loss=self.stop_loss, take_profit=self.take_profit, **common)
        self._held = None
        ledger.check_invariant(self.conn)

    def _finish(self, order: _Order, status: str, reason: str, now: datetime) -> None:
        self.pending.remove(order)
        ledger.set_order(self.conn, order.id, status, reason, now)

    # -- prices and the portfolio ---------------------------------------------------------

    def _positions(self) -> dict[str, ledger.Position]:
        """The ledger's open positions, read again only after a fill changed them."""
        if self._held is None:
            self._held = ledger.positions(self.conn)
        return self._held

    def _marks(self, now: datetime) -> dict[str, Decimal]:
        marks = {}
        for symbol, position in self._positions().items():
            quote = self.price_at(symbol, now)
            marks[symbol] = ledger.to_price(quote[0]) if quote is not None else position.entry_price
        return marks

    def _value(self, position: ledger.Position, marks: Mapping[str, Decimal]) -> int:
        return ledger.cents_of(marks.get(position.symbol, position.entry_price) * position.quantity)

    def _portfolio(self, marks: Mapping[str, Decimal], day_start: int) -> Portfolio:
        acct = ledger.account(self.conn)
        value = sum(self._value(p, marks) for p in self._positions().values())
        return Portfolio(acct.cash_cents, value, day_start)

    def _day_open(self, now: datetime, equity_cents: int) -> int:
        """Equity at the day's first valuation: the base of the day's P&L."""
        return self.day_open.setdefault(now.astimezone(SYDNEY).date().isoformat(), equity_cents)

    def _alert(self, now: datetime) -> None:
        day = now.astimezone(SYDNEY).date().isoformat()
        self.alerted.add(day)

    @staticmethod
    def _count(counts: dict[str, int], reason: str) -> None:
        counts[reason] = counts.get(reason, 0) + 1


def moments(
    calendar: AsxCalendar,
    sessions: Sequence[date],
    rounds: Iterable[datetime],
    end_of_day: Iterable[datetime],
) -> list[tuple[datetime, str]]:
    """Every moment of the walk in order of time: ``round``, ``open`` and ``eod``; at the same
    instant a round comes first (its orders wait for that open)."""
    opens = [(session.open, "open") for day in sessions if (session := calendar.session(day))]
    order = {"round": 0, "open": 1, "eod": 2}
    timed = [*((t, "round") for t in rounds), *opens, *((t, "eod") for t in end_of_day)]
    return sorted(timed, key=lambda item: (item[0], order[item[1]]))
