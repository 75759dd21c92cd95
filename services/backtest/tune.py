"""``tradingctl tune``: walk-forward tuning of the decision and the trading rules, on Dask.

A grid of settings (input weights, thresholds per regime, paper trading's BUY bar, stop-loss and
take-profit; ``GRID_KEYS``) is swept with the fast back-test. The period is cut into folds: each
chooses the setting with the best Sharpe ratio on its training window, and only the test window
after it is reported, so no figure comes from the days a choice was made on. Folds are anchored
(every training window starts at ``--from``) or rolling (each is ``--train-years`` long).

The back-test's inputs (prices, models trained on the bars before ``--from``, each symbol's
decision inputs at every round) are worked out once and sent to every worker; each task is one
setting on one window (``evaluate``), a pure function, so a serial run and a Dask cluster give the
same results. Each setting's signals are calibrated walk-forward (``calibrate.WalkForward``): the
weights change the combined score, so each set of them has calibrations of its own, fitted on
decisions from ``--from`` whose outcome was known before the day they serve; the BUY bar is a
calibrated probability. Reported out of sample: return, Sharpe and drawdown against equal-weight
buy-and-hold over the same days, the block-bootstrap interval of the excess return, and the
deflated Sharpe ratio (Bailey and Lopez de Prado, 2014) for the number of settings tried.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Literal

import numpy as np
from scipy.stats import kurtosis, norm, skew

from services.backtest.calibrate import Policy
from services.backtest.fast import BacktestPlan, Prepared, trade
from services.backtest.replay import Window, history_tables, merge
from services.backtest.report import TRADING_DAYS, Prices, buy_and_hold, equal_weight, excess
from services.base.config import build_dataclass
from services.base.errors import ConfigError
from services.paper_trading.analytics import max_drawdown
from services.paper_trading.config import PaperTradingConfig
from services.prediction.config import REGIMES, PredictionConfig
from services.prediction.decision import check_reachable

Mode = Literal["anchored", "rolling"]
Progress = Callable[[str, float], None]

# What a grid may sweep: the decision's weights and thresholds and paper trading's rules. Each
# leaves the decision's inputs as they are, so they are worked out once for the whole sweep.
GRID_KEYS = frozenset(
    {f"prediction.weights.{name}" for name in ("technical", "sentiment", "ml")}
    | {f"prediction.{side}_threshold.{regime}" for side in ("buy", "sell") for regime in REGIMES}
    | {"prediction.high_volatility_confidence"}
    | {
        f"paper_trading.{name}"
        for name in ("buy_confidence", "min_cases", "stop_loss", "take_profit", "position_size")
    }
)
# 288 settings: the ML input's weight, the BUY thresholds, the BUY bar (a calibrated probability)
# and the exits.
DEFAULT_GRID: dict[str, list[float]] = {
    "prediction.weights.ml": [0.1, 0.3, 0.5],
    "prediction.buy_threshold.bull": [0.10, 0.20],
    "prediction.buy_threshold.sideways": [0.15, 0.25],
    "prediction.buy_threshold.bear": [0.25, 0.35],
    "paper_trading.buy_confidence": [0.55, 0.58, 0.61],
    "paper_trading.stop_loss": [0.05, 0.10],
    "paper_trading.take_profit": [0.10, 0.20],
}
EULER_GAMMA = 0.5772156649015329


@dataclass(frozen=True, slots=True)
class Fold:
    train: Window
    test: Window


def folds(start: date, end: date, train_years: int, test_years: int, mode: Mode) -> list[Fold]:
    """Training windows of ``train_years`` (anchored: from ``start``, growing) each followed by a
    test window of ``test_years``; the last test window ends at ``end``."""
    if train_years < 1 or test_years < 1:
        raise ConfigError("--train-years and --test-years must be at least 1")
    cuts = []
    cut = _years_after(start, train_years)
    while cut <= end:
        cuts.append(cut)
        cut = _years_after(cut, test_years)
    if not cuts:
        raise ConfigError(f"{start} to {end} is shorter than one training window of {train_years} years")
    made = []
    for cut in cuts:
        train_start = start if mode == "anchored" else _years_after(cut, -train_years)
        test_end = min(_years_after(cut, test_years) - timedelta(days=1), end)
        made.append(Fold(Window(train_start, cut - timedelta(days=1)), Window(cut, test_end)))
    return made


def _years_after(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February
        return day.replace(year=day.year + years, day=28)


def grid_settings(grid: Mapping[str, Sequence[float]]) -> list[dict[str, float]]:
    """Every combination of the grid's values, in the grid's order; an unknown key is named."""
    unknown = sorted(set(grid) - GRID_KEYS)
    if unknown:
        raise ConfigError(f"the grid cannot sweep {unknown[0]!r}; it can: {', '.join(sorted(GRID_KEYS))}")
    for key, values in grid.items():
        if not values or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            raise ConfigError(f"grid {key}: give a list of numbers")
    keys = list(grid)
    return [dict(zip(keys, combination, strict=True)) for combination in itertools.product(*grid.values())]


SECTIONS: dict[str, type[Any]] = {"prediction": PredictionConfig, "paper_trading": PaperTradingConfig}


def changes(tables: Mapping[str, Any], setting: Mapping[str, float]) -> dict[str, dict[str, Any]]:
    """The config tables a setting changes: a value of a mapping (``buy_threshold.bull``) gives
    the whole mapping, the rest of it as the run's config has it."""
    changed: dict[str, dict[str, Any]] = {}
    for key, value in setting.items():
        section, name, *part = key.split(".")
        table = changed.setdefault(section, {})
        if part:
            if name not in table:
                current = build_dataclass(SECTIONS[section], tables.get(section, {}), where=section)
                table[name] = dict(getattr(current, name))
            table[name][part[0]] = value
        else:
            table[name] = value
    return changed


