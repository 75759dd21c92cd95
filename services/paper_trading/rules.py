"""The trading rules: position size, exposure, daily loss, cash. A refusal names its rule.

All amounts in cents; prices Decimal. ``Portfolio`` is the state a rule looks at: cash, the market
value of the open positions, and equity at the start of the day.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal

from services.base.errors import Rejected
from services.paper_trading.config import PaperTradingConfig
from services.paper_trading.ledger import cents_of_dollars


@dataclass(frozen=True, slots=True)
class Portfolio:
    cash_cents: int
    market_value_cents: int
    day_start_equity_cents: int

    @property
    def equity_cents(self) -> int:
        return self.cash_cents + self.market_value_cents

    @property
    def day_pnl_cents(self) -> int:
        return self.equity_cents - self.day_start_equity_cents


class Costs:
    """Commission and slippage from the config, in exact arithmetic."""

    def __init__(self, config: PaperTradingConfig) -> None:
        self.fixed_cents = cents_of_dollars(config.commission_fixed)
        self.rate = Decimal(str(config.commission_rate))
        self.slippage = Decimal(str(config.slippage_bps)) / Decimal(10_000)

    def fill_price(self, market_price: Decimal, side: str) -> Decimal:
        """A buy pays the slippage, a sell gives it up."""
        factor = 1 + self.slippage if side == "BUY" else 1 - self.slippage
        return (market_price * factor).quantize(Decimal("0.0001"), ROUND_HALF_UP)

    def commission_cents(self, value_cents: int) -> int:
        return self.fixed_cents + int((Decimal(value_cents) * self.rate).quantize(Decimal(1), ROUND_HALF_UP))


def buy_quantity(portfolio: Portfolio, price: Decimal, config: PaperTradingConfig) -> int:
    """Whole shares for a new position: ``position_size`` of the portfolio, at most ``max_position_value``."""
    share = Decimal(portfolio.equity_cents) * Decimal(str(config.position_size))
    budget = min(share, Decimal(cents_of_dollars(config.max_position_value)))
    return int((budget / (price * 100)).to_integral_value(ROUND_FLOOR))


def check_buy(
    portfolio: Portfolio,
    quantity: int,
    price: Decimal,
    held_value_cents: int,
    costs: Costs,
    config: PaperTradingConfig,
) -> tuple[int, int]:
    """(value, commission) in cents of a buy the rules allow, or Rejected naming the rule.
    ``held_value_cents``: the market value already held in the symbol (the position limit is per
    position, not per order)."""
    if portfolio.day_pnl_cents <= -cents_of_dollars(config.max_daily_loss):
        raise Rejected(
            f"the day's loss ${-portfolio.day_pnl_cents / 100:,.2f} has reached the limit "
            f"${config.max_daily_loss:,.2f}: no new buys today",
            reason="max_daily_loss",
        )
    if quantity < 1:
        raise Rejected(
            f"one share at ${price} is more than the position budget "
            f"({config.position_size:.0%} of the portfolio, at most ${config.max_position_value:,.0f})",
            reason="position_too_small",
        )
    value = int((price * quantity * 100).quantize(Decimal(1), ROUND_HALF_UP))
    commission = costs.commission_cents(value)
    if held_value_cents + value > cents_of_dollars(config.max_position_value):
        held = f" with ${held_value_cents / 100:,.2f} already held" if held_value_cents else ""
        raise Rejected(
            f"${value / 100:,.2f}{held} is above the position limit ${config.max_position_value:,.2f}",
            reason="max_position_value",
        )
    if value + commission > portfolio.cash_cents:
        raise Rejected(
            f"${(value + commission) / 100:,.2f} with commission is more than the cash "
            f"${portfolio.cash_cents / 100:,.2f}",
            reason="insufficient_cash",
        )
    equity_after = portfolio.equity_cents - commission
    exposure = (portfolio.market_value_cents + value) / equity_after if equity_after > 0 else 1.0
    if exposure > config.max_exposure:
        raise Rejected(
            f"positions would be {exposure:.1%} of equity, above the {config.max_exposure:.0%} limit",
            reason="max_exposure",
        )
    return value, commission
