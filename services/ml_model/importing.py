"""``tradingctl models import FILE.pkl``: a user's own scikit-learn model, brought in once, safely.

A pickle can run any code when it is loaded, so the product never unpickles anything but this: a
file the user names, with ``--trust-pickle`` said explicitly. What it holds must be a scikit-learn
classifier with ``predict_proba`` over exactly the product's features (``FEATURE_NAMES``, in order)
and the classes 0 and 1 (down, up). It is then stored the way every model is (skops, a card, the
registry's checks; types outside the allow-list are refused), so nothing unpickles it again.

The card's walk-forward figures are the estimator's own parameters refitted fold by fold on the
stored bars (``sklearn.base.clone``), as a trained model's are; the model served is the one in the
file, whose own training data the product cannot know.
"""

from __future__ import annotations

import hashlib
import pickle
import shutil
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone  # type: ignore[import-untyped]

from services.base.clock import utc_iso
from services.base.errors import ConfigError
from services.ml_model.config import MlModelConfig
from services.ml_model.features import FEATURE_NAMES, FEATURES
from services.ml_model.models import for_serving, native_importance
from services.ml_model.registry import ModelRegistry, ModelRejected, check_model_name, check_scope
from services.ml_model.training import _stack, build_dataset, library_versions
from services.ml_model.walkforward import evaluate


def read_pickle(path: Path, *, trusted: bool) -> tuple[Any, str]:
    """The object in ``path`` and the file's sha256; only when the user said ``trusted``."""
    if not trusted:
        raise ConfigError(
            f"{path} is a pickle, which can run any code when loaded: pass --trust-pickle if it is "
            "your own file and you trust it"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from None
    try:
        model = pickle.loads(data)  # the user vouched for this file (--trust-pickle)
    except Exception as exc:  # a damaged or foreign file raises anything
        raise ConfigError(f"{path}: not a loadable pickle: {type(exc).__name__}: {exc}") from None
    return model, hashlib.sha256(data).hexdigest()


def check_estimator(model: Any) -> None:
    """``ConfigError`` saying why ``model`` cannot serve as an up/down model of these features."""
    kind = type(model).__name__
    if not hasattr(model, "get_params") or not hasattr(model, "fit"):
        raise ConfigError(f"the pickle holds a {kind}, not a scikit-learn estimator")
    if not hasattr(model, "predict_proba"):
        raise ConfigError(f"{kind} has no predict_proba: it cannot say how likely a rise is")
    classes = getattr(model, "classes_", None)
    if classes is None or not np.array_equal(classes, [0, 1]):
        raise ConfigError(f"{kind} must be fitted on the classes 0 (down) and 1 (up), has {classes}")
    count = getattr(model, "n_features_in_", None)
    if count != len(FEATURE_NAMES):
        raise ConfigError(f"{kind} takes {count} features; the product computes {len(FEATURE_NAMES)}")
    names = getattr(model, "feature_names_in_", None)
    if names is not None and list(names) != list(FEATURE_NAMES):
        raise ConfigError(f"{kind} was fitted on other features: {', '.join(map(str, names))[:300]}")


def import_model(
    path: Path,
    *,
    scope: str,
    name: str,
    trusted: bool,
    bars: Mapping[str, pd.DataFrame],
    index_bars: pd.DataFrame,
    config: MlModelConfig,
    registry: ModelRegistry,
    now: datetime,
    source: str,
    activate: bool = True,
) -> dict[str, Any]:
    """Check, evaluate and register the model in ``path``; what was stored."""
    scope, name = check_scope(scope, field="--symbol"), check_model_name(name, field="--name")
    model, digest = read_pickle(path, trusted=trusted)
    check_estimator(model)
    datasets = [
        build_dataset(s, frame, index_bars, horizon=config.horizon, threshold=config.threshold)
        for s, frame in bars.items()
    ]
    rows = _stack([d for d in datasets if len(d.y)])
    evaluation = evaluate(
        lambda: clone(model), rows.X, rows.y, rows.dates,
        folds=config.folds, min_train_fraction=config.min_train_fraction, gap=config.walk_forward_gap,
        label_end=rows.label_end,
    )  # fmt: skip
    window = {
        "from": rows.dates.min().date().isoformat(),
        "to": rows.dates.max().date().isoformat(),
        "rows": len(rows.y),
        "up_share": round(float(rows.y.mean()), 4),
        "symbols": list(bars),
    }
    card = {
        "kind": type(model).__name__,
        "imported": {"file": path.name, "sha256": digest, "from": source},
        "probabilities": True,
        "features": list(FEATURE_NAMES),
        "feature_bounds": {f.name: [f.low, f.high] for f in FEATURES},
        "label": {"horizon_days": config.horizon, "threshold": config.threshold},
        "training_window": window,
        "walk_forward": {
            "overall": evaluation.overall,
            "folds": evaluation.folds,
            "note": "its parameters refitted fold by fold on these bars; the model served is the "
            "imported fit, whose training data is not known",
        },
        "importance": {"permutation": None, "native": native_importance(model, FEATURE_NAMES)},
        "libraries": library_versions(),
        "trained_at": utc_iso(now),
    }
    version = registry.save(scope, name, for_serving(model), card)
    try:
        registry.load(scope, name, version)  # it reads back through every check, skops's allow-list too
    except ModelRejected as exc:
        shutil.rmtree(registry.root / scope / name / version)
        raise ConfigError(f"{path} cannot be stored safely: {exc.message}") from None
    if activate:
        registry.activate(scope, name, version, verify=False)
    return {"scope": scope, "name": name, "version": version, "walk_forward": evaluation.overall}
