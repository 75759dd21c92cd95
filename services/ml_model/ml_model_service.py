"""The ML model service: serves the registry's active models, ensembles them, tracks them live.

At start it loads every active version under ``models/`` (each verified: hash, feature list,
allowed types); every ``reload_interval_s`` it looks for a newly activated version (written by
``tradingctl train``) and swaps it in, publishing ``ml_model_update``. A version that fails to
load is reported and the one in memory stays in use.

A symbol is served by its own (bank-specific) models when it has any, else by the pooled ones.
Features come from the caller, checked feature by feature, or, when left out, are computed from
the market data service's bars with the same function training used.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any, NotRequired, TypedDict

import numpy as np
import pandas as pd

from services.asx.calendar import SYDNEY, AsxCalendar
from services.base.config import Settings
from services.base.db import migrate
from services.base.errors import DependencyUnavailable, InvalidParams, NotFound, RequestError, TradingError
from services.base.events import EventType
from services.base.rpc import RpcClient, rpc_method
from services.base.service import BaseService, Check, ServiceState
from services.market_data.bars import from_columns
from services.ml_model.config import MlModelConfig
from services.ml_model.features import (
    FEATURE_NAMES,
    FEATURES,
    INDEX_TOLERANCE,
    check_row,
    feature_frame,
    latest_row,
)
from services.ml_model.models import has_probabilities, probability_up, vote_probability
from services.ml_model.registry import (
    POOLED,
    LoadedModel,
    ModelRegistry,
    ModelRejected,
    check_model_name,
    check_scope,
    check_version,
)
from services.ml_model.schema import MIGRATIONS
from services.ml_model.tracking import ENSEMBLE, PredictionLog, PredictionRow

log = logging.getLogger("services.ml_model")

MAX_BATCH = 1000
PERFORMANCE_WAIT_S = 5.0


class EnsembleItem(TypedDict):
    symbol: str
    features: dict[str, Any]
    as_of: NotRequired[date]


class MlModelService(BaseService):
    name = "ml_model"
    uses_database = True

    def __init__(self, settings: Settings, *, calendar: AsxCalendar | None = None, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self.config = settings.section("ml_model", MlModelConfig)
        self.calendar = calendar or AsxCalendar()
        self.registry = ModelRegistry(self.home.models)
        # Models are served only for the label they were trained on.
        self.label = {"horizon_days": self.config.horizon, "threshold": self.config.threshold}
        # Held while a version is loaded and swapped in, so a reload and load_model do not cross.
        self._swap = asyncio.Lock()
        # (scope, model name) -> the version in use.
        self.loaded: dict[tuple[str, str], LoadedModel] = {}
        # (scope, model name) -> (the ACTIVE file's stamp when it last failed, the error).
        self.load_errors: dict[tuple[str, str], tuple[float | None, str]] = {}
        self._market_data: RpcClient | None = None
        self._scoring: asyncio.Task[None] | None = None
        self._last_scoring_error: str | None = None
        self._loading: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def _start(self) -> None:
        assert self.db is not None
        await self.db.run(lambda conn: migrate(conn, MIGRATIONS))
        self.tracking = PredictionLog(self.db, horizon=self.config.horizon, threshold=self.config.threshold)
        self._market_data = self.peer("market_data", timeout=self.config.market_data_timeout_s)
        # Loaded after the socket opens: health answers "loading" at once, so a slow load (a busy
        # machine, many models) never makes the manager give up on the service.
        self._loading = self.spawn(self._load_at_start(), name="load", on_clock=True)
        self.spawn(self._reload_forever(), name="reload", on_clock=True)
        self.spawn(self._score_forever(), name="score", on_clock=True)

    async def _load_at_start(self) -> None:
        await self._reload(publish=False)
        log.info(
            "models in use: %s",
            ", ".join(f"{s}/{n} {m.version}" for (s, n), m in self.loaded.items()) or "none",
        )

    @property
    def loading(self) -> bool:
        """Whether the models on disk are still being loaded at start."""
        return self._loading is not None and not self._loading.done()

    async def _stop(self) -> None:
        if self._market_data is not None:
            await self._market_data.close()

    async def _reload_forever(self) -> None:
        while True:
            await self.clock.sleep(self.config.reload_interval_s)
            try:
                await self._reload(publish=True)
            except Exception:  # e.g. models/ unreadable: logged, tried again next time
                log.exception("looking for new model versions failed")

    async def _reload(self, *, publish: bool) -> None:
        """Load every active version on disk that differs from the one in memory."""
        for scope in self.registry.scopes():
            for name in self.registry.model_names(scope):
                async with self._swap:
                    await self._reload_one(scope, name, publish=publish)

    async def _reload_one(self, scope: str, name: str, *, publish: bool) -> None:
        key = (scope, name)
        version = self.registry.active_version(scope, name)
        current = self.loaded.get(key)
        if version is None:
            return
        if current is not None and current.version == version:
            self.load_errors.pop(key, None)  # pointed back at the version in use
            return
        stamp = self.registry.active_stamp(scope, name)
        failed = self.load_errors.get(key)
        if failed is not None and failed[0] == stamp:
            return  # the same failed pointer: not retried until it changes
        try:
            model = await asyncio.to_thread(self.registry.load, scope, name, version, label=self.label)
        except (ModelRejected, NotFound, InvalidParams) as exc:
            self.load_errors[key] = (stamp, exc.message)
            kept = f"; keeping {current.version}" if current else ""
            log.error("cannot load %s/%s %s: %s%s", scope, name, version, exc.message, kept)
            return
        await self._use(model, publish=publish)

    async def _use(self, model: LoadedModel, *, publish: bool) -> None:
        previous = self.loaded.get(model.key)
        self.loaded[model.key] = model
        self.load_errors.pop(model.key, None)
        log.info("using %s/%s %s (was %s)", model.scope, model.name, model.version,
                 previous.version if previous else "none")  # fmt: skip
        if publish:
            overall = model.card.get("walk_forward", {}).get("overall", {}).get("model", {})
            await self.bus.publish(
                EventType.ML_MODEL_UPDATE,
                {
                    "scope": model.scope,
                    "model": model.name,
                    "version": model.version,
                    "previous_version": previous.version if previous else None,
                    "trained_at": model.card.get("trained_at"),
                    "walk_forward": {
                        k: overall.get(k) for k in ("accuracy", "balanced_accuracy", "roc_auc", "brier")
                    },
                },
            )

    async def _score_forever(self) -> None:
        while True:
            await self._score_due()
            await self.clock.sleep(self.config.score_interval_s)

    async def _score_due(self) -> None:
        """Score stored predictions whose horizon has passed: one run at a time, shared."""
        if self._scoring is None or self._scoring.done():
            self._scoring = self.spawn(self._score_once(), name="score-run")
        await asyncio.shield(self._scoring)

    async def _score_once(self) -> None:
        """Never raises: what went wrong is kept in ``_last_scoring_error`` for health."""
        problem = None
        try:
            today = self._today()
            for symbol, first in (await self.tracking.due(today)).items():
                try:
                    bars = await self._history(symbol, date.fromisoformat(first) - timedelta(days=7))
                except RequestError as exc:  # market data does not serve it: never scorable
                    closed = await self.tracking.mark_unscorable(symbol, exc.message, self.clock.now())
                    log.warning("%d predictions for %s cannot be scored: %s", closed, symbol, exc.message)
                    continue
                self.stats.incr(
                    "predictions.scored", await self.tracking.score(symbol, bars, self.clock.now())
                )
            await self.tracking.prune(today - timedelta(days=self.config.keep_predictions_days))
        except TradingError as exc:  # market data down or slow: tried again next time
            problem = exc.message
        except Exception as exc:
            log.exception("scoring predictions failed")
            problem = f"{type(exc).__name__}: {exc}"
        self._last_scoring_error = problem

    # -- RPC ------------------------------------------------------------------------------

    @rpc_method(idempotent=True)
    def list_available_models(self) -> dict[str, Any]:
        """Every model in the registry: versions on disk, the active one, the one in use, its figures."""
        models = []
        for scope in self.registry.scopes():
            for name in self.registry.model_names(scope):
                loaded = self.loaded.get((scope, name))
                card = loaded.card if loaded else {}
                overall = card.get("walk_forward", {}).get("overall", {})
                failed = self.load_errors.get((scope, name))
                models.append(
                    {
                        "scope": scope,
                        "model": name,
                        "versions": self.registry.versions(scope, name),
                        "active_version": self.registry.active_version(scope, name),
                        "loaded_version": loaded.version if loaded else None,
                        "probabilities": has_probabilities(loaded.model) if loaded else None,
                        "trained_at": card.get("trained_at"),
                        "training_window": card.get("training_window"),
                        "walk_forward": overall.get("model"),
                        "baselines": {k: overall.get(k) for k in ("majority", "always_up")}
                        if overall
                        else None,
                        "load_error": failed[1] if failed else None,
                    }
                )
        return {"models": models, "features": list(FEATURE_NAMES), "horizon_days": self.config.horizon}

    @rpc_method
    async def load_model(self, model_name: str, symbol: str, version: str | None = None) -> dict[str, Any]:
        """Verify and activate a version (the newest on disk by default) for a symbol or 'pooled'.

        A version that fails any check is an error (-32002, ``data.reason``) and changes nothing."""
        scope, name = check_scope(symbol), check_model_name(model_name)
        if version is None:
            versions = self.registry.versions(scope, name)
            if not versions:
                raise NotFound(f"no {name} model for {scope} in the registry", scope=scope, model=name)
            version = versions[-1]
        version = check_version(version)
        async with self._swap:
            model = await asyncio.to_thread(self.registry.load, scope, name, version, label=self.label)
            await asyncio.to_thread(self.registry.activate, scope, name, version, verify=False)
            current = self.loaded.get(model.key)
            if current is None or current.version != version:
                await self._use(model, publish=True)
            self.load_errors.pop(model.key, None)
        return {"scope": scope, "model": name, "version": version, "trained_at": model.card.get("trained_at")}

    @rpc_method
    async def predict(
        self,
        model_name: str,
        features: dict[str, Any] | None = None,
        symbol: str | None = None,
        as_of: date | None = None,
    ) -> dict[str, Any]:
        """P(up over the horizon) from one model. Without ``features``, they are computed from
        the market data service's bars for ``symbol``. The symbol's own model, else the pooled one."""
        name = check_model_name(model_name)
        symbol, row, as_of = await self._inputs(features, symbol, as_of)
        scope = self._scope_for(symbol, name)
        model = self.loaded[(scope, name)]
        p_up = float((await asyncio.to_thread(model_probabilities, model, row[None, :]))[0])
        if symbol is not None:
            await self.tracking.record(
                [PredictionRow(symbol, name, as_of.isoformat(), scope, model.version, p_up)], self.clock.now()
            )
        return {
            "symbol": symbol,
            "model": name,
            "scope": scope,
            "version": model.version,
            "as_of": as_of.isoformat(),
            "probability_up": round(p_up, 6),
            "direction": "up" if p_up >= 0.5 else "down",
            "probabilities": has_probabilities(model.model),
            "horizon_days": self.config.horizon,
        }

    # Idempotent: its tracking row is one per symbol, model and session (a resend only counts).
    @rpc_method(idempotent=True)
    async def get_ensemble_prediction(
        self, features: dict[str, Any] | None = None, symbol: str | None = None, as_of: date | None = None
    ) -> dict[str, Any]:
        """Every model serving the symbol together: P(up), each model's output, agreement, confidence.

        Without ``features`` they are computed from market data for ``symbol``."""
        return (await self._ensembles([await self._inputs(features, symbol, as_of)]))[0]

    @rpc_method
    async def get_ensemble_predictions(self, items: list[EnsembleItem]) -> dict[str, Any]:
        """``get_ensemble_prediction`` for many symbols in one call (features given for each)."""
        if not 1 <= len(items) <= MAX_BATCH:
            raise InvalidParams(f"items must hold 1 to {MAX_BATCH} entries", field="items")
        session = self._last_session()
        requests = []
        for i, item in enumerate(items):
            where = f"items[{i}]"
            requests.append((
                self._symbol(item["symbol"], field=f"{where}.symbol"),
                check_row(item["features"], field=f"{where}.features"),
                self._as_of(item.get("as_of"), field=f"{where}.as_of") or session,
            ))  # fmt: skip
        return {"predictions": await self._ensembles(requests)}

    @rpc_method(idempotent=True)
    def get_feature_importance(self, model_name: str, symbol: str | None = None) -> dict[str, Any]:
        """Permutation importance from the last walk-forward fold, and the model's own where it has
        one: of the model serving ``symbol``; without a symbol, of the pooled model, or of every
        symbol's when there is no pooled one (``scopes``)."""
        name = check_model_name(model_name)
        if symbol is None:
            if (POOLED, name) in self.loaded:
                return self._importance(None, POOLED, name)
            scopes = sorted(scope for scope, loaded in self.loaded if loaded == name)
            if not scopes:
                raise NotFound(f"no {name} model is loaded", model=name)
            return {
                "model": name,
                "scopes": {scope: self._importance(scope, scope, name) for scope in scopes},
            }
        scope = self._scope_for(self._symbol(symbol), name)
        return self._importance(symbol, scope, name)

    def _importance(self, symbol: str | None, scope: str, name: str) -> dict[str, Any]:
        model = self.loaded[(scope, name)]
        importance = model.card.get("importance", {})
        permutation = importance.get("permutation") or {}
        means = permutation.get("mean", {})
        ranking = sorted(means, key=lambda feature: means[feature], reverse=True)
        return {
            "symbol": symbol,
            "scope": scope,
            "model": name,
            "version": model.version,
            "permutation": permutation or None,
            "native": importance.get("native"),
            "ranking": ranking,
            "meaning": {f.name: f.meaning for f in FEATURES},
        }

    @rpc_method
    async def get_model_performance(self, symbol: str) -> dict[str, Any]:
        """Walk-forward figures of the models serving ``symbol`` and their live record: each
        prediction scored once its horizon has passed, accuracy overall and rolling."""
        symbol = self._symbol(symbol)
        scoring_error = None
        try:
            # Scoring asks market data about each symbol due; answer with what is stored meanwhile.
            await asyncio.wait_for(self._score_due(), PERFORMANCE_WAIT_S)
            scoring_error = self._last_scoring_error
        except TimeoutError:
            scoring_error = f"scoring still running after {PERFORMANCE_WAIT_S:g}s; figures may lag"
        live = await self.tracking.performance(symbol, self.config.rolling_window)
        serving = self._serving(symbol)
        return {
            "symbol": symbol,
            "scope": serving[0].scope if serving else None,
            "horizon_days": self.config.horizon,
            "threshold": self.config.threshold,
            "walk_forward": {
                m.name: {"version": m.version, **m.card.get("walk_forward", {}).get("overall", {})}
                for m in serving
            },
            "live": live,
            "scoring_error": scoring_error,
        }

    @rpc_method
    async def get_features(self, symbol: str) -> dict[str, Any]:
        """The latest feature row for ``symbol`` from market data, as the models would see it."""
        symbol = self._symbol(symbol)
        as_of, features = await self._live_features(symbol)
        return {"symbol": symbol, "as_of": as_of.isoformat(), "features": _wire(features)}

    # -- predictions ----------------------------------------------------------------------

    async def _inputs(
        self, features: dict[str, Any] | None, symbol: str | None, as_of: date | None
    ) -> tuple[str | None, np.ndarray, date]:
        """(symbol, checked feature row, the session the features describe)."""
        if symbol is not None:
            symbol = self._symbol(symbol)
        as_of = self._as_of(as_of)
        if features is not None:
            return symbol, check_row(features), as_of or self._last_session()
        if symbol is None:
            raise InvalidParams("give features, or a symbol to compute them for", field="features")
        if as_of is not None:
            raise InvalidParams("as_of goes with given features; computed ones are of the last session",
                                field="as_of")  # fmt: skip
        live_as_of, live = await self._live_features(symbol)
        try:
            return symbol, check_row(live), live_as_of
        except InvalidParams as exc:  # not the caller's doing: the bars behind the features
            raise DependencyUnavailable(
                f"the bars market_data holds for {symbol} give no usable features on {live_as_of}: "
                f"{exc.message} (too few bars, a bad tick, or no {self.config.market_symbol} bar "
                f"within {INDEX_TOLERANCE.days} days)",
                service="market_data",
                feature=exc.field,
            ) from None

    async def _ensembles(
        self, requests: Sequence[tuple[str | None, np.ndarray, date]]
    ) -> list[dict[str, Any]]:
        # One predict call per model over all rows it serves, not one per row.
        groups: dict[str, list[int]] = {}
        for i, (symbol, _row, _as_of) in enumerate(requests):
            groups.setdefault(self._ensemble_scope(symbol), []).append(i)
        rows = np.vstack([row for _symbol, row, _as_of in requests])
        outputs: list[dict[str, Any]] = [{} for _ in requests]
        stored: list[PredictionRow] = []
        for scope, positions in groups.items():
            members = [m for (s, _n), m in self.loaded.items() if s == scope]
            p_by_model = await asyncio.to_thread(all_probabilities, members, rows[positions])
            for j, at in enumerate(positions):
                symbol, _row, as_of = requests[at]
                outputs[at] = ensemble_answer(
                    symbol, scope, as_of, members, [p[j] for p in p_by_model], self.config.horizon
                )
                if symbol is not None:
                    stored.extend(
                        PredictionRow(symbol, m.name, as_of.isoformat(), scope, m.version, float(p[j]))
                        for m, p in zip(members, p_by_model, strict=True)
                    )
                    stored.append(PredictionRow(symbol, ENSEMBLE, as_of.isoformat(), scope, None,
                                                outputs[at]["probability_up"]))  # fmt: skip
        if stored:
            await self.tracking.record(stored, self.clock.now())
        self.stats.incr("ensemble.rows", len(requests))
        return outputs

    async def _live_features(self, symbol: str) -> tuple[date, dict[str, Any]]:
        since = self._today() - timedelta(days=self.config.history_days)
        bars, index_bars = await asyncio.gather(
            self._history(symbol, since), self._history(self.config.market_symbol, since)
        )
        frame = await asyncio.to_thread(feature_frame, bars, index_bars)
        if frame.empty:
            raise DependencyUnavailable(
                f"market_data has no closed sessions of {symbol} since {since}", service="market_data"
            )
        as_of, features = latest_row(frame)
        return date.fromisoformat(as_of), features

    async def _history(self, symbol: str, since: date) -> pd.DataFrame:
        assert self._market_data is not None
        answer = await self._market_data.call(
            "get_history", {"symbol": symbol, "start": since.isoformat(), "max_bars": 50_000}
        )
        bars = from_columns(answer["bars"])
        # A bar of a session still in progress (partial volume, a price that is not a close) is
        # not what the models were trained on, nor a close to score against.
        return bars[bars.index <= self._last_session().isoformat()]

    # -- helpers --------------------------------------------------------------------------

    def _today(self) -> date:
        return self.clock.now().astimezone(SYDNEY).date()

    def _last_session(self) -> date:
        """The latest ASX session that has closed: the day the newest complete bar describes."""
        session = self.calendar.last_closed(self.clock.now())
        return session.date if session is not None else self._today()

    def _as_of(self, as_of: date | None, *, field: str = "as_of") -> date | None:
        if as_of is not None and as_of > self._today():
            raise InvalidParams(f"as_of {as_of} is in the future", field=field)
        return as_of

    def _symbol(self, symbol: str, *, field: str = "symbol") -> str:
        if symbol == POOLED:
            raise InvalidParams("'pooled' names the models over all symbols, not a symbol", field=field)
        return check_scope(symbol, field=field)

    def _serving(self, symbol: str | None) -> list[LoadedModel]:
        scope = self._ensemble_scope(symbol, required=False)
        return [m for (s, _n), m in self.loaded.items() if s == scope]

    def _ensemble_scope(self, symbol: str | None, *, required: bool = True) -> str:
        if symbol is not None and any(s == symbol for s, _n in self.loaded):
            return symbol
        if any(s == POOLED for s, _n in self.loaded):
            return POOLED
        if required:
            raise DependencyUnavailable(self._no_model_reason(symbol))
        return POOLED

    def _scope_for(self, symbol: str | None, name: str) -> str:
        if symbol is not None and (symbol, name) in self.loaded:
            return symbol
        if (POOLED, name) in self.loaded:
            return POOLED
        raise NotFound(
            f"no {name} model serves {symbol or 'an unnamed symbol'} (none for it, none pooled); "
            f"loaded: {', '.join(sorted({n for _s, n in self.loaded})) or 'none'}",
            model=name,
        )

    def _no_model_reason(self, symbol: str | None) -> str:
        if self.loading:
            return "the models are still loading: ask again in a moment"
        if not self.loaded and self.load_errors:
            refused = "; ".join(
                f"{scope}/{name}: {message}"
                for (scope, name), (_stamp, message) in sorted(self.load_errors.items())
            )
            return f"no model could be loaded: {refused}"[:500]
        if not self.loaded:
            return "no trained models are loaded: run `tradingctl train`"
        return f"no models serve {symbol} and there are no pooled models"

    # -- health ---------------------------------------------------------------------------

    def health_checks(self) -> dict[str, Check]:
        checks = super().health_checks()
        if self.state is not ServiceState.RUNNING:
            return checks
        if self.loading:
            checks["models"] = {"status": "degraded", "detail": f"loading ({len(self.loaded)} loaded so far)"}
        elif not self.loaded:
            checks["models"] = {"status": "degraded", "detail": self._no_model_reason(None)}
        elif self.load_errors:
            failed = ", ".join(f"{s}/{n}: {text}" for (s, n), (_stamp, text) in self.load_errors.items())
            checks["models"] = {"status": "degraded", "detail": f"kept the previous versions; {failed}"}
        else:
            checks["models"] = {"status": "ok", "detail": f"{len(self.loaded)} loaded"}
        checks["live_tracking"] = (
            {"status": "degraded", "detail": f"cannot score predictions: {self._last_scoring_error}"}
            if self._last_scoring_error
            else {"status": "ok", "detail": "scoring predictions as their horizon passes"}
        )
        return checks

    def health_figures(self) -> dict[str, Any]:
        if self.state is not ServiceState.RUNNING:
            return {}
        return {
            "models_loaded": len(self.loaded),
            "scopes": sorted({s for s, _n in self.loaded}),
            "load_errors": len(self.load_errors),
        }


