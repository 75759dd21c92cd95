"""``tradingctl backtest``: the stack's decisions and paper trades over history, in one process.

No sockets, no Redis, no SQLite files: the price files are read once, the models are trained on
the bars before ``--from`` (as the replay trains them; kept in a cache keyed by the files and the
settings), every symbol's predictions are computed over its whole series at once
(``decisions.py``), and the days are walked once through paper trading's engine and ledger
(``walk.py``). The config is the replay's (``history_tables``) with ``--config`` merged over it,
so both run the same settings, and the schedule's prediction rounds and end-of-day snapshot are
the scheduler's.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pandas as pd

from services.asx.calendar import AsxCalendar
from services.backtest.calibrate import Policy, WalkForward, calibrated
from services.backtest.decisions import (
    IndexContext,
    Made,
    Models,
    RoundInputs,
    Rounds,
    SymbolHistory,
    Timeline,
    decisions,
)
from services.backtest.replay import DEFAULT_SYMBOLS, Window, history_tables
from services.backtest.walk import Book, Signal, Walk, moments
from services.base.config import BASE_SECTIONS, SECTIONS, build_dataclass
from services.base.errors import ConfigError
from services.market_data.config import MarketDataConfig
from services.market_data.csv_files import CsvFormatError, read_price_csv
from services.ml_model.config import MlModelConfig
from services.ml_model.registry import POOLED, ModelRegistry
from services.paper_trading.config import PaperTradingConfig
from services.prediction.config import PredictionConfig
from services.prediction.decision import Context
from services.scheduler.config import SchedulerConfig
from services.scheduler.tasks import Task

T = TypeVar("T")
Progress = Callable[[str, float], None]  # (stage, share done 0..1)


@dataclass(frozen=True, slots=True)
class BacktestPlan(Window):
    prices: Path
    symbols: tuple[str, ...] = DEFAULT_SYMBOLS
    models: tuple[str, ...] = ("logistic",)
    overrides: Mapping[str, Any] = field(default_factory=dict)
    # Where trained models are kept between runs (None: trained afresh in a temporary place).
    model_cache: Path | None = None
    synthetic: bool = False
    # How decisions are calibrated (None: walk-forward from the plan's start).
    calibration: Policy | None = None

    def calibration_policy(self) -> Policy:
        return self.calibration if self.calibration is not None else WalkForward(self.start)

    def settings(self) -> Settings:
        """The config the run reads: the replay's, with ``overrides`` merged over it."""
        return Settings.of(history_tables(self.symbols, self.prices, self.models, self.overrides))


@dataclass(frozen=True, slots=True)
class Settings:
    """The sections of the config a run through history reads."""

    market_data: MarketDataConfig
    ml_model: MlModelConfig
    prediction: PredictionConfig
    paper_trading: PaperTradingConfig
    scheduler: SchedulerConfig

    @classmethod
    def of(cls, tables: Mapping[str, Any]) -> Settings:
        """The sections from config tables; every table is checked, those the run does not read
        too (a mistake in any is named, as ``tradingctl start`` would name it)."""
        # Imported for their sections ([manager], [sentiment]): a mistake there is named too.
        import services.management.catalog
        import services.sentiment.config  # noqa: F401

        for name, table in tables.items():
            kind = BASE_SECTIONS.get(name) or SECTIONS.get(name)
            if kind is None:
                raise ConfigError(f"unknown config section [{name}]")
            if not isinstance(table, Mapping):
                raise ConfigError(f"[{name}] must be a table of keys, got {type(table).__name__}")
            build_dataclass(kind, table, where=name)

        def section(name: str, kind: type[T]) -> T:
            return build_dataclass(kind, tables.get(name, {}), where=name)

        return cls(
            section("market_data", MarketDataConfig),
            section("ml_model", MlModelConfig),
            section("prediction", PredictionConfig),
            section("paper_trading", PaperTradingConfig),
            section("scheduler", SchedulerConfig),
        )


@dataclass(frozen=True, slots=True)
class BacktestRun:
    plan: BacktestPlan
    sessions: list[date]
    decisions: list[Made]  # each new decision once, in time order: the signals paper trading got
    book: Book
    timings: dict[str, float]
    training: dict[str, Any]
    calibration: dict[str, Any]  # how the decisions were calibrated


@dataclass(frozen=True, slots=True)
class Prepared:
    """Everything of a back-test that no decision weight, threshold or trading rule changes:
    prices, calendar, schedule, and each symbol's decision inputs at each round."""

    calendar: AsxCalendar
    timelines: dict[str, Timeline]
    inputs: list[RoundInputs]
    rounds: list[datetime]
    end_of_day: list[datetime]
    training: dict[str, Any]
    # Calibration schedules already fitted, for the settings of a sweep that share them.
    calibrations: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)


