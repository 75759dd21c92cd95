"""The ``[ml_model]`` config section: labels, model kinds, walk-forward folds, live tracking."""

from __future__ import annotations

from dataclasses import dataclass

from services.base.config import register_section

BIG4 = ("CBA.AX", "WBC.AX", "ANZ.AX", "NAB.AX")
MODEL_KINDS = ("logistic", "random_forest", "gradient_boosting", "ridge")
DEFAULT_MODELS = ("logistic", "random_forest", "gradient_boosting")


@dataclass(frozen=True, slots=True, kw_only=True)
class MlModelConfig:
    symbols: tuple[str, ...] = BIG4
    market_symbol: str = "^AXJO"
    # Label: the return over the next ``horizon`` trading days is "up" above +threshold and
    # "down" below -threshold; days in between are left out of training and live accuracy.
    horizon: int = 5
    threshold: float = 0.005
    models: tuple[str, ...] = DEFAULT_MODELS
    pooled: bool = True
    # A model of each symbol's own; false: the pooled models serve every symbol (a wide universe).
    per_symbol: bool = True
    # Walk-forward: the first ``min_train_fraction`` of the days only ever trains; the rest is cut
    # into ``folds`` test blocks, each trained on everything before it less a gap of at least
    # ``horizon`` days, so no training label looks into the test block.
    folds: int = 5
    min_train_fraction: float = 0.4
    gap: int = 5
    calibration: str = "sigmoid"
    random_state: int = 7
    train_jobs: int = 2
    # A new active version on disk (written by ``tradingctl train``) is picked up this often.
    reload_interval_s: float = 10.0
    # Live tracking: stored predictions are scored once their horizon has passed.
    score_interval_s: float = 600.0
    rolling_window: int = 50
    keep_predictions_days: int = 730
    market_data_timeout_s: float = 20.0
    history_days: int = 400

    def __post_init__(self) -> None:
        unknown = [kind for kind in self.models if kind not in MODEL_KINDS]
        if unknown:
            raise ValueError(f"unknown model kind(s) {', '.join(unknown)}; known: {', '.join(MODEL_KINDS)}")
        if not self.models:
            raise ValueError("models must name at least one model kind")
        if not self.per_symbol and not self.pooled:
            raise ValueError("per_symbol and pooled cannot both be false: no model would be trained")
        if self.horizon < 1 or self.threshold < 0:
            raise ValueError("horizon must be >= 1 and threshold >= 0")
        if self.folds < 1 or not 0 < self.min_train_fraction < 1:
            raise ValueError("folds must be >= 1 and min_train_fraction between 0 and 1")
        if self.calibration not in ("sigmoid", "isotonic"):
            raise ValueError("calibration must be sigmoid or isotonic")
        if self.rolling_window < 1 or self.train_jobs < 1:
            raise ValueError("rolling_window and train_jobs must be >= 1")
        if self.history_days < 300:
            raise ValueError("history_days must be >= 300: SMA200 needs 200 trading days")

    @property
    def walk_forward_gap(self) -> int:
        return max(self.gap, self.horizon)


register_section("ml_model", MlModelConfig)
