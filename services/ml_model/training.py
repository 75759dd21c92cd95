"""A training run: datasets from bars, walk-forward metrics, final fits into the registry, a report.

Every configured model kind is trained per symbol (bank-specific) and, with ``pooled`` on, on all
symbols' rows together. Each is evaluated walk-forward first, then refitted on every labelled day
and saved as a new version with its card; the new version becomes active once it loads back and
verifies. The report (JSON and Markdown) goes to ``models/reports/``.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import sklearn  # type: ignore[import-untyped]
import skops  # type: ignore[import-untyped]
from sklearn.inspection import permutation_importance  # type: ignore[import-untyped]

from services.base.clock import utc_iso
from services.ml_model.config import MlModelConfig
from services.ml_model.features import (
    FEATURE_NAMES,
    FEATURES,
    feature_frame,
    forward_returns,
    labels,
    out_of_range,
)
from services.ml_model.models import WITHOUT_PROBABILITIES, base_params, build, for_serving, native_importance
from services.ml_model.registry import POOLED, ModelRegistry, ModelRejected
from services.ml_model.walkforward import Evaluation, evaluate

log = logging.getLogger("services.ml_model.training")

PERMUTATION_REPEATS = 5


@dataclass(frozen=True, slots=True)
class Dataset:
    """The labelled, complete rows of one symbol, oldest first."""

    symbol: str
    X: pd.DataFrame  # FEATURE_NAMES columns, indexed by date
    y: np.ndarray
    label_end: pd.DatetimeIndex  # per row: the session its label's return ends on
    counts: dict[str, Any]


def build_dataset(
    symbol: str, bars: pd.DataFrame, index_bars: pd.DataFrame, *, horizon: int, threshold: float
) -> Dataset:
    frame = feature_frame(bars, index_bars)
    forward = forward_returns(frame["close"], horizon)
    label = labels(forward, threshold)
    missing = frame[list(FEATURE_NAMES)].isna().any(axis=1)
    refused = out_of_range(frame)
    keep = ~refused & label.notna()
    kept = frame.index[keep]
    counts = {
        "days": len(frame),
        "used": int(keep.sum()),
        "missing_features": int(missing.sum()),  # warm-up, gaps, no index bar near the day
        "out_of_bounds": int((refused & ~missing).sum()),  # bad ticks past the feature bounds
        "inside_threshold": int((forward.notna() & label.isna() & ~refused).sum()),
        "no_outcome_yet": int((forward.isna() & ~refused).sum()),
        "from": kept.min().date().isoformat() if len(kept) else None,
        "to": kept.max().date().isoformat() if len(kept) else None,
        "up_share": round(float(label[keep].mean()), 4) if keep.any() else None,
    }
    label_end = pd.Series(frame.index, index=frame.index).shift(-horizon)
    return Dataset(
        symbol,
        frame.loc[keep, list(FEATURE_NAMES)],
        label[keep].to_numpy(dtype=int),
        pd.DatetimeIndex(label_end[keep]),
        counts,
    )


@dataclass(frozen=True, slots=True)
class Stacked:
    """The rows of one or more datasets in date order (then symbol)."""

    X: np.ndarray
    y: np.ndarray
    dates: pd.DatetimeIndex
    label_end: pd.DatetimeIndex


def _stack(datasets: list[Dataset]) -> Stacked:
    frame = pd.concat([d.X.assign(_y=d.y, _symbol=d.symbol, _end=d.label_end) for d in datasets])
    frame = frame.reset_index().sort_values(["date", "_symbol"], kind="stable")
    return Stacked(
        frame[list(FEATURE_NAMES)].to_numpy(dtype=float),
        frame["_y"].to_numpy(dtype=int),
        pd.DatetimeIndex(frame["date"]),
        pd.DatetimeIndex(frame["_end"]),
    )


def library_versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "skops": skops.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
    }


def train_scope(
    scope: str,
    datasets: list[Dataset],
    config: MlModelConfig,
    registry: ModelRegistry,
    *,
    trained_at: datetime,
    activate: bool = True,
    progress: Callable[[str], None] = lambda _line: None,
) -> dict[str, Any]:
    """Evaluate, fit, save (and activate) every configured model kind for one scope. A kind that
    fails (too few days, one class in a fold) is reported and the others go on."""
    rows = _stack(datasets)
    window = {
        "from": rows.dates.min().date().isoformat(),
        "to": rows.dates.max().date().isoformat(),
        "rows": len(rows.y),
        "up_share": round(float(rows.y.mean()), 4),
        "symbols": [d.symbol for d in datasets],
    }
    results: dict[str, Any] = {}
    for kind in config.models:
        started = time.perf_counter()
        try:
            result = _train_kind(scope, kind, rows, window, len(datasets), config, registry, trained_at)
        except (ValueError, ModelRejected) as exc:
            results[kind] = {"error": str(exc)}
            progress(f"{scope:<8} {kind:<18} FAILED: {exc}")
            continue
        if activate:
            registry.activate(scope, kind, result["version"], verify=False)  # _train_kind loaded it back
        result.update(active=activate, seconds=round(time.perf_counter() - started, 1))
        results[kind] = result
        model = result["walk_forward"]["model"]
        progress(
            f"{scope:<8} {kind:<18} {result['version']:<5} acc {model['accuracy']:.3f} "
            f"bal {_fmt(model['balanced_accuracy'])} auc {_fmt(model['roc_auc'])} brier {model['brier']:.4f} "
            f"| majority acc {result['walk_forward']['majority']['accuracy']:.3f} ({result['seconds']}s)"
        )
    return {"training_window": window, "models": results}


def _train_kind(
    scope: str,
    kind: str,
    rows: Stacked,
    window: dict[str, Any],
    symbols: int,
    config: MlModelConfig,
    registry: ModelRegistry,
    trained_at: datetime,
) -> dict[str, Any]:
    def make() -> Any:
        return build(kind, seed=config.random_state, jobs=config.train_jobs,
                     calibration=config.calibration, gap_rows=config.horizon * symbols)  # fmt: skip

    evaluation = evaluate(
        make, rows.X, rows.y, rows.dates,
        folds=config.folds, min_train_fraction=config.min_train_fraction, gap=config.walk_forward_gap,
        label_end=rows.label_end,
    )  # fmt: skip
    model = for_serving(make().fit(rows.X, rows.y))
    card = {
        "kind": kind,
        "probabilities": kind not in WITHOUT_PROBABILITIES,
        "calibration": None if kind in WITHOUT_PROBABILITIES else config.calibration,
        "features": list(FEATURE_NAMES),
        "feature_bounds": {f.name: [f.low, f.high] for f in FEATURES},
        "label": {"horizon_days": config.horizon, "threshold": config.threshold},
        "training_window": window,
        "params": base_params(kind),
        "walk_forward": {"overall": evaluation.overall, "folds": evaluation.folds},
        "importance": {
            "permutation": _permutation(evaluation, kind, config.random_state),
            "native": native_importance(model, FEATURE_NAMES),
        },
        "libraries": library_versions(),
        "trained_at": utc_iso(trained_at),
    }
    version = registry.save(scope, kind, model, card)
    registry.load(scope, kind, version)  # what was written reads back and verifies
    return {"version": version, "walk_forward": evaluation.overall, "folds": evaluation.folds}


def _permutation(evaluation: Evaluation, kind: str, seed: int) -> dict[str, Any] | None:
    """Mean drop in the last fold's test score when each feature is shuffled."""
    X_test, y_test = evaluation.last_test
    if len(np.unique(y_test)) < 2:
        return None
    scoring = "balanced_accuracy" if kind in WITHOUT_PROBABILITIES else "roc_auc"
    result = permutation_importance(
        evaluation.last_model, X_test, y_test, scoring=scoring,
        n_repeats=PERMUTATION_REPEATS, random_state=seed, n_jobs=1,
    )  # fmt: skip
    return {
        "scoring": scoring,
        "mean": {n: round(float(v), 6) for n, v in zip(FEATURE_NAMES, result.importances_mean, strict=True)},
        "std": {n: round(float(v), 6) for n, v in zip(FEATURE_NAMES, result.importances_std, strict=True)},
    }


