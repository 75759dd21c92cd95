"""The prediction service: BUY/HOLD/SELL per symbol from market data, sentiment, ML and the market.

For each symbol the inputs are fetched concurrently (the market context once per batch), combined
by ``decision.decide``, stored in SQLite together with the signal's outbox row (one transaction),
then broadcast as ``prediction_generated``; the bus's relay puts the signal on the durable
``trading:signals`` stream whenever Redis is reachable, so no signal is lost to an outage.

Each decision carries a calibrated ``probability`` that its direction is right (``calibration.py``),
with the past cases behind it: from the home's active calibration (``models/calibration/``),
else the shipped one, reloaded when a new version is activated; with none that fits the config the
signal says ``uncalibrated`` and health says why. The old formula's ``confidence`` (coverage x
margin) is kept as a detail.

Market data is the one input a prediction cannot do without (it gives the price and the
technicals): without it that symbol fails with -32000 naming it, and the rest of the batch goes on.
Sentiment and ML that fail, answer something malformed or have zero confidence are left out, the
weights renormalised, the confidence lowered and the prediction marked degraded, saying what was
missing; without a market context the sideways thresholds apply, also marked degraded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import orjson

from services.base.clock import utc_iso
from services.base.config import Settings
from services.base.db import migrate, transaction
from services.base.errors import DependencyUnavailable, InvalidParams, TradingError, code_for
from services.base.events import SIGNALS_STREAM, EventType
from services.base.outbox import Outbox
from services.base.rpc import RpcClient, rpc_method
from services.base.service import BaseService, Check, ServiceState
from services.base.symbols import configured_symbol
from services.prediction.calibration import Calibration
from services.prediction.calibration_store import CalibrationStore, shipped
from services.prediction.config import PredictionConfig
from services.prediction.decision import (
    Context,
    Decision,
    Input,
    check_reachable,
    context_for,
    decide,
    market_context,
    ml_input,
    no_context,
    sentiment_input,
    technical_input,
    unavailable,
)
from services.prediction.schema import MIGRATIONS

log = logging.getLogger("services.prediction")


@dataclass(frozen=True, slots=True)
class Cached:
    key: tuple[Any, ...]
    made: float  # monotonic seconds
    payload: dict[str, Any]


class PredictionService(BaseService):
    name = "prediction"
    uses_database = True

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self.config = settings.section("prediction", PredictionConfig)
        self._clients: dict[str, RpcClient] = {}
        self._cache: dict[str, Cached] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._alert_lock = asyncio.Lock()
        self._prediction_count = 0
        self._latest_rate: float | None = None
        self._rolling_rate: float | None = None
        self._latest_batch_at: str | None = None
        self._alert_active = False
        # The latest batch's (predictions, degraded ones, failed symbols), for health.
        self._last_batch: tuple[int, int, dict[str, str]] | None = None
        self._calibrations = CalibrationStore(self.home.models / "calibration")
        self._calibration: Calibration | None = None
        self._calibration_stamp: float | None = None
        self._calibration_problem: str | None = "not loaded yet"

    # -- lifecycle ------------------------------------------------------------------------

    async def _start(self) -> None:
        assert self.db is not None
        check_reachable(self.config)
        await self.db.run(lambda conn: migrate(conn, MIGRATIONS))
        for service in ("market_data", "sentiment", "ml_model"):
            self._clients[service] = self.peer(service, timeout=self.config.input_timeout_s)
        self._prediction_count, self._rolling_rate, self._alert_active = await self.db.run(self._load_state)
        self._refresh_calibration(first=True)

    async def _stop(self) -> None:
        for client in self._clients.values():
            await client.close()

    def _load_state(self, conn: sqlite3.Connection) -> tuple[int, float | None, bool]:
        count = int(conn.execute("SELECT count(*) FROM predictions").fetchone()[0])
        row = conn.execute("SELECT value FROM state WHERE key = 'buy_rate_alert'").fetchone()
        return count, _rolling(conn, self.config.buy_rate_window), row is not None and row[0] == "active"

    # -- RPC ------------------------------------------------------------------------------

    @rpc_method
    async def generate_predictions(
        self, symbols: list[str] | None = None, force_refresh: bool = False
    ) -> dict[str, Any]:
        """Predictions for ``symbols`` (all configured when omitted), inputs fetched concurrently.
        A symbol that fails is reported in ``errors``; the others are still predicted."""
        if symbols is not None and not symbols:
            raise InvalidParams(
                "symbols must name at least one symbol, or be left out for all", field="symbols"
            )
        named = symbols if symbols is not None else list(self.config.symbols)
        # Each symbol once, whatever its spelling: two predictions would be two signals.
        wanted = list(dict.fromkeys(self._symbol(s, field=f"symbols[{i}]") for i, s in enumerate(named)))
        self._refresh_calibration()
        batch_id = f"{utc_iso(self.clock.now())}-{secrets.token_hex(3)}"
        context = await self._context()
        outcomes = await asyncio.gather(
            *(self._predict(symbol, context, batch_id, force_refresh) for symbol in wanted),
            return_exceptions=True,
        )
        predictions: dict[str, Any] = {}
        errors: dict[str, Any] = {}
        for symbol, outcome in zip(wanted, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, TradingError):
                    log.error("prediction for %s failed", symbol, exc_info=outcome)
                self.stats.incr("predictions.failed")
                errors[symbol] = {"code": int(code_for(outcome)), "message": _message(outcome)}
            else:
                predictions[symbol] = outcome
        degraded = sum(1 for p in predictions.values() if p["degraded"])
        self._last_batch = (len(predictions), degraded, {s: e["message"] for s, e in errors.items()})
        buy_rate = await self._after_batch(list(predictions.values())) if predictions else self._buy_rate()
        return {
            "batch_id": batch_id,
            "generated_at": utc_iso(self.clock.now()),
            "predictions": predictions,
            "errors": errors,
            "buy_rate": buy_rate,
        }

    @rpc_method
    async def generate_single_prediction(self, symbol: str, force_refresh: bool = False) -> dict[str, Any]:
        """One symbol's prediction; a failure is the error itself (e.g. -32000 naming market_data)."""
        symbol = self._symbol(symbol)
        self._refresh_calibration()
        batch_id = f"{utc_iso(self.clock.now())}-{secrets.token_hex(3)}"
        prediction = await self._predict(symbol, await self._context(), batch_id, force_refresh)
        self._last_batch = (1, int(prediction["degraded"]), {})
        await self._after_batch([prediction])
        return prediction

    @rpc_method(idempotent=True)
    def get_buy_rate(self) -> dict[str, Any]:
        """Share of BUY in the latest batch and over the last ``buy_rate_window`` predictions."""
        return self._buy_rate()

    @rpc_method(idempotent=True)
    async def get_prediction_history(
        self, symbol: str | None = None, limit: int = 20
    ) -> list[dict[str, Any]]:
        """Stored predictions, newest first (one symbol, or all)."""
        if symbol is not None:
            symbol = self._symbol(symbol)
        if not 1 <= limit <= self.config.history_limit:
            raise InvalidParams(f"limit must be between 1 and {self.config.history_limit}", field="limit")

        def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            where, args = ("WHERE symbol = ?", (symbol, limit)) if symbol else ("", (limit,))
            rows = conn.execute(
                f"SELECT id, payload FROM predictions {where} ORDER BY id DESC LIMIT ?",
                args,
            ).fetchall()
            return [{**orjson.loads(payload), "id": row_id} for row_id, payload in rows]

        history: list[dict[str, Any]] = await self._db(read)
        return history

    @rpc_method(idempotent=True)
    async def get_predictions(self, after_id: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Stored predictions with an id above ``after_id``, oldest first (at most ``limit``, 1 to
        1000), in brief: every signal made, read a page at a time."""
        if not 1 <= limit <= 1000:
            raise InvalidParams("limit must be between 1 and 1000", field="limit")
        if after_id < 0:
            raise InvalidParams("after_id must be 0 or more", field="after_id")
        columns = (
            "id",
            "symbol",
            "signal",
            "confidence",
            "combined",
            "regime",
            "price",
            "price_time",
            "degraded",
            "created_at",
            "probability",
            "cases",
            "calibration",
        )

        def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                f"SELECT {', '.join(columns)} FROM predictions WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
            return [{**dict(zip(columns, row, strict=True)), "degraded": bool(row[8])} for row in rows]

        return await self._db(read)

    @rpc_method(idempotent=True)
    def clear_cache(self) -> dict[str, Any]:
        """Forget every cached prediction: the next request recomputes."""
        cleared = len(self._cache)
        self._cache.clear()
        return {"cleared": cleared}

    # -- one symbol -----------------------------------------------------------------------

    async def _predict(self, symbol: str, context: Context, batch_id: str, force: bool) -> dict[str, Any]:
        # One prediction of a symbol at a time: two concurrent callers would both miss the cache
        # and send the same signal twice.
        async with self._locks.setdefault(symbol, asyncio.Lock()):
            return await self._predict_locked(symbol, context, batch_id, force)

    async def _predict_locked(
        self, symbol: str, context: Context, batch_id: str, force: bool
    ) -> dict[str, Any]:
        answers: tuple[Any, ...] = await asyncio.gather(
            self._ask("market_data", "get_market_data", {"symbol": symbol, "bars": 0}),
            self._ask("sentiment", "analyze_sentiment", {"symbol": symbol}),
            self._ask("ml_model", "get_ensemble_prediction", {"symbol": symbol}),
            return_exceptions=True,
        )
        market_data, sentiment, ml = answers
        if isinstance(market_data, BaseException):
            raise DependencyUnavailable(
                f"market_data cannot give {symbol}'s price and indicators: {_message(market_data)}",
                service="market_data",
                symbol=symbol,
            )
        try:
            technical = technical_input(market_data, self.config)
            price, price_time = float(market_data["price"]), str(market_data["price_time"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DependencyUnavailable(
                f"market_data gave a malformed answer for {symbol}: {type(exc).__name__}: {exc}",
                service="market_data",
                symbol=symbol,
            ) from None
        if not technical.used:
            raise DependencyUnavailable(
                f"market_data has too few bars of {symbol} for indicators",
                service="market_data",
                symbol=symbol,
            )
        inputs = {
            "technical": technical,
            "sentiment": _read("sentiment", sentiment, lambda r: sentiment_input(r, self.config)),
            "ml": _read("ml", ml, ml_input),
        }
        context = context_for(context, price_time, self.config)
        # The cache key: the times of the inputs used (an unused one's time says nothing).
        key = (price_time, context.at, context.regime, *(i.at if i.used else None for i in inputs.values()))
        cached = self._cache.get(symbol)
        fresh = cached is not None and time.monotonic() - cached.made < self.config.cache_ttl_s
        if not force and cached is not None and fresh and cached.key == key:
            self.stats.incr("cache.hits")
            return {**cached.payload, "cached": True}
        decision = decide(inputs, context, self.config)
        payload = self._payload(symbol, batch_id, price, price_time, inputs, context, decision)
        await self._store(payload, signal_id(symbol, key, decision, price_time))
        self._cache[symbol] = Cached(key, time.monotonic(), payload)
        return payload

    async def _context(self) -> Context:
        try:
            return market_context(await self._ask("market_data", "get_market_context", {}))
        except TradingError as exc:
            return no_context(f"market context unavailable: {exc.message}")
        except (KeyError, TypeError, ValueError) as exc:
            return no_context(f"market context malformed: {type(exc).__name__}: {exc}")

    async def _ask(self, service: str, method: str, params: dict[str, Any]) -> Any:
        started = time.perf_counter()
        ok = False
        try:
            result = await self._clients[service].call(method, params)
            ok = True
            return result
        finally:
            # Per-input latency and errors, in ``metrics`` beside the RPC methods.
            self.stats.record_call(f"input:{service}.{method}", time.perf_counter() - started, ok)

    def _payload(
        self,
        symbol: str,
        batch_id: str,
        price: float,
        price_time: str,
        inputs: dict[str, Input],
        context: Context,
        decision: Decision,
    ) -> dict[str, Any]:
        weights = self.config.weights
        calibrated = self._calibrated(decision)
        return {
            "symbol": symbol,
            "signal": decision.signal,
            **calibrated,
            "confidence": decision.confidence,
            "combined_score": decision.combined,
            "coverage": decision.coverage,
            "regime": decision.regime,
            "volatility": context.volatility,
            "threshold": decision.threshold,
            "technical_score": inputs["technical"].details.get("score_0_100"),
            "components": {
                name: {
                    "score": i.score,
                    "confidence": round(i.confidence, 4),
                    "weight": weights[name],
                    "used": i.used,
                    "stale": i.stale,
                    "missing": i.missing,
                    "details": dict(i.details),
                }
                for name, i in inputs.items()
            },
            "reasons": [*decision.reasons, _calibration_reason(calibrated)],
            "missing": decision.missing,
            "degraded": decision.degraded,
            "inputs_at": {**{name: i.at for name, i in inputs.items()}, "market": context.at},
            "price": price,
            "price_time": price_time,
            "batch_id": batch_id,
            "ts": utc_iso(self.clock.now()),
            "cached": False,
            "repeat": False,
        }

    async def _store(self, payload: dict[str, Any], event_id: str) -> None:
        """The prediction and its signal's outbox row in one transaction, then the broadcast.

        The same decision on the same inputs was made before (a retry after a crash, or a second
        run before new prices) when its signal id is already stored: then nothing is stored or
        sent again, and ``payload`` says ``repeat``."""
        fields = (
            "symbol", "signal", "probability", "cases", "calibration", "confidence", "price", "price_time",
            "degraded", "batch_id", "ts",
        )  # fmt: skip
        signal = self.bus.event(EventType.TRADE_SIGNAL, {key: payload[key] for key in fields})
        signal = dataclasses.replace(signal, id=event_id)
        payload["event_id"] = signal.id

        def write(conn: sqlite3.Connection) -> tuple[int, bool]:
            with transaction(conn):
                row = conn.execute("SELECT id FROM predictions WHERE event_id = ?", (signal.id,)).fetchone()
                if row is not None:
                    return int(row[0]), False
                cursor = conn.execute(
                    "INSERT INTO predictions (batch_id, symbol, signal, confidence, combined, regime, price, "
                    "price_time, degraded, created_at, event_id, payload, probability, cases, calibration) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (payload["batch_id"], payload["symbol"], payload["signal"], payload["confidence"],
                     payload["combined_score"], payload["regime"], payload["price"], payload["price_time"],
                     int(payload["degraded"]), payload["ts"], signal.id, orjson.dumps(payload),
                     payload["probability"], payload["cases"], payload["calibration"]),
                )  # fmt: skip
                Outbox.add(conn, SIGNALS_STREAM, signal)
                return int(cursor.lastrowid or 0), True

        payload["id"], new = await self._db(write)
        if not new:
            payload["repeat"] = True
            self.stats.incr("signals.repeated")
            return
        self._prediction_count += 1
        self.stats.incr(f"signals.{payload['signal'].lower()}")
        self.bus.wake_relay()
        await self.bus.publish(EventType.PREDICTION_GENERATED, payload)

    # -- buy rate -------------------------------------------------------------------------

    async def _after_batch(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        """Update the buy rates; publish one ``buy_rate_alert`` when the rolling rate crosses the
        threshold, and re-arm only once it falls below threshold - hysteresis."""
        self._latest_rate = sum(1 for p in batch if p["signal"] == "BUY") / len(batch)
        self._latest_batch_at = utc_iso(self.clock.now())
        self._rolling_rate = await self._db(lambda conn: _rolling(conn, self.config.buy_rate_window))
        rate = self._rolling_rate or 0.0
        async with self._alert_lock:  # one alert per crossing, however many batches run at once
            if not self._alert_active and rate > self.config.buy_rate_threshold:
                message = (
                    f"{rate:.0%} of the last {self.config.buy_rate_window} predictions are BUY, above "
                    f"{self.config.buy_rate_threshold:.0%}: check the inputs before trusting the signals"
                )
                data = {**self._buy_rate(), "alert_active": True, "message": message}
                # Armed only once it went out: with Redis away, the next batch tries again.
                if await self.bus.publish(EventType.BUY_RATE_ALERT, data) is not None:
                    await self._set_alert(True)
            elif (
                self._alert_active and rate < self.config.buy_rate_threshold - self.config.buy_rate_hysteresis
            ):
                await self._set_alert(False)
                log.info("buy rate back to %.0f%%: alert cleared", rate * 100)
        return self._buy_rate()

    async def _set_alert(self, active: bool) -> None:
        def write(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute(
                    "INSERT INTO state (key, value) VALUES ('buy_rate_alert', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    ("active" if active else "clear",),
                )

        await self._db(write)
        self._alert_active = active

    def _buy_rate(self) -> dict[str, Any]:
        return {
            "latest": self._latest_rate,
            "rolling": self._rolling_rate,
            "window": self.config.buy_rate_window,
            "threshold": self.config.buy_rate_threshold,
            "hysteresis": self.config.buy_rate_hysteresis,
            "alert_active": self._alert_active,
            "latest_batch_at": self._latest_batch_at,
        }

    # -- calibration ----------------------------------------------------------------------

    def _refresh_calibration(self, *, first: bool = False) -> None:
        """Load the active calibration when ``ACTIVE`` changed (the shipped one when the home has
        none). A version that fails its checks or does not fit the config is refused, saying why;
        a good one loaded before stays."""
        stamp = self._calibrations.active_stamp()
        if not first and stamp == self._calibration_stamp:
            return
        self._calibration_stamp = stamp
        try:
            candidate = self._calibrations.load() if stamp is not None else shipped()
        except TradingError as exc:
            self._calibration_problem = f"calibration refused: {exc.message}"
            log.error("%s", self._calibration_problem)
            return
        problem = candidate.mismatch(self.config)
        if problem is not None:
            self._calibration_problem = problem
            log.error("calibration refused: %s", problem)
            return
        self._calibration, self._calibration_problem = candidate, None
        self._cache.clear()  # cached predictions carry the old probabilities
        log.info("using %s (%s cases)", candidate.name, candidate.fitted.get("cases"))

    def _calibrated(self, decision: Decision) -> dict[str, Any]:
        """The probability that ``decision`` is right, with its cases and interval; or says it is
        uncalibrated."""
        calibration = self._calibration
        if calibration is None:
            return {
                "probability": None, "probability_interval": None, "cases": 0,
                "calibration": "uncalibrated", "calibration_group": None,
            }  # fmt: skip
        estimate = calibration.estimate(
            np.array([{"BUY": 1, "SELL": -1}.get(decision.signal, 0)]),
            np.array([decision.combined]),
            np.array([decision.coverage]),
            np.array([decision.regime or ""], dtype=object),
        )
        return {
            "probability": round(float(estimate.probability[0]), 4),
            "probability_interval": [round(float(estimate.low[0]), 4), round(float(estimate.high[0]), 4)],
            "cases": int(estimate.cases[0]),
            "calibration": calibration.name,
            "calibration_group": str(estimate.group[0]),
        }

    # -- helpers --------------------------------------------------------------------------

    def _symbol(self, symbol: str, *, field: str = "symbol") -> str:
        return configured_symbol(symbol, self.config.symbols, setting="prediction.symbols", field=field)

    # -- health ---------------------------------------------------------------------------

    def health_checks(self) -> dict[str, Check]:
        checks = super().health_checks()
        if self.state is not ServiceState.RUNNING:
            return checks
        calibration = self._calibration
        if calibration is None:
            checks["calibration"] = {
                "status": "degraded",
                "detail": f"uncalibrated: no BUY opens a position ({self._calibration_problem})"[:500],
            }
        else:
            fitted = calibration.fitted
            detail = (
                f"{calibration.name}: {fitted.get('cases')} past decisions from {fitted.get('from')} to "
                f"{fitted.get('to')}"
            )
            if self._calibration_problem:
                detail += f"; a newer one was refused: {self._calibration_problem}"
            checks["calibration"] = {"status": "ok", "detail": detail[:500]}
        if self._last_batch is None:
            return checks
        made, degraded, failed = self._last_batch
        if failed:
            detail = f"latest batch: {len(failed)} symbol(s) failed: " + "; ".join(
                f"{symbol}: {message}" for symbol, message in failed.items()
            )
            checks["latest_batch"] = {"status": "degraded", "detail": detail[:500]}
        else:
            note = f", {degraded} degraded (inputs missing or stale)" if degraded else ""
            checks["latest_batch"] = {"status": "ok", "detail": f"latest batch: {made} predictions{note}"}
        return checks

    def health_figures(self) -> dict[str, Any]:
        if self.state is not ServiceState.RUNNING:
            return {}
        return {
            "prediction_count": self._prediction_count,
            "cache_size": len(self._cache),
            "current_buy_rate": self._rolling_rate,
            "latest_batch_buy_rate": self._latest_rate,
            "buy_rate_alert": self._alert_active,
            "calibration": self._calibration.name if self._calibration else "uncalibrated",
        }


def _rolling(conn: sqlite3.Connection, window: int) -> float | None:
    rows = conn.execute("SELECT signal FROM predictions ORDER BY id DESC LIMIT ?", (window,)).fetchall()
    return sum(1 for (signal,) in rows if signal == "BUY") / len(rows) if rows else None


def _read(name: str, answer: Any, convert: Callable[[Any], Input]) -> Input:
    """An optional input: unavailable, with the reason, when its service failed or answered
    something malformed."""
    if isinstance(answer, BaseException):
        return unavailable(name, f"{name} unavailable: {_message(answer)}")
    try:
        return convert(answer)
    except (KeyError, TypeError, ValueError) as exc:
        return unavailable(name, f"{name} answer malformed: {type(exc).__name__}: {exc}")


def _calibration_reason(calibrated: dict[str, Any]) -> str:
    if calibrated["probability"] is None:
        return "uncalibrated: no probability (see prediction's health)"
    low, high = calibrated["probability_interval"]
    return (
        f"{calibrated['calibration']}: right {calibrated['probability']:.0%} of the time in "
        f"{calibrated['cases']} past cases like it (95% {low:.0%}-{high:.0%})"
    )


def _message(exc: BaseException) -> str:
    return exc.message if isinstance(exc, TradingError) else f"{type(exc).__name__}: {exc}"


def signal_id(symbol: str, inputs_key: tuple[Any, ...], decision: Decision, price_time: str) -> str:
    """The signal's event id, derived from what it was decided on: the same decision on the same
    inputs gets the same id, so a retried prediction is recognised and not sent twice. Sortable
    like other event ids, by the time of the price it used."""
    decided = orjson.dumps([symbol, inputs_key, decision.signal, round(decision.confidence, 6)])
    millis = int(datetime.fromisoformat(price_time).timestamp() * 1000)
    return f"{millis:012x}{hashlib.sha256(decided).hexdigest()[:20]}"
