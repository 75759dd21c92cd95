"""Market data analysis: TA-Lib indicators against textbook definitions, volume analysis, data quality,
market context, the SQLite price store and the ASX calendar."""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from services.asx.calendar import SYDNEY, AsxCalendar
from services.base.clock import utc_iso
from services.base.db import Database, migrate
from services.market_data.bars import complete, make_bars
from services.market_data.context import NotEnoughHistory, market_context
from services.market_data.csv_files import read_price_csv
from services.market_data.indicators import technical_analysis, volume_analysis
from services.market_data.quality import PENALTIES, assess_quality
from services.market_data.schema import MIGRATIONS
from services.market_data.store import PriceStore, SeriesState

PRICES = Path(__file__).resolve().parents[3] / "shared" / "data" / "prices"
ANALYSIS_BARS = 400  # what the service analyses (MarketDataConfig.analysis_bars)
EXACT = 1e-9  # the reference is seeded exactly as TA-Lib is
DECAYED = 1e-6  # the seeds differ, but the difference has long decayed


def price_file(name: str) -> pd.DataFrame:
    path = PRICES / name
    if not path.is_file():
        pytest.skip(f"shared price file {path} is not present")
    return read_price_csv(path)


@pytest.fixture(scope="module")
def calendar() -> AsxCalendar:
    return AsxCalendar()


@pytest.fixture(scope="module")
def cba() -> pd.DataFrame:
    return complete(price_file("CBA.AX.csv"))


# -- reference indicators, from the textbook definitions ------------------------------------------


def ref_sma(x: Sequence[float], n: int) -> float:
    return sum(x[-n:]) / n


def ref_ema(x: Sequence[float], n: int) -> list[float]:
    """EMA from bar n-1 on: seeded with the mean of the first n values, then alpha = 2 / (n + 1)."""
    alpha = 2.0 / (n + 1)
    out = [sum(x[:n]) / n]
    for v in x[n:]:
        out.append(alpha * v + (1.0 - alpha) * out[-1])
    return out


def ref_macd(x: Sequence[float], *, fast_from_bar_14: bool = False) -> tuple[list[float], ...]:
    """MACD from bar 25 on; signal and histogram from bar 33 on.

    Textbook: EMA 12 seeded with the mean of bars 0..11. ``fast_from_bar_14``: seeded at bar 25 with
    the mean of bars 14..25, as TA-Lib's MACD does so that both EMAs start on the same bar.
    """
    slow = ref_ema(x, 26)
    fast = ref_ema(x[26 - 12 :], 12) if fast_from_bar_14 else ref_ema(x, 12)[26 - 12 :]
    macd = [f - s for f, s in zip(fast, slow, strict=True)]
    signal = ref_ema(macd, 9)
    histogram = [m - s for m, s in zip(macd[9 - 1 :], signal, strict=True)]
    return macd, signal, histogram


def ref_rsi(x: Sequence[float], n: int = 14) -> list[float]:
    """Wilder's RSI from bar n on: averages seeded with the simple mean of the first n gains and losses."""
    gains = [max(b - a, 0.0) for a, b in itertools.pairwise(x)]
    losses = [max(a - b, 0.0) for a, b in itertools.pairwise(x)]
    gain, loss = sum(gains[:n]) / n, sum(losses[:n]) / n
    out = [100.0 - 100.0 / (1.0 + gain / loss) if loss else 100.0]
    for up, down in zip(gains[n:], losses[n:], strict=True):
        gain = (gain * (n - 1) + up) / n
        loss = (loss * (n - 1) + down) / n
        out.append(100.0 - 100.0 / (1.0 + gain / loss) if loss else 100.0)
    return out


def ref_bollinger(x: Sequence[float], n: int = 20, k: float = 2.0) -> tuple[float, float, float]:
    """Upper, middle, lower: the SMA plus and minus k population standard deviations."""
    window = x[-n:]
    middle = sum(window) / n
    deviation = math.sqrt(sum((v - middle) ** 2 for v in window) / n)
    return middle + k * deviation, middle, middle - k * deviation


def ref_atr(high: Sequence[float], low: Sequence[float], close: Sequence[float], n: int = 14) -> float:
    """Wilder's ATR: true ranges from the 2nd bar, seeded with the mean of the first n of them."""
    true_range = [
        max(high[i] - low[i], abs(high[i] - close[i - 1]), abs(low[i] - close[i - 1]))
        for i in range(1, len(close))
    ]
    atr = sum(true_range[:n]) / n
    for tr in true_range[n:]:
        atr = (atr * (n - 1) + tr) / n
    return atr


def columns(bars: pd.DataFrame) -> tuple[list[float], list[float], list[float]]:
    return bars["high"].tolist(), bars["low"].tolist(), bars["close"].tolist()


def closes_only(close: Sequence[float]) -> pd.DataFrame:
    """Bars from closes alone, on made-up consecutive keys; high and low 1% around the close."""
    c = np.asarray(close, dtype=float)
    keys = [(date(2020, 1, 1) + timedelta(days=i)).isoformat() for i in range(len(c))]
    return make_bars(keys, {"open": c, "high": c * 1.01, "low": c * 0.99, "close": c, "volume": c * 0 + 1e6})


# -- technical_analysis against the reference, on CBA ---------------------------------------------


def test_rsi_matches_wilder_definition_on_cba(cba: pd.DataFrame) -> None:
    bars = cba.iloc[-ANALYSIS_BARS:]
    _, _, close = columns(bars)
    result = technical_analysis(bars)
    expected = ref_rsi(close)[-1]
    assert result["rsi"]["value"] == pytest.approx(expected, rel=EXACT)
    assert result["rsi"]["period"] == 14
    zone = "overbought" if expected >= 70 else "oversold" if expected <= 30 else "neutral"
    assert result["rsi"]["zone"] == zone


