"""The ledger reconciles to the cent after any sequence of buys and sells, and splits a position's
cost exactly as a reference model does (property tests)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from services.base.db import migrate, transaction
from services.paper_trading.config import PaperTradingConfig
from services.paper_trading.ledger import (
    account,
    buy,
    cents_of,
    new_order,
    open_account,
    positions,
    reconcile,
    sell,
    to_price,
)
from services.paper_trading.rules import Costs
from services.paper_trading.schema import MIGRATIONS

NOW = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)
LATER = datetime(2026, 11, 21, 0, 0, tzinfo=UTC)
SYMBOLS = ("CBA.AX", "WBC.AX", "ANZ.AX")
COSTS = Costs(PaperTradingConfig())


def fresh() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn, MIGRATIONS)
    with transaction(conn):
        open_account(conn, 10_000_000, NOW)
    return conn


def trade(
    conn: sqlite3.Connection, side: str, symbol: str, quantity: int, price: Decimal, now: datetime = NOW
):
    with transaction(conn):
        order = new_order(conn, symbol=symbol, side=side, quantity=quantity, origin="manual", now=now)
        commission = COSTS.commission_cents(cents_of(price * quantity))
        common = dict(order_id=order, symbol=symbol, quantity=quantity, price=price, market_price=price,
                      price_time="2026-11-19", commission=commission, reason="manual", now=now)  # fmt: skip
        if side == "BUY":
            return buy(conn, stop_loss=Decimal("0.05"), take_profit=Decimal("0.10"), **common)
        return sell(conn, **common)


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
def test_any_sequence_reconciles_and_matches_the_reference_model(sequence: list) -> None:
    conn = fresh()
    # The reference: per symbol, shares, cost and buy commissions; a sale of q of Q shares takes
    # floor(cost x q / Q) (all of it when q = Q); realised = proceeds - that share.
    model: dict[str, list[int]] = {}
    realised = 0
    for side, symbol, quantity, raw_price in sequence:
        price = to_price(raw_price)
        held = model.get(symbol)
        if side == "SELL":
            if held is None:
                continue
            quantity = min(quantity, held[0])
        fill = trade(conn, side, symbol, quantity, price)
        value = cents_of(price * quantity)
        if side == "BUY":
            shares, cost, commissions = held or [0, 0, 0]
            model[symbol] = [shares + quantity, cost + value, commissions + fill.commission_cents]
        else:
            shares, cost, commissions = held
            share = cost if quantity == shares else cost * quantity // shares
            entry = commissions if quantity == shares else commissions * quantity // shares
            realised += value - share
            assert fill.realised_cents == value - share
            if quantity == shares:
                del model[symbol]
            else:
                model[symbol] = [shares - quantity, cost - share, commissions - entry]
        reconcile(conn)  # raises if either side of the invariant or the fills differ by a cent
        book = positions(conn)
        assert {s: [p.quantity, p.cost_cents, p.commission_cents] for s, p in book.items()} == model
    assert account(conn).realised_cents == realised


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


def test_an_uneven_split_and_averaging_up() -> None:
    conn = fresh()
    trade(conn, "BUY", "WBC.AX", 3, Decimal("10.01"))  # cost 30.03
    trade(conn, "BUY", "WBC.AX", 4, Decimal("11.00"), LATER)  # cost 44.00; 7 shares, 74.03
    held = positions(conn)["WBC.AX"]
    assert (held.quantity, held.cost_cents) == (7, 7_403)
    assert held.entry_price == Decimal("10.5757")  # 74.03 / 7, half up
    assert held.stop_price == Decimal("10.0469")  # from the average
    assert held.opened_at.startswith("2026-11-20T00:00:00")  # opened with the first buy, not the second
    sold = trade(conn, "SELL", "WBC.AX", 2, Decimal("12.00"))
    assert sold.realised_cents == 2_400 - 7_403 * 2 // 7  # 24.00 - 21.15
    assert positions(conn)["WBC.AX"].cost_cents == 7_403 - 2_115
    reconcile(conn)
