"""Features and labels from daily bars: no look-ahead, dividend adjustment, the index match, checks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from services.base.errors import InvalidParams
from services.market_data.bars import make_bars
from services.market_data.csv_files import read_price_csv
from services.ml_model.features import (
    FEATURE_NAMES,
    FEATURES,
    INDEX_TOLERANCE,
    check_row,
    clean_bars,
    feature_frame,
    forward_returns,
    label_of,
    labels,
    latest_row,
    out_of_range,
)
from tests.ml_fakes import random_walk_bars, session_days, valid_features

PRICES = Path(__file__).resolve().parents[3] / "shared" / "data" / "prices"
INDEX_FEATURES = ["index_ret_1d", "index_ret_5d", "index_ret_20d", "index_trend"]
SYMBOL_FEATURES = [name for name in FEATURE_NAMES if name not in INDEX_FEATURES]
BOUNDS = {f.name: (f.low, f.high) for f in FEATURES}


def dividend_factor(count: int) -> np.ndarray:
    """An adj_close/close factor that steps up at two ex-dividend days, as Yahoo's does."""
    factor = np.ones(count)
    factor[: count // 3] = 0.93
    factor[count // 3 : 2 * count // 3] = 0.965
    return factor


@pytest.fixture(scope="module")
def symbol_bars() -> pd.DataFrame:
    return random_walk_bars(320, seed=3, adj_factor=dividend_factor(320))


@pytest.fixture(scope="module")
def index_bars() -> pd.DataFrame:
    bars = random_walk_bars(320, seed=4, price=7000.0, daily_sd=0.008)
    # The index misses a few sessions the symbol has.
    return bars.drop(index=[bars.index[40], bars.index[41], bars.index[260]])


# -- no look-ahead --------------------------------------------------------------------------


# 42 and 261 end on a session the index has no bar for (40, 41 and 260 are dropped).
@pytest.mark.parametrize("cut", [30, 41, 42, 120, 205, 250, 261, 262, 300, 320])
def test_a_row_is_the_same_whether_or_not_later_bars_exist(
    symbol_bars: pd.DataFrame, index_bars: pd.DataFrame, cut: int
) -> None:
    full = feature_frame(symbol_bars, index_bars)
    day = symbol_bars.index[cut - 1]
    truncated = feature_frame(symbol_bars.iloc[:cut], index_bars[index_bars.index <= day])

    assert truncated.index[-1] == pd.Timestamp(day)
    expected = full.loc[day, list(FEATURE_NAMES)].to_numpy(dtype=float)
    actual = truncated.iloc[-1][list(FEATURE_NAMES)].to_numpy(dtype=float)
    assert np.allclose(actual, expected, equal_nan=True, rtol=1e-9, atol=1e-12)
    # Every earlier row agrees too, not only the last.
    assert np.allclose(
        truncated[list(FEATURE_NAMES)].to_numpy(dtype=float),
        full.loc[: pd.Timestamp(day), list(FEATURE_NAMES)].to_numpy(dtype=float),
        equal_nan=True,
        rtol=1e-9,
        atol=1e-12,
    )

    date, values = latest_row(truncated)
    assert date == day
    assert list(values) == list(FEATURE_NAMES)
    assert np.allclose([values[name] for name in FEATURE_NAMES], expected, equal_nan=True)
    if cut >= 205:  # past SMA200 of the symbol and the index: the comparison is of real numbers
        assert np.isfinite(actual).all()


def test_early_rows_have_nan_until_their_look_back_is_filled(
    symbol_bars: pd.DataFrame, index_bars: pd.DataFrame
) -> None:
    frame = feature_frame(symbol_bars, index_bars)
    assert math.isnan(frame["ret_1d"].iloc[0])
    assert not math.isnan(frame["ret_1d"].iloc[1])
    assert frame["ret_20d"].iloc[:20].isna().all()
    assert frame["dist_sma200"].iloc[:199].isna().all()
    assert not math.isnan(frame["dist_sma200"].iloc[199])


def test_latest_row_of_an_empty_frame_is_refused() -> None:
    empty = feature_frame(random_walk_bars(5, seed=1), random_walk_bars(5, seed=2)).iloc[:0]
    with pytest.raises(ValueError, match="no complete bars"):
        latest_row(empty)


# -- dividend adjustment ----------------------------------------------------------------------


def ex_dividend_bars(*, with_adj_close: bool) -> pd.DataFrame:
    """Close drops 5% on day 30 (ex-dividend); the adjusted series rises 0.1% every day."""
    count = 40
    adjusted = 100.0 * 1.001 ** np.arange(count)
    factor = np.where(np.arange(count) < 30, 0.95, 1.0)
    close = adjusted / factor
    values = {
        "open": close,
        "high": close * 1.01,
        "low": close * 0.99,
        "close": close,
        "volume": np.full(count, 1e6),
    }
    if with_adj_close:
        values["adj_close"] = adjusted
    return make_bars(session_days(count), values)


def test_an_ex_dividend_drop_is_not_read_as_a_fall() -> None:
    bars = ex_dividend_bars(with_adj_close=True)
    raw_return = bars["close"].iloc[30] / bars["close"].iloc[29] - 1.0
    assert raw_return == pytest.approx(0.95 * 1.001 - 1.0)  # about -4.9%

    frame = feature_frame(bars, bars)
    ex_day = bars.index[30]
    assert frame.loc[ex_day, "ret_1d"] == pytest.approx(0.001, rel=1e-9)
    assert frame.loc[bars.index[32], "ret_5d"] == pytest.approx(1.001**5 - 1.0, rel=1e-9)
    assert frame["ret_1d"].iloc[1:].to_numpy() == pytest.approx(np.full(39, 0.001), rel=1e-9)
    # The close the features report is the adjusted one.
    assert frame.loc[bars.index[10], "close"] == pytest.approx(100.0 * 1.001**10)


def test_all_prices_are_adjusted_by_the_same_factor() -> None:
    bars = ex_dividend_bars(with_adj_close=True)
    cleaned = clean_bars(bars)
    for column in ("open", "high", "low", "close"):
        assert cleaned[column].iloc[5] == pytest.approx(bars[column].iloc[5] * 0.95)
        assert cleaned[column].iloc[35] == pytest.approx(bars[column].iloc[35])


def test_without_adj_close_the_raw_prices_are_used() -> None:
    frame = feature_frame(ex_dividend_bars(with_adj_close=False), ex_dividend_bars(with_adj_close=False))
    assert frame["ret_1d"].iloc[30] == pytest.approx(0.95 * 1.001 - 1.0)


def test_a_missing_adj_close_carries_the_previous_factor() -> None:
    bars = ex_dividend_bars(with_adj_close=True)
    # The day before the ex-dividend day: its factor is the earlier one, not the later one.
    bars.loc[bars.index[29], "adj_close"] = np.nan
    frame = feature_frame(bars, bars)
    assert frame["ret_1d"].iloc[29] == pytest.approx(0.001, rel=1e-9)
    assert frame["ret_1d"].iloc[30] == pytest.approx(0.001, rel=1e-9)


# -- the index match --------------------------------------------------------------------------


def expected_index_features(symbol_days: pd.DatetimeIndex, index_bars: pd.DataFrame) -> pd.DataFrame:
    """Per symbol day: the index's own features on its latest day on or before, within 5 days."""
    own = feature_frame(index_bars, index_bars)[INDEX_FEATURES]
    rows = []
    for day in symbol_days:
        earlier = own.index[own.index <= day]
        if len(earlier) and day - earlier[-1] <= INDEX_TOLERANCE:
            rows.append(own.loc[earlier[-1]].to_numpy(dtype=float))
        else:
            rows.append(np.full(len(INDEX_FEATURES), np.nan))
    return pd.DataFrame(rows, index=symbol_days, columns=INDEX_FEATURES)


def test_the_index_is_matched_to_its_latest_bar_within_five_days() -> None:
    symbol = random_walk_bars(270, seed=11)
    index = random_walk_bars(270, seed=12, price=7000.0, daily_sd=0.008)
    # A two-day hole (bridged), a ten-session hole (partly too old) and an early end.
    dropped = [*index.index[210:212], *index.index[225:235], *index.index[255:]]
    index = index.drop(index=dropped)
    last_index_day = pd.Timestamp(index.index[-1])

    frame = feature_frame(symbol, index)
    expected = expected_index_features(frame.index, index)
    assert np.allclose(
        frame[INDEX_FEATURES].to_numpy(dtype=float), expected.to_numpy(dtype=float), equal_nan=True
    )

    after_end = frame.loc[frame.index > last_index_day, INDEX_FEATURES]
    close_by = after_end[after_end.index - last_index_day <= INDEX_TOLERANCE]
    too_old = after_end[after_end.index - last_index_day > INDEX_TOLERANCE]
    assert len(close_by) > 0
    assert len(too_old) > 0
    assert close_by.notna().all().all()
    assert (close_by.to_numpy() == frame.loc[last_index_day, INDEX_FEATURES].to_numpy()).all()
    assert too_old.isna().all().all()
    # The symbol's own features do not depend on the index.
    assert frame.loc[too_old.index, SYMBOL_FEATURES].notna().all().all()

    bridged = frame.loc[pd.Timestamp(symbol.index[211]), INDEX_FEATURES].to_numpy(dtype=float)
    assert np.isfinite(bridged).all()
    assert (bridged == frame.loc[pd.Timestamp(symbol.index[209]), INDEX_FEATURES].to_numpy()).all()
    hole = frame.loc[pd.Timestamp(symbol.index[225]) : pd.Timestamp(symbol.index[234]), INDEX_FEATURES]
    assert hole.iloc[0].notna().all()
    assert hole.iloc[-1].isna().all()


def test_no_index_bars_at_all_give_nan_index_features() -> None:
    bars = random_walk_bars(230, seed=13)
    own = feature_frame(bars, bars)
    all_nan_closes = random_walk_bars(230, seed=14, price=7000.0)
    all_nan_closes["close"] = np.nan
    for index in (make_bars([], {}), all_nan_closes):
        frame = feature_frame(bars, index)
        assert frame.index.equals(own.index)
        assert frame[INDEX_FEATURES].isna().all().all()
        assert np.allclose(
            frame[SYMBOL_FEATURES].to_numpy(dtype=float),
            own[SYMBOL_FEATURES].to_numpy(dtype=float),
            equal_nan=True,
        )


def test_no_bars_for_the_symbol_give_an_empty_frame() -> None:
    # The service answers "market_data has no bars" when the frame is empty.
    frame = feature_frame(make_bars([], {}), random_walk_bars(230, seed=15, price=7000.0))
    assert frame.empty
    assert list(frame.columns) == [*FEATURE_NAMES, "close"]


# -- bad bars ---------------------------------------------------------------------------------


def test_incomplete_or_non_positive_bars_are_dropped_and_do_not_poison_later_rows() -> None:
    bars = random_walk_bars(280, seed=21)
    index = random_walk_bars(280, seed=22, price=7000.0, daily_sd=0.008)
    bad_days = [bars.index[i] for i in (100, 150, 180, 200, 210, 230)]
    broken = bars.copy()
    broken.loc[bad_days[0], "close"] = np.nan
    broken.loc[bad_days[1], "high"] = 0.0
    broken.loc[bad_days[2], "low"] = np.nan
    broken.loc[bad_days[3], "low"] = -1.0
    broken.loc[bad_days[4], "close"] = 0.0
    broken.loc[bad_days[5], ["open", "high", "low", "close", "adj_close", "volume"]] = np.nan

    cleaned = clean_bars(broken)
    assert isinstance(cleaned.index, pd.DatetimeIndex)
    assert len(cleaned) == len(bars) - len(bad_days)
    assert not set(pd.to_datetime(bad_days)) & set(cleaned.index)

    frame = feature_frame(broken, index)
    without = feature_frame(bars.drop(index=bad_days), index)
    assert frame.index.equals(without.index)
    assert np.allclose(frame.to_numpy(dtype=float), without.to_numpy(dtype=float), equal_nan=True)
    # TA-Lib carries a NaN forward for ever; none got in, so the last rows are complete.
    assert frame.iloc[-20:][list(FEATURE_NAMES)].notna().all().all()


def test_a_bad_index_bar_is_dropped_too() -> None:
    bars = random_walk_bars(260, seed=31)
    index = random_walk_bars(260, seed=32, price=7000.0, daily_sd=0.008)
    broken = index.copy()
    broken.loc[index.index[120], "close"] = np.nan
    frame = feature_frame(bars, broken)
    assert frame["index_trend"].iloc[-1] == pytest.approx(
        feature_frame(bars, index.drop(index=[index.index[120]]))["index_trend"].iloc[-1]
    )
    assert frame[INDEX_FEATURES].iloc[-20:].notna().all().all()


# -- labels -----------------------------------------------------------------------------------


def test_forward_returns_look_horizon_days_ahead() -> None:
    close = pd.Series([100.0, 110.0, 99.0, 99.0, 120.0])
    forward = forward_returns(close, 2)
    assert forward.iloc[:3].to_numpy() == pytest.approx([-0.01, 99.0 / 110.0 - 1.0, 120.0 / 99.0 - 1.0])
    assert forward.iloc[3:].isna().all()
    assert forward_returns(close, 1).iloc[:-1].notna().all()
    assert math.isnan(forward_returns(close, 1).iloc[-1])


def test_labels_leave_the_band_and_the_unknown_out() -> None:
    forward = pd.Series([0.004, -0.004, 0.005, -0.005, 0.006, -0.006, np.nan, 0.0])
    got = labels(forward, 0.005)
    assert got.iloc[4] == 1.0
    assert got.iloc[5] == 0.0
    assert got.drop(index=[4, 5]).isna().all()
    assert got.index.equals(forward.index)


def test_labels_of_forward_returns_end_with_horizon_unknowns() -> None:
    close = pd.Series(100.0 * 1.01 ** np.arange(12))
    got = labels(forward_returns(close, 5), 0.005)
    assert (got.iloc[:7] == 1.0).all()
    assert got.iloc[7:].isna().all()


@pytest.mark.parametrize(
    ("forward", "expected"),
    [(0.006, 1), (-0.006, 0), (0.005, None), (-0.005, None), (0.0, None), (float("nan"), None), (1.0, 1)],
)
def test_label_of_matches_labels(forward: float, expected: int | None) -> None:
    assert label_of(forward, 0.005) == expected
    series_label = labels(pd.Series([forward]), 0.005).iloc[0]
    if expected is None:
        assert math.isnan(series_label)
    else:
        assert series_label == expected


# -- check_row --------------------------------------------------------------------------------


def test_check_row_returns_the_values_in_feature_order() -> None:
    values = valid_features()
    shuffled = dict(reversed(list(values.items())))
    row = check_row(shuffled)
    assert row.dtype == np.float64
    assert row.tolist() == [values[name] for name in FEATURE_NAMES]


def test_check_row_accepts_ints_numpy_floats_and_the_bounds_themselves() -> None:
    values: dict[str, object] = dict(valid_features())
    values["rsi_14"] = 100
    values["atr_pct"] = 0.0
    values["ret_1d"] = np.float64(-0.9)
    row = check_row(values)
    assert row[FEATURE_NAMES.index("rsi_14")] == 100.0
    assert row[FEATURE_NAMES.index("atr_pct")] == 0.0
    assert row[FEATURE_NAMES.index("ret_1d")] == -0.9


def test_check_row_accepts_latest_row_of_real_looking_bars() -> None:
    frame = feature_frame(random_walk_bars(260, seed=5), random_walk_bars(260, seed=6, price=7000.0))
    _date, values = latest_row(frame)
    assert check_row(values).tolist() == pytest.approx([values[name] for name in FEATURE_NAMES])


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ret_1d", None),
        ("rsi_14", float("nan")),
        ("atr_pct", float("inf")),
        ("macd_hist", float("-inf")),
        ("volume_ratio", True),
        ("dist_sma50", False),
        ("ret_5d", "0.01"),
        ("index_trend", [0.01]),
        ("rsi_14", -0.01),
        ("rsi_14", 100.01),
        ("ret_1d", -0.95),
        ("ret_1d", 3.5),
        ("atr_pct", -0.001),
        ("index_ret_1d", 1.5),
        ("bb_percent_b", -11),
    ],
)
def test_check_row_names_the_bad_feature(name: str, value: object) -> None:
    values: dict[str, object] = dict(valid_features())
    values[name] = value
    with pytest.raises(InvalidParams) as caught:
        check_row(values)
    assert caught.value.data["field"] == f"features.{name}"
    assert name in caught.value.message


