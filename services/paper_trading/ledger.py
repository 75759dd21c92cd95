"""The paper ledger: cash, positions, orders and fills in integer cents, one transaction a change.

Prices are Decimal (kept as text in SQLite); every amount of money is an integer number of cents,
rounded half up once, where a price meets a quantity. The invariant

    starting cash + realised P&L - commissions == cash + cost of open positions

holds to the cent after every change: a buy moves its value from cash to cost and pays its
commission from cash; a sell takes the position's cost share out of cost, adds the proceeds less
commission to cash, and realises proceeds minus that cost share.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from services.base.clock import utc_iso
from services.base.errors import InternalError

PRICE_PLACES = Decimal("0.0001")


def to_price(value: float | str | Decimal) -> Decimal:
    return Decimal(str(value)).quantize(PRICE_PLACES, ROUND_HALF_UP)


def cents_of(amount: Decimal) -> int:
    """Dollars as whole cents, half up."""
    return int((amount * 100).quantize(Decimal(1), ROUND_HALF_UP))


def cents_of_dollars(amount: float) -> int:
    """A configured dollar amount (``max_daily_loss``, ...) as whole cents."""
    return cents_of(Decimal(str(amount)))


def dollars(cents: int) -> float:
    """Cents for the wire (display); the ledger never computes with it."""
    return cents / 100


@dataclass(frozen=True, slots=True)
class Account:
    starting_cents: int
    cash_cents: int
    realised_cents: int
    commissions_cents: int
    opened_at: str


@dataclass(frozen=True, slots=True)
class Position:
    symbol: str
    quantity: int
    cost_cents: int
    commission_cents: int  # the buys' commissions on the shares held
    entry_price: Decimal
    stop_price: Decimal
    take_profit_price: Decimal
    opened_at: str


@dataclass(frozen=True, slots=True)
class Fill:
    id: int
    order_id: int
    symbol: str
    side: str
    quantity: int
    price: Decimal
    value_cents: int
    commission_cents: int
    realised_cents: int
    reason: str
    filled_at: str

    def to_wire(self) -> dict[str, Any]:
        return {
            "fill_id": self.id,
            "order_id": self.order_id,
            "symbol": self.symbol,
            "side": self.side,
            "quantity": self.quantity,
            "price": str(self.price),
            "value": dollars(self.value_cents),
            "commission": dollars(self.commission_cents),
            "realised_pnl": dollars(self.realised_cents),
            "reason": self.reason,
            "filled_at": self.filled_at,
        }


def open_account(conn: sqlite3.Connection, starting_cents: int, now: datetime) -> None:
    """Create the account once (callers hold the transaction)."""
    conn.execute(
        "INSERT OR IGNORE INTO account (id, starting_cents, cash_cents, realised_cents, commissions_cents, "
        "opened_at) VALUES (1, ?, ?, 0, 0, ?)",
        (starting_cents, starting_cents, utc_iso(now)),
    )


def account(conn: sqlite3.Connection) -> Account:
    row = conn.execute(
        "SELECT starting_cents, cash_cents, realised_cents, commissions_cents, opened_at FROM account"
    ).fetchone()
    if row is None:
        raise InternalError("the paper account has not been opened")
    return Account(*row)


def positions(conn: sqlite3.Connection) -> dict[str, Position]:
    rows = conn.execute(
        "SELECT symbol, quantity, cost_cents, commission_cents, entry_price, stop_price, take_profit_price, "
        "opened_at FROM positions ORDER BY symbol"
    ).fetchall()
    return {
        r[0]: Position(r[0], r[1], r[2], r[3], Decimal(r[4]), Decimal(r[5]), Decimal(r[6]), r[7])
        for r in rows
    }


def new_order(
    conn: sqlite3.Connection,
    *,
    symbol: str,
    side: str,
    quantity: int | None,
    origin: str,
    now: datetime,
    status: str = "pending",
    reason: str | None = None,
    signal_id: str | None = None,
    confidence: float | None = None,
    idempotency_key: str | None = None,
) -> int:
    cursor = conn.execute(
        "INSERT INTO orders (symbol, side, quantity, status, reason, origin, signal_id, confidence, "
        "idempotency_key, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (symbol, side, quantity, status, reason, origin, signal_id, confidence, idempotency_key,
         utc_iso(now), utc_iso(now)),
    )  # fmt: skip
    return int(cursor.lastrowid or 0)


def set_order(
    conn: sqlite3.Connection, order_id: int, status: str, reason: str | None, now: datetime
) -> None:
    conn.execute(
        "UPDATE orders SET status = ?, reason = ?, updated_at = ? WHERE id = ?",
        (status, reason, utc_iso(now), order_id),
    )


def buy(
    conn: sqlite3.Connection,
    *,
    order_id: int,
    symbol: str,
    quantity: int,
    price: Decimal,
    market_price: Decimal,
    price_time: str,
    commission: int,
    stop_loss: Decimal,
    take_profit: Decimal,
    reason: str,
    now: datetime,
) -> Fill:
    """Fill a buy (callers hold the transaction and have checked the rules)."""
    value = cents_of(price * quantity)
    held = positions(conn).get(symbol)
    quantity_after = quantity + (held.quantity if held else 0)
    cost_after = value + (held.cost_cents if held else 0)
    commission_after = commission + (held.commission_cents if held else 0)
    entry = to_price(Decimal(cost_after) / 100 / quantity_after)
    conn.execute(
        "INSERT INTO positions (symbol, quantity, cost_cents, commission_cents, entry_price, stop_price, "
        "take_profit_price, opened_at) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (symbol) DO UPDATE SET "
        "quantity = excluded.quantity, cost_cents = excluded.cost_cents, "
        "commission_cents = excluded.commission_cents, entry_price = excluded.entry_price, "
        "stop_price = excluded.stop_price, take_profit_price = excluded.take_profit_price",
        (symbol, quantity_after, cost_after, commission_after, str(entry),
         str(to_price(entry * (1 - stop_loss))), str(to_price(entry * (1 + take_profit))), utc_iso(now)),
    )  # fmt: skip
    conn.execute(
        "UPDATE account SET cash_cents = cash_cents - ?, commissions_cents = commissions_cents + ?",
        (value + commission, commission),
    )
    return _record_fill(conn, order_id, symbol, "BUY", quantity, price, market_price, price_time, value,
                        commission, 0, 0, 0, reason, now)  # fmt: skip


def sell(
    conn: sqlite3.Connection,
    *,
    order_id: int,
    symbol: str,
    quantity: int,
    price: Decimal,
    market_price: Decimal,
    price_time: str,
    commission: int,
    reason: str,
    now: datetime,
) -> Fill:
    """Fill a sell of part or all of a position (callers hold the transaction)."""
    held = positions(conn).get(symbol)
    if held is None or quantity > held.quantity:
        raise InternalError(f"selling {quantity} {symbol} but holding {held.quantity if held else 0}")
    value = cents_of(price * quantity)
    # The share of the position's cost (and of its buys' commissions) this sale closes, to the
    # cent; the last sale takes the rest.
    cost = _share(held.cost_cents, quantity, held.quantity)
    entry_commission = _share(held.commission_cents, quantity, held.quantity)
    realised = value - cost
    if quantity == held.quantity:
        conn.execute("DELETE FROM positions WHERE symbol = ?", (symbol,))
    else:
        conn.execute(
            "UPDATE positions SET quantity = quantity - ?, cost_cents = cost_cents - ?, "
            "commission_cents = commission_cents - ? WHERE symbol = ?",
            (quantity, cost, entry_commission, symbol),
        )
    conn.execute(
        "UPDATE account SET cash_cents = cash_cents + ?, realised_cents = realised_cents + ?, "
        "commissions_cents = commissions_cents + ?",
        (value - commission, realised, commission),
    )
    return _record_fill(conn, order_id, symbol, "SELL", quantity, price, market_price, price_time, value,
                        commission, cost, realised, entry_commission, reason, now)  # fmt: skip


def _share(total: int, part: int, whole: int) -> int:
    """``total`` x part / whole in whole cents, rounded down; all of what is left for the whole."""
    return total if part == whole else total * part // whole


def _record_fill(
    conn: sqlite3.Connection,
    order_id: int,
    symbol: str,
    side: str,
    quantity: int,
    price: Decimal,
    market_price: Decimal,
    price_time: str,
    value: int,
    commission: int,
    cost: int,
    realised: int,
    entry_commission: int,
    reason: str,
    now: datetime,
) -> Fill:
    cursor = conn.execute(
        "INSERT INTO fills (order_id, symbol, side, quantity, price, market_price, price_time, value_cents, "
        "commission_cents, cost_cents, realised_cents, entry_commission_cents, reason, filled_at) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (order_id, symbol, side, quantity, str(price), str(market_price), price_time, value, commission, cost,
         realised, entry_commission, reason, utc_iso(now)),
    )  # fmt: skip
    conn.execute(
        "UPDATE orders SET status = 'filled', quantity = ?, reason = NULL, updated_at = ? WHERE id = ?",
        (quantity, utc_iso(now), order_id),
    )
    return Fill(int(cursor.lastrowid or 0), order_id, symbol, side, quantity, price, value, commission,
                realised, reason, utc_iso(now))  # fmt: skip


def check_invariant(conn: sqlite3.Connection) -> tuple[int, int]:
    """Both sides of the invariant from the account and the open positions; raises if they differ.
    Cheap (a row per position): run after every change."""
    acct = account(conn)
    cost = int(conn.execute("SELECT coalesce(sum(cost_cents), 0) FROM positions").fetchone()[0])
    left = acct.starting_cents + acct.realised_cents - acct.commissions_cents
    right = acct.cash_cents + cost
    if left != right:
        raise InternalError(
            f"ledger does not reconcile: start + realised - commissions = {left}, cash + cost = {right}"
        )
    return left, right


def reconcile(conn: sqlite3.Connection) -> dict[str, int]:
    """``check_invariant``, and the cash and realised P&L recomputed from every fill."""
    left, right = check_invariant(conn)
    acct = account(conn)
    bought, sold_value, commissions, realised = conn.execute(
        "SELECT coalesce(sum(CASE WHEN side = 'BUY' THEN value_cents END), 0), "
        "coalesce(sum(CASE WHEN side = 'SELL' THEN value_cents END), 0), "
        "coalesce(sum(commission_cents), 0), coalesce(sum(realised_cents), 0) FROM fills"
    ).fetchone()
    from_fills_cash = acct.starting_cents - bought + sold_value - commissions
    if from_fills_cash != acct.cash_cents or realised != acct.realised_cents:
        raise InternalError(
            f"ledger does not reconcile with its fills: cash from fills {from_fills_cash}, cash "
            f"{acct.cash_cents}; realised from fills {realised}, account {acct.realised_cents}"
        )
    return {"starting_plus_realised_minus_commissions": left, "cash_plus_cost": right}


def record_equity(
    conn: sqlite3.Connection,
    day: str,
    equity_cents: int,
    cash_cents: int,
    market_value_cents: int,
    now: datetime,
) -> None:
    """The day's equity snapshot (a later one the same day replaces it; callers hold the transaction)."""
    conn.execute(
        "INSERT INTO equity (day, equity_cents, cash_cents, market_value_cents, taken_at) VALUES "
        "(?,?,?,?,?) ON CONFLICT (day) DO UPDATE SET equity_cents = excluded.equity_cents, "
        "cash_cents = excluded.cash_cents, market_value_cents = excluded.market_value_cents, "
        "taken_at = excluded.taken_at",
        (day, equity_cents, cash_cents, market_value_cents, utc_iso(now)),
    )


def equity_curve(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every daily snapshot, oldest first."""
    rows = conn.execute(
        "SELECT day, equity_cents, cash_cents, market_value_cents FROM equity ORDER BY day"
    ).fetchall()
    return [{"day": r[0], "equity_cents": r[1], "cash_cents": r[2], "market_value_cents": r[3]} for r in rows]


FILL_COLUMNS = (
    "id", "order_id", "symbol", "side", "quantity", "price", "market_price", "price_time", "value_cents",
    "commission_cents", "cost_cents", "realised_cents", "entry_commission_cents", "reason", "filled_at",
)  # fmt: skip


def fills_after(conn: sqlite3.Connection, after_id: int, limit: int) -> list[dict[str, Any]]:
    """Fills with an id above ``after_id``, oldest first, at most ``limit``: the book's record
    of every trade, read a page at a time."""
    rows = conn.execute(
        f"SELECT {', '.join(FILL_COLUMNS)} FROM fills WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
    ).fetchall()
    return [dict(zip(FILL_COLUMNS, row, strict=True)) for row in rows]
