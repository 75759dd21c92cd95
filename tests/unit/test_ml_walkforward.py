"""Walk-forward folds and metrics: no training day within the gap of a test day, scores by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from services.ml_model.models import build
from services.ml_model.walkforward import Fold, evaluate, make_folds, scores
from tests.ml_fakes import signal_data

GAP = 5


def days(count: int, start: str = "2021-01-04") -> pd.DatetimeIndex:
    return pd.bdate_range(start, periods=count)


def pooled_dates(count: int, *, seed: int) -> pd.DatetimeIndex:
    """One to four rows a day (symbols with and without a bar that day), oldest first."""
    rng = np.random.default_rng(seed)
    repeats = rng.integers(1, 5, count)
    return pd.DatetimeIndex(np.repeat(days(count), repeats))


def check_folds(
    dates: pd.DatetimeIndex,
    made: list[Fold],
    *,
    folds: int,
    min_train_fraction: float,
    gap: int,
    first_tested: int | None = None,
) -> None:
    """``first_tested``: the first day tested when early folds had nothing to train on."""
    unique = np.unique(dates.to_numpy())
    position = np.searchsorted(unique, dates.to_numpy())
    first_test = int(len(unique) * min_train_fraction) if first_tested is None else first_tested
    assert made
    assert len(made) <= folds
    assert [f.number for f in made] == sorted({f.number for f in made})

    covered: list[int] = []
    for fold in made:
        train_days, test_days = position[fold.train], position[fold.test]
        assert len(fold.train) > 0
        assert len(fold.test) > 0
        # No training day within ``gap`` days of the test block.
        assert train_days.max() + gap < test_days.min()
        # Expanding window: every row up to the gap trains.
        assert fold.train.tolist() == np.flatnonzero(position < test_days.min() - gap).tolist()
        # A day is tested whole: every row of a test day is in the test rows.
        block = np.arange(test_days.min(), test_days.max() + 1)
        assert fold.test.tolist() == np.flatnonzero(np.isin(position, block)).tolist()
        assert set(np.unique(test_days)) == set(block.tolist())
        assert not set(fold.train.tolist()) & set(fold.test.tolist())
        assert not set(train_days.tolist()) & set(test_days.tolist())
        if covered:
            assert test_days.min() == covered[-1] + 1  # blocks are ordered and do not overlap
        covered.extend(block.tolist())
    assert covered == list(range(first_test, len(unique)))


@pytest.mark.parametrize(("folds", "fraction", "gap"), [(5, 0.4, 5), (3, 0.5, 10), (1, 0.6, 0), (7, 0.3, 5)])
def test_folds_over_one_row_a_day(folds: int, fraction: float, gap: int) -> None:
    dates = days(120)
    made = make_folds(dates, folds=folds, min_train_fraction=fraction, gap=gap)
    assert len(made) == folds
    check_folds(dates, made, folds=folds, min_train_fraction=fraction, gap=gap)


def test_the_first_test_block_starts_after_the_training_fraction() -> None:
    dates = days(100)
    made = make_folds(dates, folds=4, min_train_fraction=0.4, gap=GAP)
    assert [len(f.test) for f in made] == [15, 15, 15, 15]
    assert made[0].test[0] == 40
    assert made[0].train.tolist() == list(range(40 - GAP))
    assert made[-1].train.tolist() == list(range(85 - GAP))


def test_pooled_rows_sharing_a_day_are_never_split() -> None:
    dates = pooled_dates(150, seed=3)
    assert len(dates) > 300
    made = make_folds(dates, folds=5, min_train_fraction=0.4, gap=GAP)
    assert len(made) == 5
    check_folds(dates, made, folds=5, min_train_fraction=0.4, gap=GAP)
    for fold in made:
        assert not set(dates[fold.train]) & set(dates[fold.test])


def test_pooled_rows_need_not_be_sorted() -> None:
    # Rows stacked symbol by symbol, each with its own (overlapping) dates.
    dates = pd.DatetimeIndex(np.concatenate([days(80).to_numpy(), days(90, "2021-01-18").to_numpy()]))
    made = make_folds(dates, folds=3, min_train_fraction=0.4, gap=GAP)
    check_folds(dates, made, folds=3, min_train_fraction=0.4, gap=GAP)
    for fold in made:
        assert dates[fold.train].max() < dates[fold.test].min()


@pytest.mark.parametrize("count", [0, 1, 3, 6])
def test_too_few_days_give_no_folds(count: int) -> None:
    assert make_folds(days(count), folds=5, min_train_fraction=0.4, gap=GAP) == []


def test_folds_without_training_rows_are_left_out() -> None:
    dates = days(40)
    # The first block starts at day 8; less the gap of 10 nothing is left to train on.
    made = make_folds(dates, folds=4, min_train_fraction=0.2, gap=10)
    assert [f.number for f in made] == [2, 3, 4]
    check_folds(dates, made, folds=4, min_train_fraction=0.2, gap=10, first_tested=16)


# -- scores -----------------------------------------------------------------------------------


def test_scores_worked_by_hand() -> None:
    y = np.array([1, 0, 1, 1])
    p = np.array([0.9, 0.4, 0.3, 0.6])
    # Predicted 1, 0, 0, 1: 3 of 4 right; recall of up 2/3, of down 1/1.
    # AUC: the down row (0.4) is ranked below 0.9 and 0.6, above 0.3: 2 of 3 pairs.
    # Brier: (0.01 + 0.16 + 0.49 + 0.16) / 4.
    assert scores(y, p) == {
        "rows": 4,
        "accuracy": 0.75,
        "balanced_accuracy": round((2 / 3 + 1) / 2, 4),
        "roc_auc": round(2 / 3, 4),
        "brier": 0.205,
    }


def test_a_probability_of_one_half_counts_as_up() -> None:
    got = scores(np.array([1, 0]), np.array([0.5, 0.4]))
    assert got["accuracy"] == 1.0
    assert got["brier"] == 0.205
    assert scores(np.array([0]), np.array([0.5]))["accuracy"] == 0.0


@pytest.mark.parametrize("label", [0, 1])
def test_one_class_has_no_balanced_accuracy_or_auc(label: int) -> None:
    y = np.full(3, label)
    p = np.array([0.6, 0.4, 0.8])
    got = scores(y, p)
    assert got["balanced_accuracy"] is None
    assert got["roc_auc"] is None
    assert got["rows"] == 3
    assert got["accuracy"] == round(float(np.mean((p >= 0.5) == label)), 4)
    assert got["brier"] == round(float(np.mean((p - label) ** 2)), 4)


# -- evaluate ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def learnable() -> tuple[np.ndarray, np.ndarray, pd.DatetimeIndex]:
    X, y = signal_data(320, seed=5)
    return X, y, days(320)


def majority_brier(y: np.ndarray, folds: list[Fold]) -> tuple[list[float], float]:
    per_fold = []
    errors = []
    for fold in folds:
        base = y[fold.train].mean()
        squared = (y[fold.test] - base) ** 2
        per_fold.append(round(float(squared.mean()), 4))
        errors.append(squared)
    return per_fold, round(float(np.concatenate(errors).mean()), 4)


def test_logistic_learns_the_signal_and_beats_the_baselines(
    learnable: tuple[np.ndarray, np.ndarray, pd.DatetimeIndex],
) -> None:
    X, y, dates = learnable
    result = evaluate(
        lambda: build("logistic", seed=1), X, y, dates, folds=4, min_train_fraction=0.4, gap=GAP
    )
    overall = result.overall
    assert overall["model"]["roc_auc"] > 0.7
    assert overall["model"]["accuracy"] > overall["majority"]["accuracy"]
    assert overall["model"]["brier"] < overall["majority"]["brier"]
    assert overall["folds"] == 4
    assert overall["gap_days"] == GAP

    made = make_folds(dates, folds=4, min_train_fraction=0.4, gap=GAP)
    tested = np.concatenate([f.test for f in made])
    assert overall["model"]["rows"] == len(tested)
    assert overall["test_up_share"] == round(float(y[tested].mean()), 4)
    assert overall["always_up"]["accuracy"] == overall["test_up_share"]
    assert overall["always_up"]["brier"] == pytest.approx(1.0 - float(y[tested].mean()), abs=1e-4)

    per_fold_brier, overall_brier = majority_brier(y, made)
    assert overall["majority"]["brier"] == overall_brier
    assert [f["majority"]["brier"] for f in result.folds] == per_fold_brier


def test_each_fold_reports_its_spans_and_baselines(
    learnable: tuple[np.ndarray, np.ndarray, pd.DatetimeIndex],
) -> None:
    X, y, dates = learnable
    result = evaluate(
        lambda: build("logistic", seed=1), X, y, dates, folds=3, min_train_fraction=0.5, gap=GAP
    )
    made = make_folds(dates, folds=3, min_train_fraction=0.5, gap=GAP)
    assert [f["fold"] for f in result.folds] == [1, 2, 3]
    for report, fold in zip(result.folds, made, strict=True):
        train, test = report["train"], report["test"]
        assert train["from"] <= train["to"] < test["from"] <= test["to"]
        assert train["from"] == dates[0].date().isoformat()
        assert train["rows"] == len(fold.train)
        assert test["rows"] == len(fold.test)
        assert report["model"]["rows"] == len(fold.test)
        assert report["test_up_share"] == round(float(y[fold.test].mean()), 4)
        assert report["always_up"]["accuracy"] == report["test_up_share"]
        base = y[fold.train].mean()
        assert report["majority"]["accuracy"] == round(float(np.mean(y[fold.test] == (base >= 0.5))), 4)
    # The last fold's model and rows come back for permutation importance.
    assert result.last_test is not None
    last_X, last_y = result.last_test
    assert last_X.tolist() == X[made[-1].test].tolist()
    assert last_y.tolist() == y[made[-1].test].tolist()
    assert result.last_model.predict(last_X).shape == last_y.shape


def test_ridge_votes_count_as_probability_zero_or_one(
    learnable: tuple[np.ndarray, np.ndarray, pd.DatetimeIndex],
) -> None:
    X, y, dates = learnable
    result = evaluate(lambda: build("ridge", seed=1), X, y, dates, folds=4, min_train_fraction=0.4, gap=GAP)
    model = result.overall["model"]
    assert model["roc_auc"] > 0.7
    # With P(up) 0 or 1, Brier is the error rate and AUC is the balanced accuracy.
    assert model["brier"] == pytest.approx(1.0 - model["accuracy"], abs=1e-4)
    assert model["roc_auc"] == pytest.approx(model["balanced_accuracy"], abs=1e-4)
    assert not hasattr(result.last_model, "predict_proba")
    assert result.last_test is not None
    assert set(result.last_model.predict(result.last_test[0]).tolist()) <= {0, 1}


def test_evaluate_on_pooled_rows() -> None:
    dates = pooled_dates(120, seed=9)
    X, y = signal_data(len(dates), seed=9)
    result = evaluate(
        lambda: build("logistic", seed=1), X, y, dates, folds=3, min_train_fraction=0.4, gap=GAP
    )
    assert result.overall["model"]["rows"] == sum(f["test"]["rows"] for f in result.folds)
    for report in result.folds:
        assert report["train"]["to"] < report["test"]["from"]


def test_too_few_days_for_any_fold_is_an_error() -> None:
    X, y = signal_data(6, seed=1)
    with pytest.raises(ValueError, match="too few days"):
        evaluate(lambda: build("logistic", seed=1), X, y, days(6), folds=5, min_train_fraction=0.4, gap=GAP)


def test_training_days_of_one_class_are_an_error() -> None:
    X, _y = signal_data(100, seed=2)
    y = np.r_[np.ones(60, dtype=int), np.zeros(40, dtype=int)]
    with pytest.raises(ValueError, match="fold 1: the training days are all one class"):
        evaluate(lambda: build("logistic", seed=1), X, y, days(100), folds=2, min_train_fraction=0.5, gap=GAP)


def test_a_label_ending_in_the_test_block_keeps_its_row_out_of_training() -> None:
    # Two symbols over 200 days: test blocks start at days 80, 110, 140, 170. B has no bars on
    # days 105-109, so B's labels from days 100-104 (5 of its own sessions) end on days 110-114,
    # inside the block from 110, though those days are outside the 5-day gap counted in days.
    a_days = days(200)
    b_days = a_days.delete(range(105, 110))
    rows = sorted([(d, "A") for d in a_days] + [(d, "B") for d in b_days])
    dates = pd.DatetimeIndex([d for d, _symbol in rows])
    label_end = []
    for day, symbol in rows:
        own = a_days if symbol == "A" else b_days
        label_end.append(own[min(own.get_loc(day) + GAP, len(own) - 1)])
    ends = pd.DatetimeIndex(label_end)
    made = make_folds(dates, folds=4, min_train_fraction=0.4, gap=GAP, label_end=ends)
    counted_in_days = make_folds(dates, folds=4, min_train_fraction=0.4, gap=GAP)
    assert [f.number for f in made] == [f.number for f in counted_in_days] == [1, 2, 3, 4]
    leaked = []
    for fold, plain in zip(made, counted_in_days, strict=True):
        first_test_day = dates[fold.test].min()
        assert (ends[fold.train] < first_test_day).all()
        leaked += [rows[i] for i in plain.train if ends[i] >= first_test_day]
        assert set(fold.train.tolist()) <= set(plain.train.tolist())
    # The day-count gap alone would have let them in.
    assert leaked == [(a_days[i], "B") for i in range(100, 105)]