def ensemble_figures(p_up: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column of ``p_up`` (a row per model): the ensemble's P(up) (the mean), its agreement
    (the share of models voting with it) and its confidence |2 P(up) - 1| x agreement, unrounded."""
    p = p_up.mean(axis=0)
    agreement = ((p_up >= 0.5) == (p >= 0.5)).sum(axis=0) / p_up.shape[0]
    return p, agreement, np.abs(2 * p - 1) * agreement


def ensemble_answer(
    symbol: str | None,
    scope: str,
    as_of: date,
    members: list[LoadedModel],
    p_up: list[float],
    horizon_days: int,
) -> dict[str, Any]:
    """The ensemble: mean P(up); agreement = share of models voting with it;
    confidence = |2 P(up) - 1| x agreement (0 = a coin toss, 1 = every model certain)."""
    p, agreement, confidence = (float(v[0]) for v in ensemble_figures(np.array(p_up, dtype=float)[:, None]))
    return {
        "symbol": symbol,
        "scope": scope,
        "as_of": as_of.isoformat(),
        "probability_up": round(p, 6),
        "direction": "up" if p >= 0.5 else "down",
        "agreement": round(agreement, 4),
        "confidence": round(confidence, 6),
        "horizon_days": horizon_days,
        "models": {
            m.name: {
                "version": m.version,
                "probability_up": round(float(q), 6),
                "direction": "up" if q >= 0.5 else "down",
                "probabilities": has_probabilities(m.model),
            }
            for m, q in zip(members, p_up, strict=True)
        },
    }


def model_probabilities(model: LoadedModel, rows: np.ndarray) -> np.ndarray:
    """P(up) for each row: the model's own probability, or its vote weighed by its walk-forward
    balanced accuracy when it has none."""
    if has_probabilities(model.model):
        return probability_up(model.model, rows)
    overall = model.card.get("walk_forward", {}).get("overall", {}).get("model", {})
    return vote_probability(model.model, rows, overall.get("balanced_accuracy"))


def all_probabilities(members: list[LoadedModel], rows: np.ndarray) -> list[np.ndarray]:
    """``model_probabilities`` of each member, in order."""
    return [model_probabilities(m, rows) for m in members]


def _wire(features: dict[str, Any]) -> dict[str, float | None]:
    return {name: None if value != value else value for name, value in features.items()}
