"""Paper trading's decisions as pure functions: what a signal orders, how an order fills, when a
stop closes a position. No database, no clock, no I/O: the service applies the outcomes to its
ledger, and the back-test (``services/backtest``) walks history through the very same functions.

The order of work at a session's open, which both follow:

1. orders waiting for the open fill first, oldest first, and those placed at the same moment in
   the order of their symbols (``PENDING_ORDER``);
2. then every open position is checked against its stop-loss and take-profit, in symbol order;
   a position whose price crossed one is sold at once at that price.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from services.base.errors import Rejected
from services.paper_trading.config import PaperTradingConfig
from services.paper_trading.ledger import Position, cents_of
from services.paper_trading.rules import Costs, Portfolio, buy_quantity, check_buy

Side = Literal["BUY", "SELL"]
# The SQL order in which orders waiting for a price are worked: deterministic, so the stack run
# through history and the back-test fill the same orders in the same order.
PENDING_ORDER = "created_at, symbol, id"


@dataclass(frozen=True, slots=True)
class NewOrder:
    """A signal places an order; ``quantity`` None: sized when it fills (a BUY)."""

    side: Side
    quantity: int | None


@dataclass(frozen=True, slots=True)
class Ignored:
    """A signal that places no order, and why (``low_probability``, ``already_open``, ...)."""

    reason: str


@dataclass(frozen=True, slots=True)
class CancelWaitingBuy:
    """A SELL signal while a BUY of the symbol still waits: the BUY is cancelled, nothing sold."""

    reason: str = "cancelled_waiting_buy"


SignalOutcome = NewOrder | Ignored | CancelWaitingBuy


def on_signal(
    symbol: str,
    action: str,
    probability: float | None,
    cases: int,
    *,
    held: Position | None,
    waiting: frozenset[str],
    config: PaperTradingConfig,
) -> SignalOutcome:
    """What a trade signal does, given the position held in ``symbol`` and the sides of the
    signal orders of ``symbol`` still waiting. Waiting orders count: a second BUY is not a second
    position, and a SELL cancels a waiting BUY. A BUY opens only with a calibrated ``probability``
    of at least ``buy_confidence`` that at least ``min_cases`` past cases stand behind."""
    if symbol not in config.symbols:
        return Ignored("unknown_symbol")
    if action == "BUY":
        if probability is None:
            return Ignored("uncalibrated")
        if probability < config.buy_confidence:
            return Ignored("low_probability")
        if cases < config.min_cases:
            return Ignored("few_cases")
        if held is not None or "BUY" in waiting:
            return Ignored("already_open")
        return NewOrder("BUY", None)
    if action == "SELL":
        if "BUY" in waiting:
            return CancelWaitingBuy()
        if held is None or "SELL" in waiting:
            return Ignored("nothing_open")
        return NewOrder("SELL", held.quantity)
    return Ignored("hold")


@dataclass(frozen=True, slots=True)
class FillPlan:
    """An order the rules allow, priced: what the ledger records."""

    side: Side
    quantity: int
    price: Decimal  # slippage included
    market_price: Decimal
    commission_cents: int


def plan_fill(
    *,
    symbol: str,
    side: str,
    quantity: int | None,
    origin: str,
    held: Position | None,
    market_price: Decimal,
    portfolio: Portfolio,
    held_value_cents: int,
    costs: Costs,
    config: PaperTradingConfig,
) -> FillPlan:
    """The fill of an order at ``market_price``, or ``Rejected`` naming the rule that refuses it.

    ``portfolio``: cash, positions at their latest prices and the day's opening equity;
    ``held_value_cents``: the market value already held in ``symbol``."""
    if side == "SELL":
        price = costs.fill_price(market_price, "SELL")
        if held is None:
            raise Rejected(f"no open {symbol} position to sell", reason="no_position")
        if quantity and quantity > held.quantity:
            raise Rejected(
                f"selling {quantity} {symbol} but holding {held.quantity}", reason="quantity_above_position"
            )
        sold = min(quantity or held.quantity, held.quantity)
        commission = costs.commission_cents(cents_of(price * sold))
        return FillPlan("SELL", sold, price, market_price, commission)
    price = costs.fill_price(market_price, "BUY")
    if held is not None and origin == "signal":
        raise Rejected(f"a {symbol} position is already open", reason="position_open")
    bought = quantity or buy_quantity(portfolio, price, config)
    _value_cents, commission = check_buy(portfolio, bought, price, held_value_cents, costs, config)
    return FillPlan("BUY", bought, price, market_price, commission)


def stop_exit(position: Position, price: Decimal) -> Literal["stop_loss", "take_profit"] | None:
    """Whether ``price`` closes ``position``: at or below its stop, or at or above its take-profit."""
    if price <= position.stop_price:
        return "stop_loss"
    if price >= position.take_profit_price:
        return "take_profit"
    return None