def test_moving_averages_match_definitions_on_cba(cba: pd.DataFrame) -> None:
    bars = cba.iloc[-ANALYSIS_BARS:]
    _, _, close = columns(bars)
    averages = technical_analysis(bars)["moving_averages"]
    for n in (20, 50, 200):
        assert averages[f"sma_{n}"] == pytest.approx(ref_sma(close, n), rel=EXACT)
        assert averages[f"price_vs_sma_{n}"] == pytest.approx(close[-1] / ref_sma(close, n) - 1.0, abs=EXACT)
    for n in (12, 26):
        assert averages[f"ema_{n}"] == pytest.approx(ref_ema(close, n)[-1], rel=EXACT)


def test_macd_matches_ema_difference_on_cba(cba: pd.DataFrame) -> None:
    bars = cba.iloc[-ANALYSIS_BARS:]
    _, _, close = columns(bars)
    macd = technical_analysis(bars)["macd"]
    ref_line, ref_signal, ref_hist = ref_macd(close)
    # TA-Lib seeds MACD's fast EMA differently (see the next test); over 375 bars the difference has
    # decayed by (11/13)**375. The histogram is a small difference, so compare it on MACD's scale.
    assert macd["macd"] == pytest.approx(ref_line[-1], rel=DECAYED)
    assert macd["signal"] == pytest.approx(ref_signal[-1], rel=DECAYED)
    assert macd["histogram"] == pytest.approx(ref_hist[-1], abs=DECAYED * abs(ref_line[-1]))
    assert macd["histogram"] == pytest.approx(macd["macd"] - macd["signal"], abs=1e-12 * close[-1])
    assert macd["momentum"] == ("bullish" if ref_hist[-1] > 0 else "bearish")


def test_macd_fast_ema_seed_on_a_short_series(cba: pd.DataFrame) -> None:
    _, _, close = columns(cba.iloc[-40:])
    macd = technical_analysis(cba.iloc[-40:])["macd"]
    ta_line, ta_signal, ta_hist = ref_macd(close, fast_from_bar_14=True)
    assert macd["macd"] == pytest.approx(ta_line[-1], rel=EXACT)
    assert macd["signal"] == pytest.approx(ta_signal[-1], rel=EXACT)
    assert macd["histogram"] == pytest.approx(ta_hist[-1], rel=1e-8)
    # After only 15 bars the textbook seed still shows: this is why the 400-bar test is looser.
    assert abs(macd["macd"] - ref_macd(close)[0][-1]) > 1e-3 * abs(macd["macd"])


def test_bollinger_bands_use_population_deviation_on_cba(cba: pd.DataFrame) -> None:
    bars = cba.iloc[-ANALYSIS_BARS:]
    _, _, close = columns(bars)
    bands = technical_analysis(bars)["bollinger"]
    upper, middle, lower = ref_bollinger(close)
    assert bands["upper"] == pytest.approx(upper, rel=EXACT)
    assert bands["middle"] == pytest.approx(middle, rel=EXACT)
    assert bands["lower"] == pytest.approx(lower, rel=EXACT)
    assert bands["percent_b"] == pytest.approx((close[-1] - lower) / (upper - lower), rel=1e-8)
    assert bands["bandwidth"] == pytest.approx((upper - lower) / middle, rel=1e-8)
    # The sample deviation (ddof=1) would give bands wider by sqrt(20/19).
    sample = float(np.std(close[-20:], ddof=1))
    assert bands["upper"] - bands["middle"] != pytest.approx(2 * sample, rel=1e-4)


def test_atr_matches_wilder_definition_on_cba(cba: pd.DataFrame) -> None:
    bars = cba.iloc[-ANALYSIS_BARS:]
    high, low, close = columns(bars)
    atr = technical_analysis(bars)["atr"]
    expected = ref_atr(high, low, close)
    assert atr["value"] == pytest.approx(expected, rel=EXACT)
    assert atr["percent_of_price"] == pytest.approx(expected / close[-1], rel=EXACT)


def test_trend_label_follows_price_and_averages_on_cba(cba: pd.DataFrame) -> None:
    bars = cba.iloc[-ANALYSIS_BARS:]
    _, _, close = columns(bars)
    result = technical_analysis(bars)
    price, sma50, sma200 = close[-1], ref_sma(close, 50), ref_sma(close, 200)
    trend = "up" if price > sma50 > sma200 else "down" if price < sma50 < sma200 else "sideways"
    assert result["trend"] == trend
    assert result["price"] == price
    assert result["as_of"] == bars.index[-1]
    assert result["bars_used"] == ANALYSIS_BARS
    assert result["warnings"] == []


def test_last_400_bars_give_the_same_recursive_indicators_as_the_full_history(cba: pd.DataFrame) -> None:
    assert len(cba) > 5000
    full = technical_analysis(cba)
    recent = technical_analysis(cba.iloc[-ANALYSIS_BARS:])
    macd = full["macd"]["macd"]  # the histogram is a small difference: compare on MACD's scale
    assert recent["as_of"] == full["as_of"]
    assert recent["rsi"]["value"] == pytest.approx(full["rsi"]["value"], rel=1e-8)
    assert recent["atr"]["value"] == pytest.approx(full["atr"]["value"], rel=1e-8)
    for n in (12, 26):
        name = f"ema_{n}"
        assert recent["moving_averages"][name] == pytest.approx(full["moving_averages"][name], rel=1e-8)
    for name in ("macd", "signal", "histogram"):
        assert recent["macd"][name] == pytest.approx(full["macd"][name], abs=1e-8 * abs(macd))


# -- technical_analysis labels on crafted series --------------------------------------------------


def from_steps(steps: Sequence[float], start: float = 100.0) -> list[float]:
    return [start, *(start + s for s in np.cumsum(steps).tolist())]


