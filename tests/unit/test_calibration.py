"""The calibrated probability: fitted on past decisions, applied to new ones, stored like a model."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pytest

from services.asx.calendar import SYDNEY
from services.backtest.calibrate import Fixed, WalkForward, calibrated, refit_times
from services.backtest.decisions import Made, RoundInputs
from services.backtest.replay import Window
from services.base.errors import NotFound
from services.prediction import calibration as cal
from services.prediction.calibration import Calibration, decision_settings, fit, forward_moves
from services.prediction.calibration_store import CalibrationRejected, CalibrationStore, shipped
from services.prediction.config import PredictionConfig

CONFIG = PredictionConfig()


def history(size: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scores whose chance of a rise grows with them: P(up) = 0.5 + 0.3 x score."""
    rng = np.random.default_rng(seed)
    combined = rng.uniform(-0.5, 0.5, size).round(4)
    up = rng.uniform(size=size) < 0.5 + 0.3 * combined
    move = np.where(up, 0.01, -0.01)
    regime = np.array(["bull"] * (size // 2) + [""] * (size - size // 2), dtype=object)
    return combined, np.full(size, 0.8), regime, move


def fitted(size: int = 6000) -> Calibration:
    combined, coverage, regime, move = history(size)
    made = fit(
        combined, coverage, regime, move, settings=decision_settings(CONFIG), fitted={"through": "2019-01-01"}
    )
    assert made is not None
    return made


def test_the_fitted_curve_rises_with_the_score_and_tracks_the_truth() -> None:
    calibration = fitted()
    up = calibration.curves["all"]["up"]
    assert list(up.p) == sorted(up.p)
    assert len(up.p) >= 3
    assert min(up.n) >= cal.MIN_BIN_CASES
    assert sum(up.n) == 6000
    probability, _cases = up.at(np.array([-0.45, 0.0, 0.45]))
    truth = 0.5 + 0.3 * np.array([-0.45, 0.0, 0.45])
    # Shrunk towards the base rate, and a step spans a range of scores: near, not equal.
    assert np.all(np.abs(probability - truth) < 0.1)
    assert probability[0] < probability[1] < probability[2]
    down = calibration.curves["all"]["down"]
    assert list(down.p) == sorted(down.p, reverse=True)


def test_a_regime_with_few_cases_reads_the_pooled_curves() -> None:
    combined, coverage, _regime, move = history(3000)
    regime = np.array(["bull"] * 2500 + ["bear"] * 500, dtype=object)
    calibration = fit(combined, coverage, regime, move, settings={}, fitted={})
    assert calibration is not None
    assert "bull" in calibration.curves
    assert "bear" not in calibration.curves
    estimate = calibration.estimate(np.array([1, 1]), np.array([0.3, 0.3]), np.array([0.8, 0.8]),
                                    np.array(["bull", "bear"], dtype=object))  # fmt: skip
    assert list(estimate.group) == ["bull", "all"]


def test_too_little_history_gives_no_calibration() -> None:
    combined, coverage, regime, move = history(cal.MIN_GROUP_CASES - 1)
    assert fit(combined, coverage, regime, move, settings={}, fitted={}) is None


def test_each_signal_reads_the_curve_of_its_direction() -> None:
    calibration = fitted()
    signal = np.array([1, -1, 0, 0])
    combined = np.array([0.4, 0.4, 0.1, -0.1])
    estimate = calibration.estimate(signal, combined, np.full(4, 0.8), np.full(4, "", dtype=object))
    up, _ = calibration.curves["none"]["up"].at(combined)
    down, _ = calibration.curves["none"]["down"].at(combined)
    # BUY: a rise; SELL: a fall; HOLD: the way its score leans.
    assert list(estimate.probability) == [up[0], down[1], up[2], down[3]]


def test_missing_inputs_widen_the_interval_and_leave_the_probability() -> None:
    calibration = fitted()
    both = calibration.estimate(np.array([1, 1]), np.array([0.3, 0.3]), np.array([0.8, 0.5]),
                                np.array(["bull", "bull"], dtype=object))  # fmt: skip
    assert both.probability[0] == both.probability[1]
    assert both.cases[1] == int(both.cases[0] * 0.5 / 0.8)
    assert both.high[1] - both.low[1] > both.high[0] - both.low[0]
    assert both.low[0] < both.probability[0] < both.high[0]


def test_a_calibration_round_trips_through_json_and_refuses_damage() -> None:
    calibration = fitted()
    again = Calibration.from_json(orjson.loads(orjson.dumps(calibration.to_json())), calibration.version)
    assert again == calibration
    damaged = calibration.to_json()
    damaged["curves"]["all"]["up"]["p"][0] = 1.5
    with pytest.raises(ValueError, match=r"curves\.all\.up: p must be in \[0, 1\]"):
        Calibration.from_json(damaged, "v1")
    unordered = calibration.to_json()
    unordered["curves"]["all"]["down"]["edges"] = [0.2, 0.1]
    with pytest.raises(ValueError, match="edges"):
        Calibration.from_json(unordered, "v1")
    del unordered["curves"]["all"]
    with pytest.raises(ValueError, match="pooled"):
        Calibration.from_json(unordered, "v1")


def test_a_calibration_for_other_weights_says_it_does_not_fit() -> None:
    calibration = fitted()
    assert calibration.mismatch(CONFIG) is None
    other = PredictionConfig(weights={"technical": 0.6, "sentiment": 0.2, "ml": 0.2})
    problem = calibration.mismatch(other)
    assert problem is not None
    assert "prediction.weights" in problem
    assert "tradingctl calibrate" in problem


def test_forward_moves_use_the_row_of_the_day_or_before_and_stop_at_the_end() -> None:
    keys = [f"2019-01-{d:02d}" for d in range(1, 11)]
    closes = np.arange(1.0, 11.0)
    move, ahead = forward_moves(keys, closes, ["2019-01-01", "2019-01-05", "2019-01-08", "2018-12-31"], 3)
    assert move[0] == pytest.approx(4 / 1 - 1)
    assert ahead[0] == 3
    assert move[1] == pytest.approx(8 / 5 - 1)
    assert np.isnan(move[2])
    assert ahead[2] == -1
    assert np.isnan(move[3])  # before the first row


# -- the store --------------------------------------------------------------------------------


def test_a_saved_version_loads_once_active_and_a_changed_file_is_refused(tmp_path: Path) -> None:
    store = CalibrationStore(tmp_path / "calibration")
    with pytest.raises(NotFound):
        store.load()
    first = store.save(fitted(), {"note": "first"})
    assert (first, store.active_version()) == ("v1", None)
    store.activate(first)
    assert store.load().curves == fitted().curves
    assert store.load().name == "calibration v1"
    second = store.save(fitted(3000), {})
    path = tmp_path / "calibration" / second / "calibration.json"
    path.write_bytes(path.read_bytes().replace(b'"format": 1', b'"format": 1 '))
    with pytest.raises(CalibrationRejected, match="does not match its card") as caught:
        store.activate(second)
    assert caught.value.data["reason"] == "hash_mismatch"
    assert store.active_version() == "v1"  # the good one stays


def test_the_shipped_calibration_loads_and_fits_the_default_settings() -> None:
    calibration = shipped()
    assert calibration.mismatch(CONFIG) is None
    assert calibration.fitted["cases"] > 10_000
    assert calibration.horizon_sessions == cal.HORIZON_SESSIONS


# -- through history --------------------------------------------------------------------------


def rounds(days: int) -> RoundInputs:
    """One round a day from 2019-01-01, each decision's move known a week later."""
    start = datetime(2019, 1, 1, 6, tzinfo=UTC)
    times = [start + timedelta(days=i) for i in range(days)]
    combined, _coverage, _regime, move = history(days)
    size = len(times)
    return RoundInputs(
        symbol="CBA.AX",
        times=times,
        posix=np.array([t.timestamp() for t in times]),
        price=np.full(size, 100.0),
        price_time=[t.date().isoformat() for t in times],
        usable=np.ones(size, dtype=bool),
        technical=combined,
        technical_confidence=np.ones(size),
        ml=np.full(size, np.nan),
        ml_confidence=np.zeros(size),
        ml_at=[None] * size,
        regime=np.full(size, "", dtype=object),
        high_volatility=np.zeros(size, dtype=bool),
        context_at=[None] * size,
        move=move,
        move_known=np.array([(t + timedelta(days=7)).timestamp() for t in times]),
    )


def test_walk_forward_fits_each_refit_only_on_outcomes_known_before_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cal, "MIN_GROUP_CASES", 50)
    monkeypatch.setattr(cal, "MIN_BIN_CASES", 20)
    inputs = rounds(730)
    window = Window(date(2019, 7, 1), date(2020, 12, 31))
    schedule = WalkForward(date(2019, 1, 1)).schedule([inputs], CONFIG, window)
    starts = [datetime.fromtimestamp(start, UTC) for start, _c in schedule[1:]]
    # The refit serving the window's start (July 2019), then every three months in it.
    assert [s.date() for s in starts] == [date(2019, 6, 30), date(2019, 9, 30), date(2019, 12, 31),
                                         date(2020, 3, 31), date(2020, 6, 30), date(2020, 9, 30)]  # fmt: skip
    for start, calibration in schedule[1:]:
        assert calibration is not None
        known = int((inputs.move_known < start).sum())
        assert calibration.fitted["cases"] == known  # everything known by then, nothing after
        refit_day = datetime.fromtimestamp(start, SYDNEY).date().isoformat()
        assert calibration.fitted["through"] < refit_day


def test_decisions_take_the_calibration_serving_their_time() -> None:
    early, late = fitted(), fitted(3000)
    cut = datetime(2019, 6, 1, tzinfo=UTC)
    schedule = [(-np.inf, None), (cut.timestamp() - 86400 * 30, early), (cut.timestamp(), late)]

    def made(at: datetime) -> Made:
        return Made("CBA.AX", at, 100.0, at.date().isoformat(), "BUY", 0.4, 0.3, 0.8, "bull", True, ())

    out = calibrated([made(cut - timedelta(days=60)), made(cut - timedelta(days=1)), made(cut)], schedule)
    assert [m.calibration for m in out] == ["uncalibrated", early.name, late.name]
    assert out[0].probability is None
    assert out[1].probability is not None
    assert out[1].cases > 0


def test_a_fixed_calibration_says_when_it_saw_the_window() -> None:
    calibration = fitted()  # fitted through 2019-01-01
    assert Fixed(calibration).describe(Window(date(2018, 6, 1), date(2019, 6, 1)))["in_sample"] is True
    assert Fixed(calibration).describe(Window(date(2019, 2, 1), date(2019, 6, 1)))["in_sample"] is False
    assert refit_times(date(2019, 11, 15), date(2020, 5, 1), 3) == [
        datetime(2020, 2, 1, tzinfo=UTC) - timedelta(hours=11),
        datetime(2020, 5, 1, tzinfo=UTC) - timedelta(hours=10),
    ]