def run_training(
    config: MlModelConfig,
    bars: Mapping[str, pd.DataFrame],
    index_bars: pd.DataFrame,
    registry: ModelRegistry,
    *,
    now: datetime,
    source: str,
    activate: bool = True,
    progress: Callable[[str], None] = lambda _line: None,
) -> dict[str, Any]:
    """Train every scope from ``bars`` (symbol -> raw bars) and return the report."""
    started = time.perf_counter()
    datasets = []
    for symbol, symbol_bars in bars.items():
        dataset = build_dataset(
            symbol, symbol_bars, index_bars, horizon=config.horizon, threshold=config.threshold
        )
        counts = dataset.counts
        progress(f"{symbol}: {counts['used']} labelled days {counts['from']}..{counts['to']}")
        datasets.append(dataset)
    usable = [d for d in datasets if d.counts["used"] > 0]
    scopes: dict[str, Any] = {}
    for dataset in usable if config.per_symbol else []:
        scopes[dataset.symbol] = train_scope(
            dataset.symbol, [dataset], config, registry, trained_at=now, activate=activate, progress=progress
        )
    if config.pooled and len(usable) > 1:
        scopes[POOLED] = train_scope(
            POOLED, usable, config, registry, trained_at=now, activate=activate, progress=progress
        )
    return {
        "trained_at": utc_iso(now),
        "source": source,
        "label": {"horizon_days": config.horizon, "threshold": config.threshold},
        "walk_forward": {
            "folds": config.folds,
            "min_train_fraction": config.min_train_fraction,
            "gap_days": config.walk_forward_gap,
        },
        "features": list(FEATURE_NAMES),
        "symbols": {d.symbol: d.counts for d in datasets},
        "scopes": scopes,
        "failures": [
            f"{scope}/{kind}: {entry['error']}"
            for scope, result in scopes.items()
            for kind, entry in result["models"].items()
            if "error" in entry
        ],
        "libraries": library_versions(),
        "elapsed_s": round(time.perf_counter() - started, 1),
    }