def test_check_row_names_the_first_missing_feature() -> None:
    values = valid_features()
    del values["rsi_14"]
    del values["index_trend"]
    with pytest.raises(InvalidParams) as caught:
        check_row(values)
    assert caught.value.data["field"] == "features.rsi_14"
    assert caught.value.data["missing"] == ["rsi_14", "index_trend"]


def test_check_row_refuses_an_unknown_feature() -> None:
    values: dict[str, object] = dict(valid_features())
    values["sentiment"] = 0.2
    values["alpha"] = 1.0
    with pytest.raises(InvalidParams) as caught:
        check_row(values)
    assert caught.value.data["field"] == "features.alpha"
    assert caught.value.data["unknown"] == ["alpha", "sentiment"]


@pytest.mark.parametrize("values", [None, [0.1] * 14, "ret_1d=0.1", 3.0, np.zeros(14)])
def test_check_row_needs_a_mapping(values: object) -> None:
    with pytest.raises(InvalidParams) as caught:
        check_row(values)
    assert caught.value.data["field"] == "features"


def test_check_row_uses_the_callers_field_prefix() -> None:
    values: dict[str, object] = dict(valid_features())
    values["rsi_14"] = None
    with pytest.raises(InvalidParams) as caught:
        check_row(values, field="items[3].features")
    assert caught.value.data["field"] == "items[3].features.rsi_14"
    with pytest.raises(InvalidParams) as not_a_mapping:
        check_row([], field="items[0].features")
    assert not_a_mapping.value.data["field"] == "items[0].features"