def test_rsi_zone_thresholds_are_inclusive() -> None:
    # Seed window only: average gain 7/14 against average loss 3/14 is exactly RSI 70.
    overbought = technical_analysis(closes_only(from_steps([7.0, -3.0] + [0.0] * 12)))["rsi"]
    assert overbought["value"] == 70.0
    assert overbought["zone"] == "overbought"
    oversold = technical_analysis(closes_only(from_steps([3.0, -7.0] + [0.0] * 12)))["rsi"]
    assert oversold["value"] == 30.0
    assert oversold["zone"] == "oversold"
    neutral = technical_analysis(closes_only(from_steps([6.9, -3.0] + [0.0] * 12)))["rsi"]
    assert neutral["value"] == pytest.approx(100 * 6.9 / 9.9, rel=EXACT)
    assert neutral["zone"] == "neutral"


def test_rsi_zone_on_longer_crafted_series() -> None:
    for steps, zone in (
        ([3.0, -1.0] * 40, "overbought"),
        ([-3.0, 1.0] * 40, "oversold"),
        ([1.0, -1.0] * 40, "neutral"),
    ):
        close = from_steps(steps)
        rsi = technical_analysis(closes_only(close))["rsi"]
        assert rsi["value"] == pytest.approx(ref_rsi(close)[-1], rel=EXACT)
        assert rsi["zone"] == zone


def test_macd_crossover_bullish_when_histogram_turns_positive_on_last_bar() -> None:
    # An accelerating fall keeps the histogram negative; a jump on the last bar turns it positive.
    close = [200.0 - 0.02 * i * i for i in range(80)]
    close.append(close[-1] + 15.0)
    _, _, hist = ref_macd(close)
    assert hist[-2] < 0 < hist[-1]
    macd = technical_analysis(closes_only(close))["macd"]
    assert macd["crossover"] == "bullish"
    assert macd["momentum"] == "bullish"
    # One bar earlier there is no crossover yet.
    before = technical_analysis(closes_only(close[:-1]))["macd"]
    assert before["crossover"] is None
    assert before["momentum"] == "bearish"


def test_macd_crossover_bearish_when_histogram_turns_negative_on_last_bar() -> None:
    close = [50.0 + 0.02 * i * i for i in range(80)]
    close.append(close[-1] - 15.0)
    _, _, hist = ref_macd(close)
    assert hist[-2] > 0 > hist[-1]
    macd = technical_analysis(closes_only(close))["macd"]
    assert macd["crossover"] == "bearish"
    assert macd["momentum"] == "bearish"


def test_bollinger_position_above_upper_and_below_lower_on_a_jump() -> None:
    calm = [100.0 + (1.0 if i % 2 else -1.0) for i in range(40)]
    for last, position in (
        (110.0, "above_upper"),
        (90.0, "below_lower"),
        (100.5, "upper_half"),
        (99.5, "lower_half"),
    ):
        close = [*calm, last]
        bands = technical_analysis(closes_only(close))["bollinger"]
        upper, _, lower = ref_bollinger(close)
        assert bands["percent_b"] == pytest.approx((last - lower) / (upper - lower), rel=1e-8)
        assert bands["position"] == position


def test_too_few_bars_give_none_and_warnings_not_nan() -> None:
    result = technical_analysis(closes_only([100.0 + math.sin(i) for i in range(60)]))
    averages = result["moving_averages"]
    assert averages["sma_200"] is None
    assert averages["price_vs_sma_200"] is None
    assert averages["sma_50"] is not None
    assert result["trend"] is None
    assert result["warnings"] == ["SMA 200 needs 200 bars"]

    short = technical_analysis(closes_only([100.0, 101.0, 99.0, 102.0, 100.5]))
    assert short["rsi"] == {"value": None, "period": 14, "zone": None}
    assert set(short["macd"].values()) == {None}
    assert set(short["bollinger"].values()) == {None}
    assert short["atr"] == {"value": None, "period": 14, "percent_of_price": None}
    assert [w for w in short["warnings"] if "SMA 200" in w] == ["SMA 200 needs 200 bars"]
    assert len(short["warnings"]) == 3

    def floats(node: Any) -> list[float]:
        if isinstance(node, dict):
            return [f for v in node.values() for f in floats(v)]
        return [node] if isinstance(node, float) else []

    assert not any(math.isnan(f) for f in floats(short) + floats(result))


def test_sma_200_is_there_from_exactly_200_bars() -> None:
    close = [100.0 + math.sin(i / 7) for i in range(200)]
    result = technical_analysis(closes_only(close))
    assert result["moving_averages"]["sma_200"] == pytest.approx(ref_sma(close, 200), rel=EXACT)
    assert result["warnings"] == []
    assert technical_analysis(closes_only(close[1:]))["warnings"] == ["SMA 200 needs 200 bars"]


def test_technical_analysis_needs_two_bars() -> None:
    with pytest.raises(ValueError, match="at least 2 bars"):
        technical_analysis(closes_only([100.0]))


# -- volume_analysis ------------------------------------------------------------------------------


def volumes(values: Sequence[float]) -> pd.DataFrame:
    keys = [(date(2021, 1, 1) + timedelta(days=i)).isoformat() for i in range(len(values))]
    return make_bars(keys, {"volume": values})


def test_volume_ratio_is_latest_against_mean_of_the_twenty_before() -> None:
    history = [1000.0 + 10 * i for i in range(30)]
    result = volume_analysis(volumes([*history, 2600.0]), 2.0)
    average = sum(history[-20:]) / 20
    assert result["available"] is True
    assert result["latest"] == 2600.0
    assert result["average_20"] == pytest.approx(average, rel=EXACT)
    assert result["ratio_to_average"] == pytest.approx(2600.0 / average, rel=EXACT)
    assert result["unusual_threshold"] == 2.0


def test_volume_unusual_from_the_threshold_on() -> None:
    base = [1000.0] * 20
    assert volume_analysis(volumes([*base, 2000.0]), 2.0)["unusual"] is True
    assert volume_analysis(volumes([*base, 1999.0]), 2.0)["unusual"] is False
    assert volume_analysis(volumes([*base, 3000.0]), 3.5)["unusual"] is False