def write_report(report: dict[str, Any], directory: Path) -> tuple[Path, Path]:
    """``train-<time>.json`` and ``.md`` under ``directory``; returns both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.fromisoformat(report["trained_at"]).strftime("%Y%m%dT%H%M%SZ")
    json_path = directory / f"train-{stamp}.json"
    markdown_path = directory / f"train-{stamp}.md"
    json_path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    markdown_path.write_text(report_markdown(report))
    return json_path, markdown_path


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def _metric_cells(m: dict[str, Any]) -> list[str]:
    return [
        _fmt(m["accuracy"]), _fmt(m["balanced_accuracy"]), _fmt(m["roc_auc"]), _fmt(m["brier"], 4)
    ]  # fmt: skip


def _trained(result: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(kind, entry) for kind, entry in result["models"].items() if "error" not in entry]


def report_markdown(report: dict[str, Any]) -> str:
    label = report["label"]
    wf = report["walk_forward"]
    lines = [
        f"# Training report {report['trained_at']}",
        "",
        f"Source: {report['source']}. Label: return over {label['horizon_days']} trading days above "
        f"+{label['threshold']:g} (up) or below -{label['threshold']:g} (down). Walk-forward: {wf['folds']} "
        f"folds after the first {wf['min_train_fraction']:.0%} of days, gap {wf['gap_days']} days. "
        f"Took {report['elapsed_s']} s.",
        "",
        "## Data",
        "",
        _row("symbol", "used days", "from", "to", "up share", "missing features", "out of bounds",
             "inside threshold"),
        _row("---", "---:", "---", "---", "---:", "---:", "---:", "---:"),
    ]  # fmt: skip
    for symbol, c in report["symbols"].items():
        lines.append(_row(symbol, c["used"], c["from"], c["to"], c["up_share"], c["missing_features"],
                          c["out_of_bounds"], c["inside_threshold"]))  # fmt: skip
    metrics = ["accuracy", "balanced acc.", "ROC AUC", "Brier"]
    lines += [
        "",
        "## Walk-forward results (all test blocks together)",
        "",
        _row("scope", "model", "version", *metrics, "majority acc.", "majority Brier", "always-up acc.",
             "always-up Brier"),
        _row("---", "---", "---", *["---:"] * 8),
    ]  # fmt: skip
    for scope, result in report["scopes"].items():
        for kind, entry in _trained(result):
            o = entry["walk_forward"]
            majority, always_up = o["majority"], o["always_up"]
            lines.append(_row(scope, kind, entry["version"], *_metric_cells(o["model"]),
                              _fmt(majority["accuracy"]), _fmt(majority["brier"], 4),
                              _fmt(always_up["accuracy"]), _fmt(always_up["brier"], 4)))  # fmt: skip
    if report["failures"]:
        lines += ["", "## Failed", "", *(f"- {failure}" for failure in report["failures"])]
    lines += ["", "## Per fold", ""]
    for scope, result in report["scopes"].items():
        for kind, entry in _trained(result):
            lines += [
                f"### {scope} {kind}",
                "",
                _row("fold", "test from", "test to", "rows", *metrics, "majority acc."),
                _row("---:", "---", "---", *["---:"] * 6),
            ]
            for fold in entry["folds"]:
                test, majority = fold["test"], fold["majority"]
                lines.append(_row(fold["fold"], test["from"], test["to"], test["rows"],
                                  *_metric_cells(fold["model"]), _fmt(majority["accuracy"])))  # fmt: skip
            lines.append("")
    return "\n".join(lines) + "\n"
