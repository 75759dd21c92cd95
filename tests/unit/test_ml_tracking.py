"""Live tracking: predictions stored once per symbol, model and day, scored when their horizon passes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from services.base.db import Database, migrate
from services.ml_model.schema import MIGRATIONS
from services.ml_model.tracking import ENSEMBLE, PredictionLog, PredictionRow
from tests.ml_fakes import random_walk_bars

NOW = datetime(2026, 11, 20, 8, tzinfo=UTC)


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[PredictionLog]:
    db = Database(tmp_path / "ml_model.db")
    await db.run(lambda conn: migrate(conn, MIGRATIONS))
    yield PredictionLog(db, horizon=5, threshold=0.005)
    db.close()


def row(as_of: str, p_up: float, symbol: str = "CBA.AX", model: str = ENSEMBLE) -> PredictionRow:
    return PredictionRow(symbol, model, as_of, "CBA.AX", None, p_up)


async def test_one_row_per_symbol_model_and_day(log: PredictionLog) -> None:
    await log.record([row("2020-01-06", 0.6)], NOW)
    await log.record([row("2020-01-06", 0.4)], NOW)  # asked again the same day: replaces
    await log.record([row("2020-01-07", 0.7), row("2020-01-07", 0.3, model="logistic")], NOW)
    figures = await log.performance("CBA.AX", window=10)
    assert figures[ENSEMBLE]["predictions"] == 2
    assert figures[ENSEMBLE]["pending"] == 2
    assert figures[ENSEMBLE]["up_share_predicted"] == 0.5  # 0.4 (down) replaced 0.6, then 0.7 (up)
    assert figures["logistic"]["predictions"] == 1
    asked = await log.db.run(
        lambda conn: conn.execute("SELECT asked FROM predictions WHERE as_of = '2020-01-06'").fetchone()[0]
    )
    assert asked == 2


async def test_scored_with_the_close_horizon_sessions_later(log: PredictionLog) -> None:
    bars = random_walk_bars(60, seed=5, start="2020-01-01")
    close = bars["close"]
    days = list(bars.index)
    as_ofs = [days[3], days[20], days[-3]]
    await log.record([row(d, 0.8) for d in as_ofs], NOW)
    scored = await log.score("CBA.AX", bars, NOW)
    assert scored == 2  # the last one has only 2 sessions after it
    stored = await log.db.run(
        lambda conn: dict(conn.execute("SELECT as_of, realised_return FROM predictions").fetchall())
    )
    for day in as_ofs[:2]:
        at = days.index(day)
        assert stored[day] == pytest.approx(close.iloc[at + 5] / close.iloc[at] - 1)
    assert stored[days[-3]] is None


async def test_a_weekend_as_of_is_the_session_before_it(log: PredictionLog) -> None:
    bars = random_walk_bars(30, seed=6, start="2020-01-06")  # Monday 6 January 2020
    friday = "2020-01-10"
    await log.record([row("2020-01-11", 0.9)], NOW)  # Saturday
    assert await log.score("CBA.AX", bars, NOW) == 1
    at = list(bars.index).index(friday)
    realised = await log.db.run(
        lambda conn: conn.execute("SELECT realised_return FROM predictions").fetchone()[0]
    )
    assert realised == pytest.approx(bars["close"].iloc[at + 5] / bars["close"].iloc[at] - 1)


async def test_accuracy_leaves_out_flat_moves(log: PredictionLog) -> None:
    bars = random_walk_bars(80, seed=7, start="2020-01-01")
    close = bars["close"]
    days = list(bars.index)[:60]
    await log.record([row(d, 0.7) for d in days], NOW)  # always "up"
    await log.score("CBA.AX", bars, NOW)
    moves = [close.iloc[i + 5] / close.iloc[i] - 1 for i in range(60)]
    decided = [m for m in moves if abs(m) > 0.005]
    figures = (await log.performance("CBA.AX", window=20))[ENSEMBLE]
    assert figures["flat"] == 60 - len(decided)
    assert figures["all"]["scored"] == len(decided)
    assert figures["all"]["accuracy"] == pytest.approx(sum(m > 0 for m in decided) / len(decided), abs=1e-4)
    assert figures["all"]["brier"] == pytest.approx(
        sum((0.7 - (m > 0)) ** 2 for m in decided) / len(decided), abs=1e-4
    )
    last = decided[-20:]
    assert figures["rolling"]["scored"] == len(last)
    assert figures["rolling"]["accuracy"] == pytest.approx(sum(m > 0 for m in last) / len(last), abs=1e-4)
    # A scored row is final: asking about that day again changes nothing.
    await log.record([row(days[0], 0.1)], NOW)
    again = (await log.performance("CBA.AX", window=20))[ENSEMBLE]
    assert again["all"] == figures["all"]


async def test_unscorable_symbols_are_closed_once(log: PredictionLog) -> None:
    await log.record([row("2020-01-06", 0.6, symbol="ZZZ.AX"), row("2020-01-07", 0.6, symbol="ZZZ.AX")], NOW)
    assert await log.due(date(2026, 11, 20)) == {"ZZZ.AX": "2020-01-06"}
    assert await log.mark_unscorable("ZZZ.AX", "unknown symbol ZZZ.AX", NOW) == 2
    assert await log.due(date(2026, 11, 20)) == {}
    figures = (await log.performance("ZZZ.AX", window=10))[ENSEMBLE]
    assert figures["unscorable"] == 2
    assert figures["pending"] == 0
    assert figures["all"]["scored"] == 0
    assert figures["unscorable_reason"] == "unknown symbol ZZZ.AX"


async def test_due_only_before_today_and_prune(log: PredictionLog) -> None:
    await log.record(
        [row("2026-11-19", 0.6), row("2026-11-20", 0.6), row("2020-01-06", 0.6, symbol="NAB.AX")], NOW
    )
    assert await log.due(date(2026, 11, 20)) == {"CBA.AX": "2026-11-19", "NAB.AX": "2020-01-06"}
    assert await log.prune(date(2025, 1, 1)) == 1
    assert await log.due(date(2026, 11, 20)) == {"CBA.AX": "2026-11-19"}
