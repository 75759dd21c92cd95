"""The ledger reconciles to the cent after any sequence of buys and sells (property test)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from services.base.db import migrate, transaction
from services.paper_trading.ledger import (
    account,
    buy,
    cents_of,
    commission_cents,
    new_order,
    open_account,
    positions,
    reconcile,
    sell,
    to_price,
)
from services.paper_trading.schema import MIGRATIONS

NOW = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)
SYMBOLS = ("CBA.AX", "WBC.AX", "ANZ.AX")
RATE = Decimal("0.001")


def fresh() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn, MIGRATIONS)
    with transaction(conn):
        open_account(conn, 10_000_000, NOW)
    return conn


def trade(conn: sqlite3.Connection, side: str, symbol: str, quantity: int, price: Decimal) -> None:
    with transaction(conn):
        order = new_order(conn, symbol=symbol, side=side, quantity=quantity, origin="manual", now=NOW)
        commission = commission_cents(cents_of(price * quantity), 1000, RATE)
        common = dict(order_id=order, symbol=symbol, quantity=quantity, price=price, market_price=price,
                      price_time="2026-11-19", commission=commission, reason="manual", now=NOW)  # fmt: skip
        if side == "BUY":
            buy(conn, stop_loss=Decimal("0.05"), take_profit=Decimal("0.10"), **common)
        else:
            sell(conn, **common)


steps = st.lists(
    st.tuples(
        st.sampled_from(("BUY", "SELL")),
        st.sampled_from(SYMBOLS),
        st.integers(min_value=1, max_value=500),
        st.decimals(min_value=Decimal("0.005"), max_value=Decimal("250"), places=4),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(steps)
def test_any_sequence_reconciles_to_the_cent(sequence: list[tuple[str, str, int, Decimal]]) -> None:
    conn = fresh()
    for side, symbol, quantity, price in sequence:
        held = positions(conn).get(symbol)
        if side == "SELL":
            if held is None:
                continue
            quantity = min(quantity, held.quantity)
        trade(conn, side, symbol, quantity, to_price(price))
        reconcile(conn)  # raises if either side of the invariant differs by a cent
    acct = account(conn)
    cost = sum(p.cost_cents for p in positions(conn).values())
    assert acct.starting_cents + acct.realised_cents - acct.commissions_cents == acct.cash_cents + cost


def test_a_round_trip_by_hand() -> None:
    conn = fresh()
    trade(conn, "BUY", "CBA.AX", 100, Decimal("100.00"))  # 10,000.00 + 10.00 + 10.00 commission
    acct = account(conn)
    assert acct.cash_cents == 10_000_000 - 1_000_000 - 2_000
    assert positions(conn)["CBA.AX"].stop_price == Decimal("95.0000")
    assert positions(conn)["CBA.AX"].take_profit_price == Decimal("110.0000")
    trade(conn, "SELL", "CBA.AX", 40, Decimal("110.00"))  # 4,400.00, cost 4,000.00, commission 14.40
    trade(conn, "SELL", "CBA.AX", 60, Decimal("90.00"))  # 5,400.00, cost 6,000.00, commission 15.40
    acct = account(conn)
    assert acct.realised_cents == 40_000 - 60_000
    assert acct.commissions_cents == 2_000 + 1_440 + 1_540
    assert acct.cash_cents == 10_000_000 - 1_002_000 + 440_000 - 1_440 + 540_000 - 1_540
    assert positions(conn) == {}
    reconcile(conn)
