"""The back-test's walk through paper trading: signals, the open, stops and snapshots, booked by
the real ledger on prices the clock reveals."""

from __future__ import annotations

from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

import pytest

from services.asx.calendar import AsxCalendar
from services.asx.market_hours import sydney_time
from services.backtest.decisions import Timeline
from services.backtest.walk import Book, Signal, Walk, moments
from services.market_data.bars import make_bars
from services.paper_trading.config import PaperTradingConfig

CALENDAR = AsxCalendar(first=date(2019, 1, 1), last=date(2019, 12, 31))
# Four sessions of made-up CBA bars; 6 March has no bar at all.
DAYS = ["2019-03-04", "2019-03-05", "2019-03-07", "2019-03-08"]
OPENS = [70.00, 71.00, 66.00, 80.00]
CLOSES = [70.50, 72.00, 67.00, 79.00]


def timeline() -> Timeline:
    bars = make_bars(
        DAYS,
        {
            "open": OPENS,
            "high": [c + 1 for c in CLOSES],
            "low": [o - 1 for o in OPENS],
            "close": CLOSES,
            "volume": [1e6] * 4,
        },
    )
    return Timeline.of(bars, CALENDAR)


def walk(**config: Any) -> Walk:
    line = timeline()
    settings = PaperTradingConfig(symbols=("CBA.AX",), **config)
    start = sydney_time(date(2019, 3, 4), time(0, 0))
    return Walk(settings, CALENDAR, lambda _symbol, now: line.latest_price(now), start)


def at(day: str, wall: str) -> datetime:
    hours, minutes = wall.split(":")
    return sydney_time(date.fromisoformat(day), time(int(hours), int(minutes)))


def run(w: Walk, events: list[tuple[str, str, str | None]]) -> Book:
    """(day, HH:MM, signal or "open"/"eod") in order."""
    for day, wall, what in events:
        now = at(day, wall)
        if what == "open":
            w.open(now)
        elif what == "eod":
            w.end_of_day(now)
        else:
            assert what is not None
            w.signal(Signal("CBA.AX", now, what, 0.9, 1000))
    return w.finish()


def test_an_evening_buy_fills_at_the_next_open_and_the_ledger_reconciles() -> None:
    book = run(walk(), [("2019-03-04", "17:00", "BUY"), ("2019-03-05", "10:00", "open")])
    (fill,) = book.fills
    assert (fill["side"], fill["reason"], fill["price_time"]) == ("BUY", "signal", "2019-03-05")
    assert Decimal(fill["market_price"]) == Decimal("71.0000")
    assert Decimal(fill["price"]) == Decimal("71.0355")  # the open plus 5 bps
    assert fill["quantity"] == 70  # $5,000 / $71.0355, whole shares
    assert fill["filled_at"] == "2019-03-04T23:00:00.000000+00:00"  # 10:00 in Sydney
    assert fill["commission_cents"] == 1000 + 497  # $10 + 0.1% of $4,972.49
    assert book.cash_cents == 10_000_000 - fill["value_cents"] - fill["commission_cents"]
    assert len(set(book.reconciled.values())) == 1


def test_an_order_waits_through_a_session_without_a_bar_and_a_stop_fires_at_an_open() -> None:
    book = run(
        walk(),
        [
            ("2019-03-05", "17:00", "BUY"),
            ("2019-03-06", "10:00", "open"),  # no bar on the 6th: the order waits
            ("2019-03-06", "17:30", "eod"),
            ("2019-03-07", "10:00", "open"),  # fills at 66; the stop is 5% under the entry
            ("2019-03-07", "17:30", "eod"),
            ("2019-03-08", "10:00", "open"),  # 80 is above the 10% take-profit
        ],
    )
    buy, sell = book.fills
    assert (buy["price_time"], Decimal(buy["market_price"])) == ("2019-03-07", Decimal(66))
    assert (sell["side"], sell["reason"], Decimal(sell["market_price"])) == (
        "SELL",
        "take_profit",
        Decimal(80),
    )
    assert Decimal(sell["price"]) == Decimal("79.9600")  # less 5 bps
    assert sell["realised_cents"] == sell["value_cents"] - buy["value_cents"]
    assert [row["day"] for row in book.equity] == ["2019-03-06", "2019-03-07"]
    assert book.equity[0]["market_value_cents"] == 0
    assert book.equity[1]["market_value_cents"] == buy["quantity"] * 6700  # at the close of the 7th
    assert book.open_positions == {}


def test_a_stop_loss_sells_at_the_open_that_crosses_it() -> None:
    book = run(
        walk(stop_loss=0.05),
        [("2019-03-04", "17:00", "BUY"), ("2019-03-05", "10:00", "open"), ("2019-03-07", "10:00", "open")],
    )
    _buy, sell = book.fills
    assert (sell["reason"], Decimal(sell["market_price"])) == ("stop_loss", Decimal(66))


def test_a_sell_signal_cancels_a_waiting_buy_and_a_hold_places_nothing() -> None:
    w = walk()
    book = run(
        w, [("2019-03-04", "17:00", "BUY"), ("2019-03-04", "17:00", "SELL"), ("2019-03-05", "10:00", "open")]
    )
    assert book.fills == []
    assert book.ignored == {"cancelled_waiting_buy": 1}
    assert book.pending_orders == 0


def test_with_after_hours_expire_an_order_placed_while_closed_never_fills() -> None:
    book = run(walk(after_hours="expire"), [("2019-03-04", "17:00", "BUY"), ("2019-03-05", "10:00", "open")])
    assert book.fills == []
    assert book.pending_orders == 0


def test_a_buy_below_the_bar_is_ignored() -> None:
    w = walk(buy_confidence=0.95)
    book = run(w, [("2019-03-04", "17:00", "BUY"), ("2019-03-05", "10:00", "open")])
    assert book.fills == []
    assert book.ignored == {"low_probability": 1}


@pytest.mark.parametrize(
    ("wall", "price", "day"),
    [("09:59", 70.50, "2019-03-04"), ("10:00", 71.00, "2019-03-05"), ("16:00", 72.00, "2019-03-05")],
)
def test_the_clock_shows_a_bars_open_from_the_open_and_its_close_from_the_close(
    wall: str, price: float, day: str
) -> None:
    assert timeline().latest_price(at("2019-03-05", wall)) == (price, day)


def test_moments_put_a_round_before_an_open_at_the_same_instant() -> None:
    sessions = [date(2019, 3, 4)]
    opening = at("2019-03-04", "10:00")
    steps = moments(CALENDAR, sessions, [opening, at("2019-03-04", "09:30")], [at("2019-03-04", "17:30")])
    assert [kind for _, kind in steps] == ["round", "round", "open", "eod"]