def prepare(plan: BacktestPlan, settings: Settings, progress: Progress = lambda _s, _d: None) -> Prepared:
    """Read the prices, train (or load) the models, and work out every symbol's inputs."""
    calendar = AsxCalendar()
    if not calendar.sessions_between(plan.start, plan.end):
        raise ConfigError(f"no ASX session between {plan.start} and {plan.end}")
    context_symbols = (settings.ml_model.market_symbol, settings.market_data.context_symbol)
    bars = read_prices(plan.prices, (*plan.symbols, *context_symbols), plan.end)
    progress("training models", 0.0)
    started = time.perf_counter()
    models, training = trained_models(plan, settings.ml_model, bars)
    training = {**training, "seconds": round(time.perf_counter() - started, 3)}
    rounds = task_times(settings.scheduler, "prediction", "generate_predictions", calendar, plan)
    eods = task_times(settings.scheduler, "paper_trading", "end_of_day_sync", calendar, plan)
    timelines = {symbol: Timeline.of(frame, calendar) for symbol, frame in bars.items()}
    index = IndexContext(timelines[settings.market_data.context_symbol], settings.market_data)
    inputs = []
    by_times: dict[tuple[datetime, ...], tuple[Rounds, list[Context]]] = {}
    for i, symbol in enumerate(plan.symbols):
        progress(f"predicting {symbol}", i / len(plan.symbols))
        history = SymbolHistory(
            symbol,
            bars[symbol],
            bars[settings.ml_model.market_symbol],
            timelines[symbol],
            models.get(symbol),
            settings.market_data,
            settings.ml_model,
        )
        times = tuple(t for t in sorted(rounds) if symbol in rounds[t])
        if times not in by_times:  # every symbol has the same rounds, unless a task names some
            every = Rounds.of(times, calendar)
            by_times[times] = (every, index.at(every))
        every, contexts = by_times[times]
        inputs.append(history.inputs(every, contexts, settings.prediction))
    return Prepared(calendar, timelines, inputs, sorted(rounds), sorted(eods), training)


def trade(
    prepared: Prepared,
    window: Window,
    prediction: PredictionConfig,
    paper_trading: PaperTradingConfig,
    calibration: Policy,
    progress: Progress = lambda _s, _d: None,
) -> tuple[list[Made], Book]:
    """The decisions sent as signals and paper trading's book over ``window``, from a fresh
    account at its start, each calibrated as ``calibration`` says."""
    first, end = window.begins_at, window.ends_at
    schedule = calibration.schedule(prepared.inputs, prediction, window, prepared.calibrations)
    made: dict[datetime, list[Made]] = {}
    for inputs in prepared.inputs:
        for decision in calibrated(decisions(inputs, prediction, first, end), schedule):
            made.setdefault(decision.at, []).append(decision)
    calendar = prepared.calendar
    walk = Walk(paper_trading, calendar, _price_at(prepared.timelines), first)
    sent_decisions: list[Made] = []
    sent: set[tuple[Any, ...]] = set()
    rounds = [t for t in prepared.rounds if first <= t < end]
    eods = [t for t in prepared.end_of_day if first <= t < end]
    steps = moments(calendar, calendar.sessions_between(window.start, window.end), rounds, eods)
    for step, (now, kind) in enumerate(steps):
        if step % 500 == 0:
            progress("paper trading", step / len(steps))
        if kind == "open":
            walk.open(now)
        elif kind == "eod":
            walk.end_of_day(now)
        else:
            for decision in made.get(now, []):
                # The stack stores and sends a decision on the same inputs once (prediction's signal id).
                signal_key = (decision.symbol, decision.key, decision.signal, round(decision.confidence, 6))
                if signal_key in sent:
                    continue
                sent.add(signal_key)
                sent_decisions.append(decision)
                walk.signal(
                    Signal(decision.symbol, now, decision.signal, decision.probability, decision.cases)
                )
    return sent_decisions, walk.finish()


def run_backtest(plan: BacktestPlan, progress: Progress = lambda _stage, _done: None) -> BacktestRun:
    """The whole back-test; ``ConfigError`` naming the file or setting when something cannot run."""
    if plan.end < plan.start:
        raise ConfigError(f"--to {plan.end} is before --from {plan.start}")
    settings = plan.settings()
    clock = time.perf_counter()
    prepared = prepare(plan, settings, progress)
    timings = {"prepare_s": time.perf_counter() - clock, "training_s": prepared.training["seconds"]}
    clock = time.perf_counter()
    policy = plan.calibration_policy()
    sent, book = trade(prepared, plan, settings.prediction, settings.paper_trading, policy, progress)
    timings["paper_trading_s"] = time.perf_counter() - clock
    progress("done", 1.0)
    sessions = prepared.calendar.sessions_between(plan.start, plan.end)
    return BacktestRun(plan, sessions, sent, book, timings, prepared.training, policy.describe(plan))


