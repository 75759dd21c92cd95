"""The model kinds, built from scikit-learn, and what the service reads out of a fitted model.

Each kind is wrapped in ``CalibratedClassifierCV`` (sigmoid by default) over three time-ordered
splits with a gap of the label horizon: three copies of the model, fitted on the first quarter,
half and three quarters of the rows, each calibrated on the quarter after its gap, averaged. So
its probabilities mean what they say, learnt on data it did not fit. ``ridge`` is the one kind
without probabilities: it votes up or down, and the ensemble counts its vote with the confidence
documented in ``vote_probability``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.base import ClassifierMixin  # type: ignore[import-untyped]
from sklearn.calibration import CalibratedClassifierCV  # type: ignore[import-untyped]
from sklearn.ensemble import (  # type: ignore[import-untyped]
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.linear_model import LogisticRegression, RidgeClassifier  # type: ignore[import-untyped]
from sklearn.model_selection import TimeSeriesSplit  # type: ignore[import-untyped]
from sklearn.pipeline import Pipeline, make_pipeline  # type: ignore[import-untyped]
from sklearn.preprocessing import StandardScaler  # type: ignore[import-untyped]

from services.ml_model.config import MODEL_KINDS

CALIBRATION_SPLITS = 3


def _logistic(seed: int, jobs: int) -> Any:
    return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000, random_state=seed))


def _random_forest(seed: int, jobs: int) -> Any:
    return RandomForestClassifier(
        n_estimators=200,
        max_depth=6,
        min_samples_leaf=50,
        max_features="sqrt",
        n_jobs=jobs,
        random_state=seed,
    )


def _gradient_boosting(seed: int, jobs: int) -> Any:
    return HistGradientBoostingClassifier(
        max_iter=150, learning_rate=0.05, max_depth=3, min_samples_leaf=100, l2_regularization=1.0,
        early_stopping=False, random_state=seed,
    )  # fmt: skip


def _ridge(seed: int, jobs: int) -> Any:
    return make_pipeline(StandardScaler(), RidgeClassifier(alpha=10.0))


BUILDERS: dict[str, Callable[[int, int], Any]] = {
    "logistic": _logistic,
    "random_forest": _random_forest,
    "gradient_boosting": _gradient_boosting,
    "ridge": _ridge,
}
assert set(BUILDERS) == set(MODEL_KINDS)
WITHOUT_PROBABILITIES = frozenset({"ridge"})


def build(
    kind: str, *, seed: int, jobs: int = 1, calibration: str = "sigmoid", gap_rows: int = 0
) -> ClassifierMixin:
    """An unfitted model of ``kind``, calibrated unless it gives no probabilities. ``gap_rows``:
    rows left out between fitting and calibrating (rows are in date order; a label spans rows)."""
    base = BUILDERS[kind](seed, jobs)
    if kind in WITHOUT_PROBABILITIES:
        return base
    splits = TimeSeriesSplit(CALIBRATION_SPLITS, gap=gap_rows)
    return CalibratedClassifierCV(base, method=calibration, cv=splits)


def base_params(kind: str) -> dict[str, Any]:
    """The parameters of ``kind``'s estimator that a model card records (plain values only)."""
    base = BUILDERS[kind](0, 1)
    steps = base.steps if isinstance(base, Pipeline) else [(type(base).__name__, base)]
    params: dict[str, Any] = {}
    for _name, step in steps:
        for key, value in step.get_params(deep=False).items():
            if value is None or isinstance(value, bool | int | float | str):
                params[f"{type(step).__name__}.{key}"] = value
    params.pop(f"{type(steps[-1][1]).__name__}.random_state", None)
    params.pop(f"{type(steps[-1][1]).__name__}.n_jobs", None)
    return params


def for_serving(model: Any) -> Any:
    """The fitted model with thread pools off: a few rows at a time are faster on one thread."""
    for estimator in _estimators(model):
        if hasattr(estimator, "n_jobs"):
            estimator.n_jobs = 1
    return model


def has_probabilities(model: Any) -> bool:
    return hasattr(model, "predict_proba")


def probability_up(model: Any, rows: np.ndarray) -> np.ndarray:
    """P(up) per row from a model with probabilities (class 1 is up)."""
    classes = list(model.classes_)
    return np.asarray(model.predict_proba(rows)[:, classes.index(1)], dtype=float)


def vote_probability(model: Any, rows: np.ndarray, accuracy: float | None) -> np.ndarray:
    """For a model without probabilities: its vote read as a probability.

    A model that says "up" is taken to be right as often as it was in walk-forward testing
    (balanced accuracy, at least 0.5), so its vote counts as P(up) = accuracy, and a "down" vote
    as 1 - accuracy. With no measured accuracy its vote counts as 0.5 (no information).
    """
    skill = 0.5 if accuracy is None else max(0.5, min(1.0, accuracy))
    votes = np.asarray(model.predict(rows), dtype=float)
    return np.where(votes == 1, skill, 1.0 - skill)


def native_importance(model: Any, names: tuple[str, ...]) -> dict[str, float] | None:
    """The model's own importance per feature (mean over calibration copies), where it has one:
    impurity decrease for a forest, |coefficient| on standardised features for a linear model."""
    rows = []
    for estimator in _fitted_bases(model):
        final = estimator.steps[-1][1] if isinstance(estimator, Pipeline) else estimator
        if hasattr(final, "feature_importances_"):
            rows.append(np.asarray(final.feature_importances_, dtype=float))
        elif hasattr(final, "coef_"):
            rows.append(np.abs(np.asarray(final.coef_, dtype=float)).ravel())
    if not rows:
        return None
    mean = np.mean(rows, axis=0)
    return {name: round(float(v), 6) for name, v in zip(names, mean, strict=True)}


def _fitted_bases(model: Any) -> list[Any]:
    if isinstance(model, CalibratedClassifierCV):
        return [c.estimator for c in model.calibrated_classifiers_]
    return [model]


def _estimators(model: Any) -> list[Any]:
    found: list[Any] = []
    for base in _fitted_bases(model):
        if isinstance(base, Pipeline):
            found.extend(step for _name, step in base.steps)
        else:
            found.append(base)
    return found
