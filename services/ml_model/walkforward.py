"""Walk-forward evaluation: train on the past, test on the next block, never look ahead.

The days are cut into an initial training stretch (``min_train_fraction``) and ``folds`` test
blocks after it. Fold k trains on every day before its block less ``gap`` days and tests on the
block; the model is refitted each fold (expanding window). A training row's label is the return up
to ``horizon`` of its own symbol's sessions later, so with the label's end date given, a row whose
label ends on or after the block's first day is left out too: in a pooled set a symbol with a gap
in its bars would otherwise reach past a gap counted in the other symbols' days.

Each fold and the whole (all test blocks together) report accuracy, balanced accuracy, ROC AUC and
Brier score for the model and for two baselines: the majority class of the training days (its
probability is the training share of up days) and "always up" (probability 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (  # type: ignore[import-untyped]
    accuracy_score,
    balanced_accuracy_score,
    brier_score_loss,
    roc_auc_score,
)

from services.ml_model.models import has_probabilities, probability_up


@dataclass(frozen=True, slots=True)
class Fold:
    number: int
    train: np.ndarray  # row positions
    test: np.ndarray


@dataclass(slots=True)
class Evaluation:
    folds: list[dict[str, Any]]
    overall: dict[str, Any]
    # The last fold's model and test rows, for permutation importance.
    last_model: Any
    last_test: tuple[np.ndarray, np.ndarray]


def make_folds(
    dates: pd.DatetimeIndex | np.ndarray,
    *,
    folds: int,
    min_train_fraction: float,
    gap: int,
    label_end: pd.DatetimeIndex | np.ndarray | None = None,
) -> list[Fold]:
    """Folds over rows dated ``dates`` (several rows may share a day, as in a pooled set);
    ``label_end``: per row, the day its label's return ends."""
    days = np.unique(np.asarray(dates, dtype="datetime64[ns]"))
    ends = None if label_end is None else np.asarray(label_end, dtype="datetime64[ns]")
    positions = np.searchsorted(days, np.asarray(dates, dtype="datetime64[ns]"))
    first_test = int(len(days) * min_train_fraction)
    made = []
    for number, block in enumerate(np.array_split(np.arange(first_test, len(days)), folds), start=1):
        if len(block) == 0:
            continue
        before = positions <= block[0] - gap - 1
        if ends is not None:
            before &= ends < days[block[0]]
        train = np.flatnonzero(before)
        test = np.flatnonzero((positions >= block[0]) & (positions <= block[-1]))
        if len(train) and len(test):
            made.append(Fold(number, train, test))
    return made


def scores(y: np.ndarray, p_up: np.ndarray) -> dict[str, Any]:
    """Accuracy, balanced accuracy, ROC AUC (None with one class) and Brier score of P(up)."""
    predicted = (p_up >= 0.5).astype(int)
    both = len(np.unique(y)) == 2
    return {
        "rows": len(y),
        "accuracy": round(float(accuracy_score(y, predicted)), 4),
        "balanced_accuracy": round(float(balanced_accuracy_score(y, predicted)), 4) if both else None,
        "roc_auc": round(float(roc_auc_score(y, p_up)), 4) if both else None,
        "brier": round(float(brier_score_loss(y, p_up, pos_label=1)), 4),
    }


def _p_up(model: Any, rows: np.ndarray) -> np.ndarray:
    if has_probabilities(model):
        return probability_up(model, rows)
    return np.asarray(model.predict(rows), dtype=float)  # a vote: P(up) 1 or 0


def _compare(y_train: np.ndarray, y_test: np.ndarray, p_model: np.ndarray) -> dict[str, Any]:
    base_rate = float(y_train.mean())
    return {
        "model": scores(y_test, p_model),
        "majority": scores(y_test, np.full(len(y_test), base_rate)),
        "always_up": scores(y_test, np.ones(len(y_test))),
        "test_up_share": round(float(y_test.mean()), 4),
    }


def evaluate(
    make_model: Callable[[], Any],
    X: np.ndarray,
    y: np.ndarray,
    dates: pd.DatetimeIndex,
    *,
    folds: int,
    min_train_fraction: float,
    gap: int,
    label_end: pd.DatetimeIndex | None = None,
) -> Evaluation:
    """Walk-forward metrics of a model kind over (X, y) dated ``dates``, oldest first."""
    made = make_folds(dates, folds=folds, min_train_fraction=min_train_fraction, gap=gap, label_end=label_end)
    if not made:
        raise ValueError(f"too few days ({len(np.unique(dates))}) for walk-forward folds")
    reports = []
    all_y: list[np.ndarray] = []
    all_p: list[np.ndarray] = []
    all_base: list[np.ndarray] = []
    model = None
    for fold in made:
        y_train = y[fold.train]
        if len(np.unique(y_train)) < 2:
            raise ValueError(f"fold {fold.number}: the training days are all one class")
        model = make_model().fit(X[fold.train], y_train)
        p = _p_up(model, X[fold.test])
        y_test = y[fold.test]
        reports.append(
            {
                "fold": fold.number,
                "train": _span(dates, fold.train),
                "test": _span(dates, fold.test),
                **_compare(y_train, y_test, p),
            }
        )
        all_y.append(y_test)
        all_p.append(p)
        all_base.append(np.full(len(y_test), float(y_train.mean())))
    y_all, p_all = np.concatenate(all_y), np.concatenate(all_p)
    overall = {
        "model": scores(y_all, p_all),
        "majority": scores(y_all, np.concatenate(all_base)),
        "always_up": scores(y_all, np.ones(len(y_all))),
        "test_up_share": round(float(y_all.mean()), 4),
        "folds": len(made),
        "gap_days": gap,
    }
    last = made[-1]
    return Evaluation(reports, overall, model, (X[last.test], y[last.test]))


def _span(dates: pd.DatetimeIndex, rows: np.ndarray) -> dict[str, Any]:
    chosen = dates[rows]
    return {"from": chosen.min().date().isoformat(), "to": chosen.max().date().isoformat(), "rows": len(rows)}