def configs(
    tables: Mapping[str, Any], setting: Mapping[str, float]
) -> tuple[PredictionConfig, PaperTradingConfig]:
    """The prediction and paper-trading config of one setting over the run's config tables; a
    setting the services would refuse (a range, an unreachable BUY) is a ``ConfigError``."""
    merged = merge(tables, changes(tables, setting))
    prediction = build_dataclass(PredictionConfig, merged.get("prediction", {}), where="prediction")
    check_reachable(prediction)
    paper = build_dataclass(PaperTradingConfig, merged.get("paper_trading", {}), where="paper_trading")
    return prediction, paper


@dataclass(frozen=True, slots=True)
class Task:
    """One setting on one window."""

    fold: int
    phase: Literal["train", "test"]
    setting: int
    window: Window
    calibration: Policy


@dataclass(frozen=True, slots=True)
class Outcome:
    days: list[str]
    returns: list[float]  # daily, from the window's starting capital
    fills: int

    @property
    def sharpe(self) -> float:
        """Annualised; 0 for a flat curve (no position ever held is as good as cash)."""
        return _sharpe(self.returns) * math.sqrt(TRADING_DAYS)


def _sharpe(returns: Sequence[float]) -> float:
    """Per period, with a zero risk-free rate; 0 without spread."""
    if len(returns) < 2:
        return 0.0
    spread = float(np.std(returns, ddof=1))
    return float(np.mean(returns)) / spread if spread > 0 else 0.0


def evaluate(
    task: Task, prepared: Prepared, tables: Mapping[str, Any], setting: Mapping[str, float]
) -> Outcome:
    """A setting's daily returns on a window: the unit of work a worker runs."""
    prediction, paper = configs(tables, setting)
    _sent, book = trade(prepared, task.window, prediction, paper, task.calibration)
    equity = [book.starting_cents] + [row["equity_cents"] for row in book.equity]
    returns = [b / a - 1.0 for a, b in itertools.pairwise(equity)]
    return Outcome([row["day"] for row in book.equity], returns, len(book.fills))


# Runs tasks and gives their outcomes in order: in this process, or on a Dask cluster.
Runner = Callable[
    [Sequence[Task], Prepared, Mapping[str, Any], Sequence[Mapping[str, float]], Progress], list[Outcome]
]


def serial(
    tasks: Sequence[Task],
    prepared: Prepared,
    tables: Mapping[str, Any],
    settings: Sequence[Mapping[str, float]],
    progress: Progress,
) -> list[Outcome]:
    outcomes = []
    for i, task in enumerate(tasks):
        outcomes.append(evaluate(task, prepared, tables, settings[task.setting]))
        progress("tuning", (i + 1) / len(tasks))
    return outcomes


def on_dask(client: Any) -> Runner:
    """A runner on a ``dask.distributed.Client``: the prepared inputs are sent to every worker
    once; each task is one future."""
    from dask.distributed import as_completed

    def run(
        tasks: Sequence[Task],
        prepared: Prepared,
        tables: Mapping[str, Any],
        settings: Sequence[Mapping[str, float]],
        progress: Progress,
    ) -> list[Outcome]:
        shared = client.scatter(prepared, broadcast=True, hash=False)  # a key of its own each time
        futures = [
            client.submit(evaluate, task, shared, tables, settings[task.setting], pure=False)
            for task in tasks
        ]
        for done, _future in enumerate(as_completed(futures), start=1):
            progress("tuning", done / len(tasks))
        results: list[Outcome] = client.gather(futures)
        return results

    return run


