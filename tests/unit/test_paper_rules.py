"""The trading rules on their own: sizing, and each refusal naming its rule."""

from __future__ import annotations

from decimal import Decimal

import pytest

from services.base.errors import Rejected
from services.paper_trading.config import PaperTradingConfig
from services.paper_trading.rules import Costs, Portfolio, buy_quantity, check_buy

CONFIG = PaperTradingConfig()
COSTS = Costs(CONFIG)
FRESH = Portfolio(cash_cents=10_000_000, market_value_cents=0, day_start_equity_cents=10_000_000)


def test_sizing_is_five_percent_capped_at_ten_thousand_in_whole_shares() -> None:
    assert buy_quantity(FRESH, Decimal("100.05"), CONFIG) == 49  # $5,000 / $100.05
    rich = Portfolio(50_000_000, 0, 50_000_000)
    assert buy_quantity(rich, Decimal("100"), CONFIG) == 100  # capped at $10,000
    assert buy_quantity(FRESH, Decimal("6000"), CONFIG) == 0


@pytest.mark.parametrize(
    ("portfolio", "quantity", "price", "held", "reason"),
    [
        (Portfolio(9_500_000, 0, 10_000_000), 10, Decimal(10), 0, "max_daily_loss"),
        (FRESH, 0, Decimal(6000), 0, "position_too_small"),
        (FRESH, 101, Decimal(100), 0, "max_position_value"),
        (FRESH, 10, Decimal(100), 950_000, "max_position_value"),
        (Portfolio(50_000, 9_950_000, 10_000_000), 10, Decimal(100), 0, "insufficient_cash"),
        (Portfolio(2_000_000, 8_000_000, 10_000_000), 10, Decimal(100), 0, "max_exposure"),
    ],
)
def test_each_refusal_names_its_rule(
    portfolio: Portfolio, quantity: int, price: Decimal, held: int, reason: str
) -> None:
    with pytest.raises(Rejected) as caught:
        check_buy(portfolio, quantity, price, held, COSTS, CONFIG)
    assert caught.value.reason == reason


def test_an_allowed_buy_costs_value_and_commission() -> None:
    assert check_buy(FRESH, 49, Decimal("100.05"), 0, COSTS, CONFIG) == (490_245, 1_490)
    assert COSTS.fill_price(Decimal(100), "BUY") == Decimal("100.0500")
    assert COSTS.fill_price(Decimal(100), "SELL") == Decimal("99.9500")