# -- out_of_range -----------------------------------------------------------------------------


def test_out_of_range_flags_missing_infinite_and_absurd_rows() -> None:
    good = valid_features()
    rows = [dict(good) for _ in range(7)]
    rows[1]["rsi_14"] = np.nan
    rows[2]["atr_pct"] = np.inf
    rows[3]["ret_1d"] = -0.95
    rows[4]["index_trend"] = 3.5
    rows[5]["rsi_14"] = 100.0  # on the bound: fine
    rows[6]["volume_ratio"] = -np.inf
    frame = pd.DataFrame(rows, index=pd.date_range("2024-01-01", periods=7))
    frame["close"] = np.nan  # not a feature: ignored
    assert out_of_range(frame).tolist() == [False, True, True, True, True, False, True]


def test_out_of_range_is_false_for_complete_synthetic_rows() -> None:
    frame = feature_frame(random_walk_bars(260, seed=7), random_walk_bars(260, seed=8, price=7000.0))
    flagged = out_of_range(frame)
    assert flagged.iloc[:199].all()  # the warm-up rows have NaN
    assert not flagged.iloc[-30:].any()


# -- real prices ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cba_frame() -> pd.DataFrame:
    if not PRICES.is_dir():
        pytest.skip(f"no price files at {PRICES}")
    return feature_frame(read_price_csv(PRICES / "CBA.AX.csv"), read_price_csv(PRICES / "^AXJO.csv"))


def test_real_prices_give_features_inside_their_bounds(cba_frame: pd.DataFrame) -> None:
    complete = cba_frame[cba_frame[list(FEATURE_NAMES)].notna().all(axis=1)]
    assert len(complete) > 4000
    inside = ~out_of_range(complete)
    assert inside.mean() >= 0.99
    for name, (low, high) in BOUNDS.items():
        column = cba_frame[name].dropna()
        assert ((column >= low) & (column <= high)).mean() >= 0.99, name


def test_real_index_features_stop_after_the_index_file_ends(cba_frame: pd.DataFrame) -> None:
    later = cba_frame.loc[cba_frame.index > pd.Timestamp("2019-10-08"), INDEX_FEATURES]
    assert len(later) > 100
    assert later.isna().all().all()
    assert cba_frame.loc[cba_frame.index > pd.Timestamp("2019-10-08"), SYMBOL_FEATURES].notna().all().all()
    last_within = cba_frame.loc[pd.Timestamp("2019-10-01") : pd.Timestamp("2019-10-06"), INDEX_FEATURES]
    assert len(last_within) > 0
    assert last_within.notna().all().all()