def test_volume_trend_rising_falling_flat() -> None:
    # Last 5 against last 20 (both include the latest): 200 / 125 = 1.6, 50 / 87.5, 1.0.
    rising = volume_analysis(volumes([100.0] * 16 + [200.0] * 5), 2.0)
    assert rising["average_5_vs_20"] == pytest.approx(1.6, rel=EXACT)
    assert rising["trend"] == "rising"
    falling = volume_analysis(volumes([100.0] * 16 + [50.0] * 5), 2.0)
    assert falling["average_5_vs_20"] == pytest.approx(50.0 / 87.5, rel=EXACT)
    assert falling["trend"] == "falling"
    assert volume_analysis(volumes([100.0] * 21), 2.0)["trend"] == "flat"


def test_volume_ignores_missing_volumes() -> None:
    values = [1000.0] * 20 + [np.nan, 3000.0, np.nan]
    result = volume_analysis(volumes(values), 2.0)
    assert result["latest"] == 3000.0
    assert result["ratio_to_average"] == pytest.approx(3.0, rel=EXACT)


def test_index_with_zero_volume_has_no_volume_analysis() -> None:
    result = volume_analysis(volumes([0.0] * 40), 2.0)
    assert result["available"] is False
    assert "21" in result["reason"]
    assert result["latest"] == 0.0
    too_short = volume_analysis(volumes([1000.0] * 20), 2.0)
    assert too_short["available"] is False


# -- assess_quality -------------------------------------------------------------------------------

WINDOW = 60
SPIKE = 0.15
FIRST, LAST = date(2024, 1, 2), date(2024, 6, 28)  # a Tuesday and a Friday


def keys_between(calendar: AsxCalendar, first: date, last: date) -> list[str]:
    return [day.isoformat() for day in calendar.sessions_between(first, last)]


def clean_bars(keys: Sequence[str]) -> pd.DataFrame:
    i = np.arange(len(keys), dtype=float)
    close = 100.0 + 3.0 * np.sin(i / 6.0)
    open_ = close * (1.0 + 0.003 * np.cos(i))
    return make_bars(
        list(keys),
        {
            "open": open_,
            "high": np.maximum(open_, close) + 0.4,
            "low": np.minimum(open_, close) - 0.4,
            "close": close,
            "adj_close": close,
            "volume": 1e6 + 1e4 * i,
        },
    )


def after_close(calendar: AsxCalendar, day: date) -> datetime:
    session = calendar.session(day)
    assert session is not None
    return session.close + timedelta(hours=1)


def check(
    bars: pd.DataFrame, calendar: AsxCalendar, *, is_index: bool = False, now: datetime | None = None
) -> dict[str, Any]:
    return assess_quality(
        bars,
        calendar=calendar,
        now=now or after_close(calendar, LAST),
        is_index=is_index,
        window_sessions=WINDOW,
        spike_threshold=SPIKE,
    )