@dataclass(frozen=True, slots=True)
class TuneResult:
    grid: dict[str, list[float]]
    settings: list[dict[str, float]]
    folds: list[dict[str, Any]]
    out_of_sample: dict[str, Any]
    adopt: dict[str, float]  # the setting the latest training window chose


def tune(
    plan: BacktestPlan,
    prepared: Prepared,
    grid: Mapping[str, Sequence[float]],
    cuts: Sequence[Fold],
    prices: Prices,
    runner: Runner = serial,
    progress: Progress = lambda _s, _d: None,
) -> TuneResult:
    """Choose on each training window, report each test window after it."""
    tables = history_tables(plan.symbols, plan.prices, plan.models, plan.overrides)
    settings = grid_settings(grid)
    for setting in settings:
        configs(tables, setting)  # every setting is checked before any work starts
    policy = plan.calibration_policy()
    trials = [
        Task(f, "train", s, fold.train, policy) for f, fold in enumerate(cuts) for s in range(len(settings))
    ]
    trained = runner(trials, prepared, tables, settings, progress)
    chosen = []
    for f in range(len(cuts)):
        sharpes = [trained[f * len(settings) + s].sharpe for s in range(len(settings))]
        chosen.append(int(np.argmax(sharpes)))  # the first of the best, on a tie
    tests = [Task(f, "test", chosen[f], fold.test, policy) for f, fold in enumerate(cuts)]
    tested = runner(tests, prepared, tables, settings, lambda _s, _d: None)
    report_folds = []
    oos_days: list[str] = []
    oos: list[float] = []
    held: list[float] = []
    for f, (fold, outcome) in enumerate(zip(cuts, tested, strict=True)):
        hold = _hold_returns(plan, fold.test, prices, outcome.days)
        train = trained[f * len(settings) + chosen[f]]
        report_folds.append(
            {
                "train_window": [fold.train.start.isoformat(), fold.train.end.isoformat()],
                "test_window": [fold.test.start.isoformat(), fold.test.end.isoformat()],
                "chosen": settings[chosen[f]],
                "train_sharpe": round(train.sharpe, 4),
                "test": _figures(outcome.returns) | {"fills": outcome.fills},
                "test_buy_and_hold": _figures(hold),
            }
        )
        oos_days += outcome.days
        oos += outcome.returns
        held += hold
    # How much the settings' Sharpe ratios spread on the training windows: what luck alone gives.
    variance = 0.0
    if len(settings) > 1:
        per_day = [
            [trained[f * len(settings) + s].sharpe / math.sqrt(TRADING_DAYS) for s in range(len(settings))]
            for f in range(len(cuts))
        ]
        variance = float(np.mean([np.var(sharpes, ddof=1) for sharpes in per_day]))
    out = {
        "sessions": len(oos),
        "from": oos_days[0] if oos_days else None,
        "to": oos_days[-1] if oos_days else None,
        "strategy": _figures(oos),
        "equal_weight_buy_and_hold": _figures(held),
        "excess": excess(oos, held),
        "deflated_sharpe": deflated_sharpe(oos, trials=len(settings), trial_variance=variance),
    }
    out["reading"] = _reading(out)
    return TuneResult(
        dict((k, list(v)) for k, v in grid.items()), settings, report_folds, out, settings[chosen[-1]]
    )


def _hold_returns(plan: BacktestPlan, window: Window, prices: Prices, days: Sequence[str]) -> list[float]:
    """Equal-weight buy-and-hold of the plan's symbols over the window, bought at its first open,
    as daily returns on ``days``."""
    holds = [buy_and_hold(window.start, window.end, prices, symbol, days) for symbol in plan.symbols]
    returns: list[float] = equal_weight(holds)["returns"]
    return returns or [0.0] * len(days)


def _figures(returns: Sequence[float]) -> dict[str, Any]:
    curve = list(itertools.accumulate(returns, lambda value, r: value * (1.0 + r), initial=1.0))
    years = len(returns) / TRADING_DAYS
    total = curve[-1] - 1.0
    return {
        "total_return": round(total, 6),
        "cagr": round((1.0 + total) ** (1.0 / years) - 1.0, 6) if years > 0 and total > -1 else None,
        "sharpe": round(_sharpe(returns) * math.sqrt(TRADING_DAYS), 4),
        "max_drawdown": max_drawdown([round(v * 1e6) for v in curve]),
    }