def _price_at(timelines: Mapping[str, Timeline]) -> Callable[[str, datetime], tuple[float, str] | None]:
    known: dict[tuple[str, datetime], tuple[float, str] | None] = {}

    def price_at(symbol: str, now: datetime) -> tuple[float, str] | None:
        """The latest price market data shows then: the same for every order and mark of a moment."""
        if (symbol, now) not in known:
            known[symbol, now] = timelines[symbol].latest_price(now)
        return known[symbol, now]

    return price_at


def read_prices(directory: Path, symbols: Sequence[str], last: date) -> dict[str, pd.DataFrame]:
    """Each symbol's bars up to ``last``; a missing or unreadable file is a ``ConfigError``
    naming it and the problem."""
    bars = {}
    for symbol in dict.fromkeys(symbols):
        path = directory / f"{symbol}.csv"
        if not path.is_file():
            raise ConfigError(f"no price file for {symbol}: {path} does not exist")
        try:
            frame = read_price_csv(path)
        except CsvFormatError as exc:
            raise ConfigError(str(exc)) from None
        bars[symbol] = frame[frame.index <= last.isoformat()]
    return bars


def task_times(
    scheduler: SchedulerConfig, service: str, method: str, calendar: AsxCalendar, plan: BacktestPlan
) -> dict[datetime, tuple[str, ...]]:
    """When the schedule calls ``service.method`` within the plan, with the symbols each call
    names (all of the plan's when it names none)."""
    times: dict[datetime, tuple[str, ...]] = {}
    for task in scheduler.configured_tasks().values():
        if task.service != service or task.method != method:
            continue
        symbols = tuple(task.params.get("symbols") or plan.symbols)
        for when in fire_times(task, calendar, plan.begins_at, plan.ends_at):
            times[when] = tuple(dict.fromkeys((*times.get(when, ()), *symbols)))
    return times


def fire_times(task: Task, calendar: AsxCalendar, first: datetime, end: datetime) -> list[datetime]:
    """Every fire time of ``task`` from ``first`` up to ``end`` (excluded)."""
    found: list[datetime] = []
    after = first - timedelta(microseconds=1)
    while True:
        batch = [t for t in task.fire_times(calendar, after) if t < end]
        if not batch:
            return found
        found.extend(batch)
        after = batch[-1]


# -- models ----------------------------------------------------------------------------------


def trained_models(
    plan: BacktestPlan, config: MlModelConfig, bars: Mapping[str, pd.DataFrame]
) -> tuple[dict[str, Models], dict[str, Any]]:
    """The models serving each symbol, trained on the bars before ``plan.start`` (from the cache
    when the same files and settings trained them before), and what training said."""
    from services.ml_model.training import run_training

    cut = plan.start.isoformat()
    before = {symbol: frame[frame.index < cut] for symbol, frame in bars.items()}
    key = _training_key(plan, config, before)
    root = plan.model_cache / key if plan.model_cache else None
    report: dict[str, Any] = {"cached": False, "failures": []}
    if root is not None and (root / "training.json").is_file():
        report = {**orjson.loads((root / "training.json").read_bytes()), "cached": True}
    else:
        import tempfile

        scratch = Path(tempfile.mkdtemp(prefix="backtest-models-"))
        index = before[config.market_symbol]
        symbols = {s: before[s] for s in plan.symbols}
        try:
            trained = run_training(
                config,
                symbols,
                index,
                ModelRegistry(scratch / "models"),
                now=plan.begins_at,
                source=f"price files in {plan.prices} before {cut}",
                activate=True,
            )
            report = {"cached": False, "failures": list(trained["failures"])}
        except ValueError as exc:
            report = {"cached": False, "failures": [f"training failed: {exc}"]}
        (scratch / "training.json").write_bytes(orjson.dumps({"failures": report["failures"]}))
        if root is None:
            root = scratch
        else:
            root.parent.mkdir(parents=True, exist_ok=True)
            if root.exists():
                shutil.rmtree(root)
            scratch.replace(root)  # whole or not at all: a run killed while training leaves no cache
    registry = ModelRegistry(root / "models")
    label = {"horizon_days": config.horizon, "threshold": config.threshold}
    serving: dict[str, Models] = {}
    scopes = registry.scopes() if (root / "models").exists() else []
    for symbol in plan.symbols:
        scope = symbol if symbol in scopes else POOLED if POOLED in scopes else None
        if scope is not None:
            names = registry.model_names(scope)
            serving[symbol] = Models(scope, [registry.load(scope, name, label=label) for name in names])
    return serving, report


def _training_key(plan: BacktestPlan, config: MlModelConfig, before: Mapping[str, pd.DataFrame]) -> str:
    digest = hashlib.sha256(repr(config).encode())
    digest.update(repr(sorted(plan.symbols)).encode())
    for symbol in sorted(before):
        digest.update(symbol.encode())
        digest.update(pd.util.hash_pandas_object(before[symbol], index=True).to_numpy().tobytes())
    return digest.hexdigest()[:24]
