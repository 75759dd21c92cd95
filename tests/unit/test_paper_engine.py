"""Paper trading's engine on its own: what a signal orders, how an order fills, when a stop fires."""

from __future__ import annotations

from decimal import Decimal

import pytest

from services.base.errors import Rejected
from services.paper_trading import engine
from services.paper_trading.config import PaperTradingConfig
from services.paper_trading.ledger import Position
from services.paper_trading.rules import Costs, Portfolio

CONFIG = PaperTradingConfig()
COSTS = Costs(CONFIG)
FRESH = Portfolio(cash_cents=10_000_000, market_value_cents=0, day_start_equity_cents=10_000_000)
HELD = Position("CBA.AX", 50, 500_000, 1500, Decimal(100), Decimal(95), Decimal(110), "2019-01-02")


def signal(
    action: str,
    probability: float | None = 0.9,
    cases: int = 1000,
    *,
    held: Position | None = None,
    waiting: str = "",
) -> object:
    sides = frozenset(waiting.split()) if waiting else frozenset()
    return engine.on_signal("CBA.AX", action, probability, cases, held=held, waiting=sides, config=CONFIG)


def test_a_probable_buy_with_nothing_open_places_an_order_sized_at_the_fill() -> None:
    assert signal("BUY") == engine.NewOrder("BUY", None)
    assert signal("BUY", CONFIG.buy_confidence, CONFIG.min_cases) == engine.NewOrder("BUY", None)


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [
        (signal("BUY", 0.59), "low_probability"),
        (signal("BUY", None), "uncalibrated"),
        (signal("BUY", 0.9, CONFIG.min_cases - 1), "few_cases"),
        (signal("BUY", held=HELD), "already_open"),
        (signal("BUY", waiting="BUY"), "already_open"),
        (signal("SELL"), "nothing_open"),
        (signal("SELL", held=HELD, waiting="SELL"), "nothing_open"),
        (signal("HOLD", held=HELD), "hold"),
    ],
)
def test_signals_that_place_nothing_say_why(outcome: object, reason: str) -> None:
    assert outcome == engine.Ignored(reason)


def test_a_signal_for_a_symbol_not_traded_is_ignored() -> None:
    outcome = engine.on_signal("BHP.AX", "BUY", 0.9, 1000, held=None, waiting=frozenset(), config=CONFIG)
    assert outcome == engine.Ignored("unknown_symbol")


def test_a_sell_closes_the_whole_position_or_cancels_a_waiting_buy() -> None:
    assert signal("SELL", held=HELD) == engine.NewOrder("SELL", 50)
    assert signal("SELL", waiting="BUY") == engine.CancelWaitingBuy()


def test_a_buy_fills_at_the_price_plus_slippage_sized_and_charged_by_the_rules() -> None:
    plan = engine.plan_fill(
        symbol="CBA.AX",
        side="BUY",
        quantity=None,
        origin="signal",
        held=None,
        market_price=Decimal("100.0000"),
        portfolio=FRESH,
        held_value_cents=0,
        costs=COSTS,
        config=CONFIG,
    )
    assert plan.price == Decimal("100.0500")  # 5 bps
    assert plan.quantity == 49  # $5,000 (5% of $100,000) / $100.05
    assert plan.commission_cents == 1000 + 490  # $10 + 0.1% of $4,902.45


def test_a_sell_fills_at_the_price_less_slippage_for_at_most_what_is_held() -> None:
    plan = engine.plan_fill(
        symbol="CBA.AX",
        side="SELL",
        quantity=50,
        origin="stop_loss",
        held=HELD,
        market_price=Decimal("94.0000"),
        portfolio=FRESH,
        held_value_cents=470_000,
        costs=COSTS,
        config=CONFIG,
    )
    assert (plan.side, plan.quantity, plan.price, plan.market_price) == (
        "SELL",
        50,
        Decimal("93.9530"),
        Decimal(94),
    )


@pytest.mark.parametrize(
    ("side", "quantity", "held", "reason"),
    [
        ("SELL", 10, None, "no_position"),
        ("SELL", 51, HELD, "quantity_above_position"),
        ("BUY", None, HELD, "position_open"),
    ],
)
def test_orders_the_rules_refuse_name_the_rule(
    side: str, quantity: int | None, held: Position | None, reason: str
) -> None:
    with pytest.raises(Rejected) as caught:
        engine.plan_fill(
            symbol="CBA.AX",
            side=side,
            quantity=quantity,
            origin="signal",
            held=held,
            market_price=Decimal(100),
            portfolio=FRESH,
            held_value_cents=0,
            costs=COSTS,
            config=CONFIG,
        )
    assert caught.value.data["reason"] == reason


def test_a_buy_refused_by_the_trading_rules_names_the_rule() -> None:
    losing = Portfolio(cash_cents=9_400_000, market_value_cents=0, day_start_equity_cents=10_000_000)
    with pytest.raises(Rejected) as caught:
        engine.plan_fill(
            symbol="CBA.AX",
            side="BUY",
            quantity=None,
            origin="signal",
            held=None,
            market_price=Decimal(100),
            portfolio=losing,
            held_value_cents=0,
            costs=COSTS,
            config=CONFIG,
        )
    assert caught.value.data["reason"] == "max_daily_loss"


@pytest.mark.parametrize(
    ("price", "exit"),
    [
        ("95.0000", "stop_loss"),
        ("94.9999", "stop_loss"),
        ("95.0001", None),
        ("109.9999", None),
        ("110.0000", "take_profit"),
    ],
)
def test_a_stop_fires_at_or_beyond_its_level(price: str, exit: str | None) -> None:
    assert engine.stop_exit(HELD, Decimal(price)) == exit