def deflated_sharpe(returns: Sequence[float], *, trials: int, trial_variance: float) -> dict[str, Any]:
    """The probability that the true Sharpe ratio of ``returns`` is above what the best of
    ``trials`` settings would show by luck alone (Bailey and Lopez de Prado's deflated Sharpe
    ratio). ``trial_variance``: the variance of the trials' per-day Sharpe ratios."""
    if len(returns) < 3 or float(np.std(returns)) == 0:
        return {"value": None, "trials": trials, "reading": "no spread of returns: nothing to test"}
    sharpe = _sharpe(returns)
    expected_max = 0.0
    if trials > 1:
        expected_max = math.sqrt(trial_variance) * float(
            (1 - EULER_GAMMA) * norm.ppf(1 - 1 / trials) + EULER_GAMMA * norm.ppf(1 - 1 / (trials * math.e))
        )
    skewness, tailedness = float(skew(returns)), float(kurtosis(returns, fisher=False))
    spread = math.sqrt(max(1e-12, 1 - skewness * sharpe + (tailedness - 1) / 4 * sharpe**2))
    value = float(norm.cdf((sharpe - expected_max) * math.sqrt(len(returns) - 1) / spread))
    return {
        "value": round(value, 4),
        "trials": trials,
        "sharpe_daily": round(sharpe, 6),
        "luck_threshold_daily": round(expected_max, 6),
        "reading": "significant at 95%" if value >= 0.95 else "not significant: luck explains it",
    }


def _reading(out: Mapping[str, Any]) -> str:
    ci = out["excess"]["ci95"]
    dsr = out["deflated_sharpe"]["value"]
    if ci is None:
        return "too few out-of-sample sessions to say anything"
    if ci[0] > 0 and dsr is not None and dsr >= 0.95:
        return "out of sample the tuned strategy beat equal-weight buy-and-hold beyond noise and luck"
    if ci[1] < 0:
        return "out of sample the tuned strategy did worse than equal-weight buy-and-hold, beyond noise"
    return (
        "out of sample nothing beats equal-weight buy-and-hold beyond noise (or the number of settings tried)"
    )


def snippet(result: TuneResult, tables: Mapping[str, Any]) -> dict[str, Any]:
    """The chosen setting as config tables a user can put in ``config.toml``."""
    return changes(tables, result.adopt)


def markdown(result: TuneResult, plan: BacktestPlan, mode: Mode, workers: str) -> str:
    out = result.out_of_sample
    strat, hold, extra = out["strategy"], out["equal_weight_buy_and_hold"], out["excess"]
    dsr = out["deflated_sharpe"]

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v * 100:+.2f}%"

    lines = [
        f"# Walk-forward tuning {plan.start} to {plan.end}: {', '.join(plan.symbols)}",
        "",
        f"{len(result.settings)} settings x {len(result.folds)} folds ({mode}) on {workers}.",
        "",
        f"**{out['reading']}.**",
        "",
        f"## Out of sample: {out['sessions']} sessions, {out['from']} to {out['to']} (test windows only)",
        "",
        "| | return | CAGR | Sharpe | max drawdown |",
        "| --- | --- | --- | --- | --- |",
        f"| tuned strategy | {pct(strat['total_return'])} | {pct(strat['cagr'])} | {strat['sharpe']:.2f} "
        f"| {strat['max_drawdown'] * 100:.2f}% |",
        f"| equal-weight buy and hold | {pct(hold['total_return'])} | {pct(hold['cagr'])} "
        f"| {hold['sharpe']:.2f} "
        f"| {hold['max_drawdown'] * 100:.2f}% |",
        "",
        f"- Excess over buy and hold: {pct(extra['annualised'])} a year"
        + (f", 95% interval {pct(extra['ci95'][0])} to {pct(extra['ci95'][1])}" if extra["ci95"] else ""),
        f"- Deflated Sharpe ratio for {dsr['trials']} settings: {dsr['value']} ({dsr['reading']})",
        "",
        "## Folds",
        "",
        "| train | test | chosen | train Sharpe | test return | test Sharpe | buy and hold |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for fold in result.folds:
        chosen = ", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in fold["chosen"].items())
        lines.append(
            f"| {fold['train_window'][0]}..{fold['train_window'][1]} "
            f"| {fold['test_window'][0]}..{fold['test_window'][1]} "
            f"| {chosen} | {fold['train_sharpe']:.2f} | {pct(fold['test']['total_return'])} "
            f"| {fold['test']['sharpe']:.2f} | {pct(fold['test_buy_and_hold']['total_return'])} |"
        )
    return "\n".join(lines) + "\n"


def parse_grid(raw: Mapping[str, Any]) -> dict[str, list[float]]:
    """A ``[grid]`` table of dotted keys to lists of values (a grid file's)."""
    table = raw.get("grid")
    if not isinstance(table, Mapping) or set(raw) != {"grid"}:
        raise ConfigError('a grid file holds one [grid] table of "section.key" = [values]')
    return {str(key): list(values) if isinstance(values, list) else values for key, values in table.items()}