def by_kind(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    kinds = [issue["kind"] for issue in report["issues"]]
    assert len(kinds) == len(set(kinds)), "one issue per kind"
    return {issue["kind"]: issue for issue in report["issues"]}


def expected_score(report: dict[str, Any]) -> int:
    penalty = sum(
        min(PENALTIES[i["kind"]][1], PENALTIES[i["kind"]][0] * i["count"]) for i in report["issues"]
    )
    return round(max(0.0, 100.0 - penalty))


@pytest.fixture(scope="module")
def sessions(calendar: AsxCalendar) -> list[str]:
    return keys_between(calendar, FIRST, LAST)


def test_shared_anz_file_bad_ticks_and_empty_sunday_row(calendar: AsxCalendar) -> None:
    anz = price_file("ANZ.AX.csv")
    anz = anz.loc[anz.index <= "2000-12-29"]
    report = assess_quality(
        anz,
        calendar=calendar,
        now=datetime(2000, 12, 29, 8, 0, tzinfo=UTC),
        is_index=False,
        window_sessions=260,
        spike_threshold=0.15,
    )
    issues = by_kind(report)
    assert report["expected_last_session"] == "2000-12-29"
    assert report["newest_bar"] == "2000-12-29"
    assert report["sessions_behind"] == 0
    assert "stale" not in issues
    assert "missing_sessions" not in issues
    assert issues["empty_bar"]["bars"] == ["2000-11-12"]
    assert date(2000, 11, 12).weekday() == 6  # a Sunday
    assert "2000-11-12" in issues["non_session_bar"]["bars"]
    spike = issues["spike"]
    assert spike["bars"] == ["2000-01-26", "2000-06-12"]
    assert spike["count"] == 2
    assert "2000-01-26 +28%" in spike["detail"]
    assert "2000-06-12 +23%" in spike["detail"]
    assert report["score"] == expected_score(report)
    assert report["score"] < 100


def test_clean_data_scores_100(calendar: AsxCalendar, sessions: list[str]) -> None:
    report = check(clean_bars(sessions), calendar)
    assert report["score"] == 100
    assert report["issues"] == []
    assert report["window"] == {"first": sessions[-WINDOW], "last": LAST.isoformat()}
    assert report["bars_checked"] == WINDOW
    assert report["sessions_behind"] == 0


def test_empty_frame_scores_0_with_no_data(calendar: AsxCalendar) -> None:
    report = check(clean_bars([]), calendar)
    assert report["score"] == 0
    assert [issue["kind"] for issue in report["issues"]] == ["no_data"]
    assert report["expected_last_session"] == LAST.isoformat()
    assert report["newest_bar"] is None


@pytest.mark.parametrize("behind", [1, 3])
def test_stale_counts_sessions_behind_and_names_the_last_session(
    calendar: AsxCalendar, sessions: list[str], behind: int
) -> None:
    report = check(clean_bars(sessions[:-behind]), calendar)
    stale = by_kind(report)["stale"]
    assert stale["count"] == behind
    assert sessions[-behind - 1] in stale["detail"]
    assert f"{behind} session(s) behind the last session {LAST.isoformat()}" in stale["detail"]
    assert report["sessions_behind"] == behind
    assert report["newest_bar"] == sessions[-behind - 1]
    assert "missing_sessions" not in by_kind(report)  # sessions after the newest bar are staleness only
    assert report["score"] == 100 - 10 * behind


def test_bars_without_a_close_do_not_count_as_newest(calendar: AsxCalendar, sessions: list[str]) -> None:
    bars = clean_bars(sessions)
    bars.loc[sessions[-1], ["high", "low", "close", "adj_close", "volume"]] = np.nan  # only the open known
    report = check(bars, calendar)
    assert report["newest_bar"] == sessions[-2]
    assert by_kind(report)["stale"]["count"] == 1


def test_missing_sessions_named(calendar: AsxCalendar, sessions: list[str]) -> None:
    gone = [sessions[-10], sessions[-25]]
    report = check(clean_bars([key for key in sessions if key not in gone]), calendar)
    missing = by_kind(report)["missing_sessions"]
    assert missing["count"] == 2
    assert missing["bars"] == sorted(gone)
    assert report["score"] == 96


def test_missing_sessions_only_within_the_window(calendar: AsxCalendar, sessions: list[str]) -> None:
    gone = sessions[-WINDOW - 5]  # before the window
    report = check(clean_bars([key for key in sessions if key != gone]), calendar)
    assert report["issues"] == []


def test_non_session_and_empty_bars(calendar: AsxCalendar, sessions: list[str]) -> None:
    saturday = "2024-06-22"
    bars = pd.concat([clean_bars(sessions), clean_bars([saturday])]).sort_index()
    empty_session = sessions[-5]
    bars.loc[empty_session] = np.nan
    issues = by_kind(check(bars, calendar))
    assert issues["non_session_bar"]["bars"] == [saturday]
    assert issues["empty_bar"]["bars"] == [empty_session]
    assert issues["missing_sessions"]["bars"] == [empty_session]


def test_invalid_bars(calendar: AsxCalendar, sessions: list[str]) -> None:
    bars = clean_bars(sessions)
    high_below_low, close_above_high, zero_low, negative_volume = (
        sessions[-30],
        sessions[-20],
        sessions[-12],
        sessions[-5],
    )
    bars.loc[high_below_low, ["high", "low"]] = bars.loc[high_below_low, ["low", "high"]].to_numpy()
    bars.loc[close_above_high, "close"] = bars.loc[close_above_high, "high"] + 0.01
    bars.loc[zero_low, "low"] = 0.0
    bars.loc[negative_volume, "volume"] = -1.0
    report = check(bars, calendar)
    invalid = by_kind(report)["invalid_bar"]
    assert invalid["bars"] == [high_below_low, close_above_high, zero_low, negative_volume]
    assert report["score"] == 100 - 40  # 4 bars x 10 points, the cap


def test_invalid_bar_penalty_is_capped(calendar: AsxCalendar, sessions: list[str]) -> None:
    bars = clean_bars(sessions)
    bad = sessions[-40:-34]
    bars.loc[bad, "high"] = bars.loc[bad, "low"] - 1.0
    report = check(bars, calendar)
    assert by_kind(report)["invalid_bar"]["count"] == 6
    assert report["score"] == 100 - PENALTIES["invalid_bar"][1]


def test_high_equal_to_close_is_not_invalid(calendar: AsxCalendar, sessions: list[str]) -> None:
    bars = clean_bars(sessions)
    bars.loc[sessions[-3], "high"] = bars.loc[sessions[-3], ["open", "close"]].max()
    assert check(bars, calendar)["issues"] == []


def test_zero_volume_flat_bar_except_for_an_index(calendar: AsxCalendar, sessions: list[str]) -> None:
    bars = clean_bars(sessions)
    flat = sessions[-7]
    price = bars.loc[sessions[-8], "close"]
    bars.loc[flat, ["open", "high", "low", "close", "volume"]] = [price, price, price, price, 0.0]
    report = check(bars, calendar)
    assert by_kind(report)["zero_volume_flat_bar"]["bars"] == [flat]
    assert report["score"] == 98
    assert check(bars, calendar, is_index=True)["issues"] == []
    # A flat bar with volume is not an issue.
    bars.loc[flat, "volume"] = 500.0
    assert check(bars, calendar)["issues"] == []


def with_close(bars: pd.DataFrame, key: str, close: float) -> pd.DataFrame:
    bars = bars.copy()
    bars.loc[key, ["open", "high", "low", "close", "adj_close"]] = [close, close, close, close, close]
    return bars


@pytest.mark.parametrize("move", [0.2, -0.2])
def test_spike_reversed_next_day(calendar: AsxCalendar, sessions: list[str], move: float) -> None:
    bars = clean_bars(sessions)
    key = sessions[-15]
    bars = with_close(bars, key, bars.loc[sessions[-16], "close"] * (1 + move))
    report = check(bars, calendar)
    spike = by_kind(report)["spike"]
    assert spike["bars"] == [key]
    assert f"{key} {move:+.0%}" in spike["detail"]
    assert report["score"] == 90


def test_genuine_move_that_holds_is_not_a_spike(calendar: AsxCalendar, sessions: list[str]) -> None:
    bars = clean_bars(sessions)
    later = bars.index >= sessions[-15]
    for name in ("open", "high", "low", "close", "adj_close"):
        bars.loc[later, name] *= 1.2
    assert check(bars, calendar)["issues"] == []


def test_move_below_threshold_or_only_half_reversed_is_not_a_spike(
    calendar: AsxCalendar, sessions: list[str]
) -> None:
    bars = clean_bars(sessions)
    before = bars.loc[sessions[-16], "close"]
    small = with_close(bars, sessions[-15], before * 1.10)
    assert check(small, calendar)["issues"] == []
    # +20%, then back only to +12%: not within half of the jump.
    held = with_close(with_close(bars, sessions[-15], before * 1.2), sessions[-14], before * 1.12)
    assert "spike" not in by_kind(check(held, calendar))


def test_score_never_goes_below_zero(calendar: AsxCalendar, sessions: list[str]) -> None:
    keep = sessions[:-8]  # 8 sessions behind: 80 points, capped at 50
    keep = [key for i, key in enumerate(keep) if not (len(keep) - 40 <= i < len(keep) - 20)]  # 20 missing
    bars = clean_bars(keep)
    bad = keep[-10:-4]
    bars.loc[bad, "high"] = bars.loc[bad, "low"] - 1.0  # 6 invalid bars: 60 points, capped at 40
    report = check(bars, calendar)
    issues = by_kind(report)
    assert issues["stale"]["count"] == 8
    assert issues["missing_sessions"]["count"] == 20
    assert issues["invalid_bar"]["count"] == 6
    assert len(issues["missing_sessions"]["bars"]) == 10  # shown bars are limited; the count is not
    assert report["score"] == 0
    assert expected_score(report) == 0


def test_bar_of_the_session_in_progress_is_not_missing(calendar: AsxCalendar, sessions: list[str]) -> None:
    today = calendar.session(LAST)
    assert today is not None
    report = check(clean_bars(sessions), calendar, now=today.open + timedelta(hours=1))
    assert report["expected_last_session"] == sessions[-2]
    assert report["issues"] == []
    assert report["score"] == 100


# -- market_context -------------------------------------------------------------------------------

THRESHOLDS = {"trend_return_threshold": 0.02, "low_volatility": 0.12, "high_volatility": 0.25}


def context_of(close: Sequence[float], **thresholds: float) -> dict[str, Any]:
    bars = closes_only(close)
    return market_context(list(bars.index), bars["close"].to_numpy(), **{**THRESHOLDS, **thresholds})


def path(log_returns: Sequence[float], start: float = 5000.0) -> list[float]:
    return (start * np.exp(np.concatenate([[0.0], np.cumsum(log_returns)]))).tolist()


def wiggle(n: int, drift: float) -> list[float]:
    return [drift + 0.004 * math.sin(i) for i in range(n)]


def test_context_bull_on_a_steady_uptrend() -> None:
    context = context_of(path(wiggle(260, 0.002)))
    assert context["sma_50"] > context["sma_200"]
    assert context["return_20d"] > 0
    assert context["regime"] == "bull"


def test_context_bear_on_a_downtrend() -> None:
    context = context_of(path(wiggle(260, -0.002)))
    assert context["sma_50"] < context["sma_200"]
    assert context["regime"] == "bear"


def test_context_sideways_when_structure_and_momentum_disagree() -> None:
    pullback = context_of(path(wiggle(240, 0.002) + wiggle(20, -0.003)))
    assert pullback["sma_50"] > pullback["sma_200"]
    assert pullback["return_20d"] < -0.02
    assert pullback["regime"] == "sideways"
    bounce = context_of(path(wiggle(240, -0.002) + wiggle(20, 0.003)))
    assert bounce["sma_50"] < bounce["sma_200"]
    assert bounce["return_20d"] > 0.02
    assert bounce["regime"] == "sideways"


def test_context_return_threshold_is_inclusive() -> None:
    close = path(wiggle(240, 0.002) + wiggle(20, -0.003))
    fall = -context_of(close)["return_20d"]
    assert context_of(close, trend_return_threshold=fall)["regime"] == "bull"
    assert context_of(close, trend_return_threshold=fall * 0.999)["regime"] == "sideways"


def alternating(volatility: float) -> list[float]:
    """Log returns +a, -a whose sample deviation, annualised, is ``volatility``."""
    a = volatility / math.sqrt(252 * 20 / 19)
    return [a if i % 2 else -a for i in range(20)]


@pytest.mark.parametrize(("volatility", "regime"), [(0.06, "low"), (0.18, "normal"), (0.40, "high")])
def test_context_volatility_regime(volatility: float, regime: str) -> None:
    context = context_of(path(wiggle(240, 0.001) + alternating(volatility)))
    assert context["realised_volatility_20d"] == pytest.approx(volatility, rel=1e-9)
    assert context["volatility_regime"] == regime


def test_context_volatility_thresholds_are_exclusive() -> None:
    close = path(wiggle(240, 0.001) + alternating(0.18))
    v = context_of(close)["realised_volatility_20d"]
    assert context_of(close, low_volatility=v, high_volatility=1.0)["volatility_regime"] == "normal"
    assert context_of(close, low_volatility=v * 1.001, high_volatility=1.0)["volatility_regime"] == "low"
    assert context_of(close, low_volatility=0.01, high_volatility=v)["volatility_regime"] == "normal"
    assert context_of(close, low_volatility=0.01, high_volatility=v * 0.999)["volatility_regime"] == "high"


def assert_context_numbers(context: dict[str, Any], close: np.ndarray) -> None:
    assert context["close"] == close[-1]
    assert context["sma_50"] == pytest.approx(float(np.mean(close[-50:])), rel=EXACT)
    assert context["sma_200"] == pytest.approx(float(np.mean(close[-200:])), rel=EXACT)
    assert context["sma_50_vs_200"] == pytest.approx(context["sma_50"] / context["sma_200"] - 1.0, abs=EXACT)
    assert context["return_20d"] == pytest.approx(close[-1] / close[-21] - 1.0, rel=EXACT)
    volatility = float(np.std(np.diff(np.log(close[-21:])), ddof=1) * math.sqrt(252))
    assert context["realised_volatility_20d"] == pytest.approx(volatility, rel=EXACT)


def test_context_numbers_match_numpy() -> None:
    rng = np.random.default_rng(7)
    close = np.asarray(path(rng.normal(0.0003, 0.01, 300).tolist()))
    context = context_of(close.tolist())
    assert_context_numbers(context, close)
    assert context["as_of"] == closes_only(close).index[-1]
    assert context["thresholds"] == {
        "trend_return": 0.02,
        "low_volatility": 0.12,
        "high_volatility": 0.25,
    }


def test_context_needs_201_bars() -> None:
    close = path(wiggle(200, 0.001))  # 201 closes
    assert context_of(close)["regime"] == "bull"
    with pytest.raises(NotEnoughHistory, match="201"):
        context_of(close[1:])
    assert issubclass(NotEnoughHistory, ValueError)


def test_context_on_the_shared_index_file() -> None:
    bars = complete(price_file("^AXJO.csv")).iloc[-ANALYSIS_BARS:]
    assert bars.index[-1] == "2019-10-01"
    close = bars["close"].to_numpy(dtype=float)
    context = market_context(list(bars.index), close, **THRESHOLDS)
    assert_context_numbers(context, close)
    assert context["as_of"] == "2019-10-01"
    assert context["regime"] in {"bull", "bear", "sideways"}
    assert context["volatility_regime"] in {"low", "normal", "high"}
    up, momentum = context["sma_50"] > context["sma_200"], context["return_20d"]
    regime = "bull" if up and momentum >= -0.02 else "bear" if not up and momentum <= 0.02 else "sideways"
    assert context["regime"] == regime
    assert f"{context['return_20d']:+.2%}" in context["reason"]


# -- PriceStore -----------------------------------------------------------------------------------

AT = datetime(2024, 3, 7, 7, 0, tzinfo=UTC)
DAY_KEYS = ["2024-03-01", "2024-03-04", "2024-03-05", "2024-03-06"]


def store_bars() -> pd.DataFrame:
    return make_bars(
        DAY_KEYS,
        {
            "open": [10.0, 10.2, 10.1, 10.4],
            "high": [10.3, 10.4, 10.5, 10.6],
            "low": [9.9, 10.0, 10.0, 10.3],
            "close": [10.2, 10.1, 10.4, 10.5],
            "adj_close": [9.2, np.nan, 9.4, 9.5],
            "volume": [1e6, 2e6, np.nan, 1.5e6],
        },
    )


def open_database(path: Path) -> Database:
    db = Database(path)
    migrate(db.conn, MIGRATIONS)
    return db


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[PriceStore]:
    db = open_database(tmp_path / "market_data.db")
    yield PriceStore(db)
    db.close()


async def test_save_new_bars_counts_them_and_bumps_revision(store: PriceStore) -> None:
    changed, state = await store.save(SeriesState("CBA.AX", "1d"), store_bars(), "csv", AT)
    assert changed == 4
    assert state == SeriesState(
        "CBA.AX",
        "1d",
        revision=1,
        newest="2024-03-06",
        bar_count=4,
        source="csv",
        last_attempt=utc_iso(AT),
        last_success=utc_iso(AT),
        last_error=None,
    )
    assert await store.load_series() == {("CBA.AX", "1d"): state}


async def test_saving_identical_bars_changes_nothing(store: PriceStore) -> None:
    _, first = await store.save(SeriesState("CBA.AX", "1d"), store_bars(), "csv", AT)
    later = AT + timedelta(hours=1)
    changed, second = await store.save(first, store_bars(), "csv", later)
    assert changed == 0
    assert second.revision == first.revision == 1
    assert second.bar_count == 4
    assert second.last_success == utc_iso(later)


async def test_changing_one_close_counts_one_and_bumps_revision(store: PriceStore) -> None:
    _, first = await store.save(SeriesState("CBA.AX", "1d"), store_bars(), "csv", AT)
    bars = store_bars()
    bars.loc["2024-03-05", "close"] = 10.45
    changed, second = await store.save(first, bars, "csv", AT + timedelta(hours=1))
    assert changed == 1
    assert second.revision == 2
    stored = await store.bars("CBA.AX", "1d")
    assert stored.loc["2024-03-05", "close"] == 10.45
    # A field filled in where it was NULL is a change too.
    bars.loc["2024-03-04", "adj_close"] = 9.1
    changed, third = await store.save(second, bars, "csv", AT + timedelta(hours=2))
    assert (changed, third.revision) == (1, 3)


async def test_missing_fields_round_trip_as_nan(store: PriceStore) -> None:
    state = SeriesState("CBA.AX", "1d")
    _, state = await store.save(state, store_bars(), "csv", AT)
    nulls = await store.db.run(
        lambda conn: conn.execute(
            "SELECT time FROM bars WHERE adj_close IS NULL OR volume IS NULL ORDER BY time"
        ).fetchall()
    )
    assert nulls == [("2024-03-04",), ("2024-03-05",)]
    stored = await store.bars("CBA.AX", "1d")
    pd.testing.assert_frame_equal(stored, store_bars())
    assert list(stored.columns) == ["open", "high", "low", "close", "adj_close", "volume"]
    assert math.isnan(stored.loc["2024-03-04", "adj_close"])
    assert math.isnan(stored.loc["2024-03-05", "volume"])


async def test_bars_last_and_start_end_filters(store: PriceStore) -> None:
    await store.save(SeriesState("CBA.AX", "1d"), store_bars(), "csv", AT)
    await store.save(SeriesState("ANZ.AX", "1d"), store_bars().iloc[:1], "csv", AT)
    assert list((await store.bars("CBA.AX", "1d", last=2)).index) == ["2024-03-05", "2024-03-06"]
    assert list((await store.bars("CBA.AX", "1d", last=10)).index) == DAY_KEYS
    between = await store.bars("CBA.AX", "1d", start="2024-03-04", end="2024-03-05")
    assert list(between.index) == ["2024-03-04", "2024-03-05"]
    assert list((await store.bars("CBA.AX", "1d", end="2024-03-05", last=2)).index) == [
        "2024-03-04",
        "2024-03-05",
    ]
    assert list((await store.bars("CBA.AX", "1d", start="2024-03-02")).index) == DAY_KEYS[1:]
    assert (await store.bars("CBA.AX", "1h")).empty
    assert list((await store.bars("ANZ.AX", "1d")).index) == ["2024-03-01"]


async def test_record_failure_keeps_bars_and_sets_last_error(store: PriceStore) -> None:
    _, saved = await store.save(SeriesState("CBA.AX", "1d"), store_bars(), "csv", AT)
    later = AT + timedelta(minutes=5)
    failed = await store.record_failure(saved, "Yahoo Finance unavailable", later)
    assert failed.last_error == "Yahoo Finance unavailable"
    assert failed.last_attempt == utc_iso(later)
    assert failed.last_success == utc_iso(AT)
    assert (failed.revision, failed.bar_count, failed.newest) == (1, 4, "2024-03-06")
    assert (await store.load_series())[("CBA.AX", "1d")] == failed
    assert len(await store.bars("CBA.AX", "1d")) == 4
    # The next success clears the error.
    _, recovered = await store.save(failed, store_bars(), "csv", later + timedelta(minutes=5))
    assert recovered.last_error is None


async def test_store_state_persists_across_reopening(tmp_path: Path) -> None:
    path = tmp_path / "market_data.db"
    db = open_database(path)
    try:
        store = PriceStore(db)
        _, saved = await store.save(SeriesState("CBA.AX", "1d"), store_bars(), "csv", AT)
        failed = await store.record_failure(saved, "timeout", AT + timedelta(minutes=1))
    finally:
        db.close()
    db = open_database(path)
    try:
        reopened = PriceStore(db)
        assert await reopened.load_series() == {("CBA.AX", "1d"): failed}
        pd.testing.assert_frame_equal(await reopened.bars("CBA.AX", "1d"), store_bars())
    finally:
        db.close()


# -- AsxCalendar ----------------------------------------------------------------------------------


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_christmas_eve_is_an_early_close(calendar: AsxCalendar) -> None:
    session = calendar.session(date(2026, 12, 24))
    assert session is not None
    assert session.close == utc(2026, 12, 24, 3, 10)
    assert session.close.astimezone(SYDNEY).strftime("%H:%M") == "14:10"
    assert session.open == utc(2026, 12, 23, 23, 0)


def test_holidays_are_not_sessions(calendar: AsxCalendar) -> None:
    assert not calendar.is_session(date(2026, 12, 25))
    assert calendar.session(date(2026, 12, 25)) is None
    assert not calendar.is_session(date(2026, 1, 26))  # Australia Day
    assert calendar.is_session(date(2026, 1, 27))


def test_last_closed_and_open_session_around_a_close(calendar: AsxCalendar) -> None:
    thursday, friday = date(2026, 3, 12), date(2026, 3, 13)
    close = utc(2026, 3, 13, 5, 0)  # 16:00 AEDT
    just_before = close - timedelta(seconds=1)
    assert calendar.open_session(just_before).date == friday
    assert calendar.last_closed(just_before).date == thursday
    assert calendar.open_session(close) is None
    assert calendar.last_closed(close).date == friday


def test_weekend_has_no_session_and_next_open_is_monday(calendar: AsxCalendar) -> None:
    saturday = utc(2026, 3, 14, 2, 0)
    assert calendar.open_session(saturday) is None
    assert calendar.last_closed(saturday).date == date(2026, 3, 13)
    monday = calendar.next_open(saturday)
    assert monday.date == date(2026, 3, 16)
    assert monday.open == utc(2026, 3, 15, 23, 0)  # 10:00 AEDT
    # At the open, the session is open and the next open is the one after.
    assert calendar.open_session(monday.open).date == date(2026, 3, 16)
    assert calendar.next_open(monday.open).date == date(2026, 3, 17)


def test_open_is_10am_sydney_across_the_april_daylight_saving_change(calendar: AsxCalendar) -> None:
    before = calendar.session(date(2026, 4, 2))  # AEDT, UTC+11
    after = calendar.next_open(before.close)  # Good Friday and Easter Monday are holidays
    assert before.open == utc(2026, 4, 1, 23, 0)
    assert after.date == date(2026, 4, 7)  # AEST, UTC+10 from 2026-04-05
    assert after.open == utc(2026, 4, 7, 0, 0)
    for session in (before, after):
        local = session.open.astimezone(SYDNEY)
        assert (local.hour, local.minute) == (10, 0)
    assert after.close == utc(2026, 4, 7, 6, 0)


def test_sessions_after_counts_closed_sessions(calendar: AsxCalendar) -> None:
    friday = date(2026, 3, 13)
    assert calendar.sessions_after(friday, utc(2026, 3, 15, 0, 0)) == 0
    assert calendar.sessions_after(friday, utc(2026, 3, 16, 4, 59)) == 0  # Monday not closed yet
    assert calendar.sessions_after(friday, utc(2026, 3, 16, 5, 0)) == 1
    assert calendar.sessions_after(friday, utc(2026, 3, 17, 6, 0)) == 2
    assert calendar.sessions_after(date(2026, 3, 14), utc(2026, 3, 17, 6, 0)) == 2  # from a Saturday
    assert calendar.sessions_after(date(2026, 3, 20), utc(2026, 3, 17, 6, 0)) == 0  # never negative


def test_sessions_between_includes_both_ends(calendar: AsxCalendar) -> None:
    assert calendar.sessions_between(date(2026, 3, 13), date(2026, 3, 16)) == [
        date(2026, 3, 13),
        date(2026, 3, 16),
    ]
    assert calendar.sessions_between(date(2026, 4, 3), date(2026, 4, 6)) == []


def test_outside_the_loaded_range_raises(calendar: AsxCalendar) -> None:
    with pytest.raises(ValueError, match="outside the ASX calendar"):
        calendar.is_session(calendar.first - timedelta(days=1))
    with pytest.raises(ValueError, match="outside the ASX calendar"):
        calendar.session(calendar.last + timedelta(days=1))
    with pytest.raises(ValueError, match="outside the ASX calendar"):
        calendar.last_closed(datetime(1980, 1, 2, tzinfo=UTC))
    narrow = AsxCalendar(date(2026, 1, 1), date(2026, 12, 31))
    with pytest.raises(ValueError, match="2027-01-04"):
        narrow.next_open(utc(2027, 1, 4, 0, 0))
