"""The report of a run through history, the same for the stack replay and the back-test.

Written to a directory: ``report.json``, ``report.md``, ``trades.csv`` (one row per fill),
``signals.csv`` (one row per signal paper trading received) and ``equity.html`` (an SVG chart, no
script). It reads what the run produced (``History``: the
decisions sent as signals, paper trading's fills and daily equity, as the services answer them
over RPC or the back-test's ledger holds them) and the price files, for the benchmarks:

- ``performance``: total return, CAGR, annualised volatility, Sharpe and Sortino (daily returns of
  the end-of-day equity, 252 a year, no risk-free rate), max drawdown, turnover (traded value a
  year over mean equity), exposure (mean share of equity in positions), win rate and profit factor
  of closed trades net of both commissions;
- ``benchmarks``: buy-and-hold of each symbol, of all of them in equal weight and of the index,
  each bought at the first session's open of the period and valued at each close, without
  dividends (paper trading receives none either);
- ``excess``: the strategy's daily return less equal-weight buy-and-hold's, annualised, with a 95%
  interval from a circular block bootstrap (blocks of ``BLOCK_DAYS`` sessions keep the days'
  dependence), and a plain reading of it.
"""

from __future__ import annotations

import csv
import html
import itertools
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
from scipy.stats import binomtest

from services.asx.calendar import SYDNEY
from services.paper_trading.analytics import ClosedTrade, max_drawdown, trade_statistics
from services.prediction.calibration import HORIZON_SESSIONS
from services.prediction.calibration import forward_moves as forward_moves_of

INDEX = "^AXJO"
TRADING_DAYS = 252
BLOCK_DAYS = 20
RELIABILITY_BINS = 20
RESAMPLES = 2000
TRADE_COLUMNS = (
    "time",
    "symbol",
    "side",
    "quantity",
    "price",
    "commission",
    "reason",
    "market_price",
    "value",
    "realised",
    "cash",
)
SIGNAL_COLUMNS = (
    "time",
    "symbol",
    "price_time",
    "signal",
    "probability",
    "cases",
    "calibration",
    "confidence",
    "combined",
    "regime",
    "price",
    "degraded",
)

Prices = Mapping[str, pd.DataFrame]


@dataclass(frozen=True, slots=True)
class History:
    """What a run through history produced."""

    kind: str  # "replay" or "backtest"
    start: date
    end: date
    symbols: tuple[str, ...]
    prices: Path
    synthetic: bool
    # Each decision sent as a signal, in order: ``SIGNAL_COLUMNS`` with ``created_at`` for the time.
    predictions: Sequence[Mapping[str, Any]]
    fills: Sequence[Mapping[str, Any]]  # as ``ledger.fills_after`` gives them
    equity: Sequence[Mapping[str, Any]]  # as ``ledger.equity_curve`` gives it
    starting_cents: int
    cash_cents: int
    open_positions: Mapping[str, int]
    pending_orders: int
    reconciled: Mapping[str, int]
    run: Mapping[str, Any]  # figures of the run itself (time taken, steps, ...)
    health: Sequence[Mapping[str, Any]] | None = None  # the stack's, for a replay
    calibration: Mapping[str, Any] | None = None  # how the signals were calibrated


def read_prices(directory: Path, symbols: Sequence[str]) -> dict[str, pd.DataFrame]:
    """The symbols' and the index's complete bars, read once for the whole report."""
    from services.market_data.csv_files import read_price_csv

    prices = {}
    for symbol in (*symbols, INDEX):
        bars = read_price_csv(directory / f"{symbol}.csv")
        prices[symbol] = bars[bars["close"].notna()]
    return prices


# -- the figures ------------------------------------------------------------------------------


def build_report(history: History, prices: Prices) -> dict[str, Any]:
    days = [row["day"] for row in history.equity]
    curve = [row["equity_cents"] / 100 for row in history.equity]
    starting = history.starting_cents / 100
    strategy = _returns([starting, *curve])
    holds = {s: buy_and_hold(history.start, history.end, prices, s, days) for s in (*history.symbols, INDEX)}
    weighted = equal_weight([holds[s] for s in history.symbols])
    equity_now = curve[-1] if curve else starting
    judged = forward_moves(history, prices)
    return {
        "kind": history.kind,
        "synthetic": history.synthetic,
        "period": {"from": history.start.isoformat(), "to": history.end.isoformat(), "sessions": len(days)},
        "symbols": list(history.symbols),
        "prices": str(history.prices),
        "run": dict(history.run),
        "signals": signal_counts(history.predictions),
        "trades": len(history.fills),
        "portfolio": {
            "starting_capital": starting,
            "equity": equity_now,
            "cash": history.cash_cents / 100,
            "open_positions": dict(history.open_positions),
            "pending_orders": history.pending_orders,
            "reconciled": dict(history.reconciled),
        },
        "performance": performance(history, curve, strategy, days),
        "benchmarks": {
            "symbols": [_summary(holds[s]) for s in history.symbols],
            "equal_weight": _curve_figures(weighted, days),
            "index": _summary(holds[INDEX]),
        },
        "excess": excess(strategy, _returns([1.0, *weighted["curve"]]) if weighted["curve"] else []),
        "predictions": prediction_accuracy(history, judged),
        "calibration": dict(history.calibration) if history.calibration else None,
        "reliability": reliability(judged),
        "health": None
        if history.health is None
        else [
            {"name": h["name"], "status": h["status"], "error": h.get("error") or _not_ok(h)}
            for h in history.health
        ],
    }


def signal_counts(predictions: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    counts = Counter(p["signal"] for p in predictions)
    return {s: counts.get(s, 0) for s in ("BUY", "HOLD", "SELL")}


def _returns(values: Sequence[float]) -> list[float]:
    return [b / a - 1.0 for a, b in itertools.pairwise(values) if a > 0]


def performance(
    history: History, curve: Sequence[float], returns: Sequence[float], days: Sequence[str]
) -> dict[str, Any]:
    starting = history.starting_cents / 100
    closed = [
        ClosedTrade(
            f["symbol"],
            f["realised_cents"],
            f["realised_cents"] - f["commission_cents"] - f["entry_commission_cents"],
            f["filled_at"],
        )
        for f in history.fills
        if f["side"] == "SELL"
    ]
    years = _years(history.start, days)
    traded = sum(f["value_cents"] for f in history.fills) / 100
    mean_equity = sum(curve) / len(curve) if curve else starting
    exposures = [r["market_value_cents"] / r["equity_cents"] for r in history.equity if r["equity_cents"] > 0]
    stats = trade_statistics(closed)
    return {
        **_curve_figures(
            {"curve": [c / starting for c in curve], "returns": returns}, days, start=history.start
        ),
        "turnover": round(traded / mean_equity / years, 4) if years and mean_equity else None,
        "exposure": round(sum(exposures) / len(exposures), 4) if exposures else None,
        "closed_trades": stats["closed_trades"],
        "win_rate": stats["win_rate"],
        "profit_factor": stats["profit_factor"],
        "commissions": sum(f["commission_cents"] for f in history.fills) / 100,
    }


def _years(start: date, days: Sequence[str]) -> float | None:
    if not days:
        return None
    return max(1, (date.fromisoformat(days[-1]) - start).days + 1) / 365.25


def _curve_figures(
    series: Mapping[str, Any], days: Sequence[str], *, start: date | None = None
) -> dict[str, Any]:
    """Return, CAGR, volatility, Sharpe, Sortino and drawdown of a curve that starts at 1."""
    curve, returns = series["curve"], series["returns"]
    if not curve:
        return {
            "total_return": None,
            "cagr": None,
            "volatility": None,
            "sharpe": None,
            "sortino": None,
            "max_drawdown": None,
        }
    total = curve[-1] - 1.0
    years = _years(start or date.fromisoformat(days[0]), days)
    spread = float(np.std(returns, ddof=1)) if len(returns) > 1 else 0.0
    mean = float(np.mean(returns)) if returns else 0.0
    downside = math.sqrt(sum(min(r, 0.0) ** 2 for r in returns) / len(returns)) if returns else 0.0
    scale = math.sqrt(TRADING_DAYS)
    return {
        "total_return": round(total, 6),
        "cagr": round((1.0 + total) ** (1.0 / years) - 1.0, 6) if years and total > -1 else None,
        "volatility": round(spread * scale, 6),
        "sharpe": round(mean / spread * scale, 4) if spread > 0 else None,
        "sortino": round(mean / downside * scale, 4) if downside > 0 else None,
        "max_drawdown": max_drawdown([round(v * 1e6) for v in [1.0, *curve]]),
    }


def buy_and_hold(start: date, end: date, prices: Prices, symbol: str, days: Sequence[str]) -> dict[str, Any]:
    """Bought at the first session's open from ``start`` to ``end``, valued at each of ``days``'
    close (the last one on or before it)."""
    bars = prices[symbol]
    inside = bars[(bars.index >= start.isoformat()) & (bars.index <= end.isoformat())]
    if inside.empty or not days:
        return {"symbol": symbol, "curve": [], "returns": [], "note": "no bars in the period"}
    first = inside.iloc[0]
    entry = float(first["open"]) if pd.notna(first["open"]) else float(first["close"])
    closes = bars["close"]
    positions = closes.index.searchsorted(list(days), side="right") - 1
    curve = [float(closes.iloc[i]) / entry if i >= 0 else 1.0 for i in positions]
    return {
        "symbol": symbol,
        "from": inside.index[0],
        "to": inside.index[-1],
        "curve": curve,
        "returns": _returns([1.0, *curve]),
    }


def equal_weight(holds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The mean of several buy-and-hold curves (each starting at 1), and its daily returns."""
    usable = [h["curve"] for h in holds if h["curve"]]
    if not usable:
        return {"curve": [], "returns": []}
    curve = [sum(values) / len(values) for values in zip(*usable, strict=True)]
    return {"curve": curve, "returns": _returns([1.0, *curve])}


def _summary(hold: Mapping[str, Any]) -> dict[str, Any]:
    if not hold["curve"]:
        return {"symbol": hold["symbol"], "total_return": None, "note": hold.get("note")}
    figures = _curve_figures(hold, [hold["from"], hold["to"]])
    return {"symbol": hold["symbol"], "from": hold["from"], "to": hold["to"], **figures}


def excess(strategy: Sequence[float], benchmark: Sequence[float], seed: int = 20100101) -> dict[str, Any]:
    """The strategy's mean daily return less the benchmark's, annualised, with a 95% interval
    from a circular block bootstrap of the daily differences."""
    n = min(len(strategy), len(benchmark))
    if n < 2 * BLOCK_DAYS:
        return {
            "vs": "equal_weight_buy_and_hold",
            "annualised": None,
            "ci95": None,
            "reading": f"too few sessions ({n}) for an interval",
        }
    diff = np.asarray(strategy[:n]) - np.asarray(benchmark[:n])
    rng = np.random.default_rng(seed)
    blocks = math.ceil(n / BLOCK_DAYS)
    starts = rng.integers(0, n, size=(RESAMPLES, blocks))
    picks = (starts[:, :, None] + np.arange(BLOCK_DAYS)[None, None, :]).reshape(RESAMPLES, -1)[:, :n] % n
    means = diff[picks].mean(axis=1) * TRADING_DAYS
    low, high = (float(v) for v in np.percentile(means, [2.5, 97.5]))
    mean = float(diff.mean() * TRADING_DAYS)
    if low > 0:
        reading = "the strategy beat equal-weight buy-and-hold by more than the noise of these days"
    elif high < 0:
        reading = "the strategy did worse than equal-weight buy-and-hold, by more than the noise"
    else:
        reading = "no difference from equal-weight buy-and-hold beyond the noise of these days"
    return {
        "vs": "equal_weight_buy_and_hold",
        "annualised": round(mean, 6),
        "ci95": [round(low, 6), round(high, 6)],
        "block_days": BLOCK_DAYS,
        "resamples": RESAMPLES,
        "reading": reading,
    }


def forward_moves(history: History, prices: Prices) -> list[tuple[Mapping[str, Any], float | None]]:
    """Each signal with what its symbol's adjusted close did over the next ``HORIZON_SESSIONS``
    sessions from the close it was made on (None: not known, e.g. at the end of the file)."""
    moves: list[float | None] = [None] * len(history.predictions)
    for symbol in history.symbols:
        rows = [i for i, row in enumerate(history.predictions) if row["symbol"] == symbol]
        if not rows or symbol not in prices:
            continue
        adjusted = prices[symbol]["adj_close"].fillna(prices[symbol]["close"]).dropna()
        found, _ahead = forward_moves_of(
            [str(key) for key in adjusted.index],
            adjusted.to_numpy(float),
            [_sydney_day(history.predictions[i]["price_time"]) for i in rows],
        )
        for i, move in zip(rows, found.tolist(), strict=True):
            moves[i] = None if move != move else move
    return list(zip(history.predictions, moves, strict=True))


def prediction_accuracy(
    history: History, judged: Sequence[tuple[Mapping[str, Any], float | None]]
) -> dict[str, Any]:
    """Counts per signal, and how each did: the share of BUYs followed by a rise and of SELLs by
    a fall over the next sessions (adjusted closes), and the mean move after each signal."""
    moves: dict[str, list[float]] = {"BUY": [], "SELL": [], "HOLD": []}
    for row, move in judged:
        if move is not None:
            moves[row["signal"]].append(move)
    every = [m for signal_moves in moves.values() for m in signal_moves]

    def summary(values: Sequence[float], good: int) -> dict[str, Any]:
        hits = sum(1 for v in values if v * good > 0)
        return {
            "judged": len(values),
            "hit_rate": round(hits / len(values), 4) if values else None,
            "mean_move": round(sum(values) / len(values), 6) if values else None,
        }

    return {
        "predictions": len(history.predictions),
        "degraded": sum(1 for p in history.predictions if p["degraded"]),
        "signals": signal_counts(history.predictions),
        "horizon_sessions": HORIZON_SESSIONS,
        "buy": summary(moves["BUY"], +1),
        "sell": summary(moves["SELL"], -1),
        "hold": summary(moves["HOLD"], +1),
        # The base rate: how often prices rose over the horizon after any prediction.
        "all_up_rate": summary(every, +1)["hit_rate"],
        "unjudged": sum(1 for _row, move in judged if move is None),
    }


def reliability(judged: Sequence[tuple[Mapping[str, Any], float | None]]) -> dict[str, Any]:
    """Whether the calibrated probability signals carry means what it says: per bin of
    probability, its mean, how often the signal was then right over the horizon (before costs: a
    BUY followed by a rise, a SELL by a fall, a HOLD by a move the way its score leans), and how
    many signals.

    Signals of the same days share their outcome (the rounds of a day and the four banks move
    together, and horizons overlap), so the interval of a hit rate is a bootstrap of whole weeks
    (``ci95``), not of single signals; the Wilson interval that treats them as independent is
    given too (``ci95_independent``). A bin is ``consistent`` when its mean probability lies inside
    ``ci95``."""
    bins: list[list[tuple[float, bool, str]]] = [[] for _ in range(RELIABILITY_BINS)]
    uncalibrated = 0
    for row, move in judged:
        if move is None:
            continue
        if row.get("probability") is None:
            uncalibrated += 1
            continue
        up = row["signal"] == "BUY" or (row["signal"] == "HOLD" and float(row["combined"]) >= 0)
        right = move > 0 if up else move < 0
        probability = float(row["probability"])
        week = date.fromisoformat(_sydney_day(row["price_time"])).isocalendar()
        slot = min(int(probability * RELIABILITY_BINS), RELIABILITY_BINS - 1)
        bins[slot].append((probability, right, f"{week.year}-{week.week}"))
    table = []
    for i, members in enumerate(bins):
        if not members:
            continue
        hits = sum(right for _p, right, _w in members)
        low, high = binomtest(hits, len(members)).proportion_ci(method="wilson")
        mean = sum(p for p, _r, _w in members) / len(members)
        cluster_low, cluster_high = _week_interval(members)
        table.append(
            {
                "from": i / RELIABILITY_BINS,
                "to": (i + 1) / RELIABILITY_BINS,
                "count": len(members),
                "weeks": len({w for _p, _r, w in members}),
                "mean_probability": round(mean, 4),
                "hit_rate": round(hits / len(members), 4),
                "ci95": [round(cluster_low, 4), round(cluster_high, 4)],
                "ci95_independent": [round(float(low), 4), round(float(high), 4)],
                "consistent": bool(cluster_low <= mean <= cluster_high),
            }
        )
    return {
        "of": "calibrated signals (BUY, SELL and HOLD)",
        "horizon_sessions": HORIZON_SESSIONS,
        "bins": table,
        "consistent_bins": sum(1 for b in table if b["consistent"]),
        "uncalibrated": uncalibrated,
    }


def _week_interval(members: Sequence[tuple[float, bool, str]], seed: int = 20100101) -> tuple[float, float]:
    """The 95% interval of the hit rate, resampling whole weeks of signals."""
    weeks: dict[str, list[int]] = {}
    for _p, right, week in members:
        weeks.setdefault(week, [0, 0])
        weeks[week][0] += int(right)
        weeks[week][1] += 1
    hits, counts = (np.array(v, dtype=float) for v in zip(*weeks.values(), strict=True))
    if len(counts) < 2:
        return 0.0, 1.0
    picks = np.random.default_rng(seed).integers(0, len(counts), size=(RESAMPLES, len(counts)))
    rates = hits[picks].sum(axis=1) / counts[picks].sum(axis=1)
    low, high = np.percentile(rates, [2.5, 97.5])
    return float(low), float(high)


def _sydney_day(stamp: str) -> str:
    if len(stamp) == 10:
        return stamp
    return datetime.fromisoformat(stamp).astimezone(SYDNEY).date().isoformat()


def _not_ok(entry: Mapping[str, Any]) -> str | None:
    """What a service's own health report says is not ok (e.g. the data it serves is stale)."""
    checks = (entry.get("report") or {}).get("checks") or {}
    said = [f"{name}: {c.get('detail')}" for name, c in checks.items() if c.get("status") != "ok"]
    return "; ".join(said) or None


def reconciled(sides: Mapping[str, int]) -> bool:
    """Paper trading's two sides of its ledger invariant agree (it also refuses to answer when
    cash or realised P&L differ from what its fills add up to)."""
    return len(set(sides.values())) == 1


# -- the files --------------------------------------------------------------------------------


def trade_rows(history: History) -> list[dict[str, Any]]:
    """One row per fill, with the cash after it."""
    cash = history.starting_cents
    rows = []
    for f in history.fills:
        cash += -f["value_cents"] if f["side"] == "BUY" else f["value_cents"]
        cash -= f["commission_cents"]
        rows.append(
            {
                "time": f["filled_at"],
                "symbol": f["symbol"],
                "side": f["side"],
                "quantity": f["quantity"],
                "price": f["price"],
                "commission": f"{f['commission_cents'] / 100:.2f}",
                "reason": f["reason"],
                "market_price": f["market_price"],
                "value": f"{f['value_cents'] / 100:.2f}",
                "realised": f"{f['realised_cents'] / 100:.2f}",
                "cash": f"{cash / 100:.2f}",
            }
        )
    return rows


def write_report(directory: Path, history: History, report: Mapping[str, Any], prices: Prices) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    (directory / "report.md").write_text(report_markdown(report))
    with (directory / "trades.csv").open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=[*TRADE_COLUMNS, *(["data"] if history.synthetic else [])])
        writer.writeheader()
        for row in trade_rows(history):
            writer.writerow({**row, **({"data": "SYNTHETIC"} if history.synthetic else {})})
    with (directory / "signals.csv").open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=[*SIGNAL_COLUMNS, *(["data"] if history.synthetic else [])])
        writer.writeheader()
        # By time, then symbol: a round's predictions are made concurrently, in no fixed order.
        for p in sorted(history.predictions, key=lambda p: (p["created_at"], p["symbol"])):
            row = {name: p.get(name) for name in SIGNAL_COLUMNS} | {"time": p["created_at"]}
            writer.writerow(row | ({"data": "SYNTHETIC"} if history.synthetic else {}))
    (directory / "equity.html").write_text(equity_html(history, report, prices))
    return directory


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:+.2f}%"


def _size(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def report_markdown(report: Mapping[str, Any]) -> str:
    label = "SYNTHETIC market (generated prices, not real) - " if report["synthetic"] else ""
    period, portfolio, perf = report["period"], report["portfolio"], report["performance"]
    preds, bench, extra = report["predictions"], report["benchmarks"], report["excess"]
    kind = "Replay of the stack" if report["kind"] == "replay" else "Back-test"
    rows = [
        ("Strategy (paper trading)", perf),
        ("Equal-weight buy and hold", bench["equal_weight"]),
        *((f"{b['symbol']} buy and hold", b) for b in (*bench["symbols"], bench["index"])),
    ]
    interval = (
        f"{_pct(extra['annualised'])} a year, 95% interval "
        f"{_pct(extra['ci95'][0])} to {_pct(extra['ci95'][1])}"
        if extra["ci95"]
        else "-"
    )
    lines = [
        f"# {label}{kind} {period['from']} to {period['to']}: {', '.join(report['symbols'])}",
        "",
        f"{period['sessions']} sessions; " + ", ".join(f"{k} {v}" for k, v in report["run"].items()),
        "",
        "## Performance against buy and hold",
        "",
        "| | return | CAGR | volatility | Sharpe | Sortino | max drawdown |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *[
            f"| {name} | {_pct(f.get('total_return'))} | {_pct(f.get('cagr'))} "
            f"| {_size(f.get('volatility'))} | {_num(f.get('sharpe'))} | {_num(f.get('sortino'))} "
            f"| {_size(f.get('max_drawdown'))} |"
            for name, f in rows
        ],
        "",
        f"- Excess over equal-weight buy and hold: {interval}: {extra['reading']}.",
        f"- {report['trades']} fills; {perf['closed_trades']} closed trades, "
        f"win rate {_share(perf['win_rate'])}, "
        f"profit factor {_num(perf['profit_factor'])}; turnover {_num(perf['turnover'])}x a year, "
        f"exposure {_share(perf['exposure'])}; commissions ${perf['commissions']:,.2f}",
        f"- Equity ${portfolio['equity']:,.2f} from ${portfolio['starting_capital']:,.2f}; "
        f"ledger: {_reconciled(portfolio['reconciled'])}",
        "- Paper trading receives no dividends; the buy-and-hold figures leave them out too.",
        "",
        "## Signals and what followed",
        f"- {preds['predictions']} signals ({preds['degraded']} degraded): "
        + ", ".join(f"{k} {v}" for k, v in report["signals"].items()),
        f"- Over the next {preds['horizon_sessions']} sessions: BUY followed by a rise "
        f"{_rate(preds['buy'])}; SELL followed by a fall {_rate(preds['sell'])}; prices rose after "
        f"{_share(preds['all_up_rate'])} of all signals (the base rate)",
    ]
    if report["trades"] == 0:
        lines.append(
            "- No trade: no BUY signal had a calibrated probability at paper trading's bar "
            "(`buy_confidence`) with `min_cases` past cases behind it."
        )
    calibration = report.get("calibration")
    if calibration:
        lines.append(f"- Calibration: {calibration['reading']}.")
    lines += reliability_markdown(report["reliability"])
    if report.get("health") is not None:
        lines += ["", "## Health at the end"]
        lines += [
            f"- {h['name']}: {h['status']}" + (f" ({h['error']})" if h["error"] else "")
            for h in report["health"]
        ]
    return "\n".join(lines) + "\n"


def reliability_markdown(table: Mapping[str, Any]) -> list[str]:
    bins = table["bins"]
    lines = [
        "",
        "## Reliability of the calibrated probability",
        f"Of {table['of']}: how often they were right over the next {table['horizon_sessions']} "
        "sessions (before costs), per bin of the probability they carried, with a 95% interval.",
        "",
    ]
    if table.get("uncalibrated"):
        lines += [f"- {table['uncalibrated']} uncalibrated signals are left out.", ""]
    if not bins:
        return [*lines, "- No calibrated signal could be judged."]
    lines += [
        "| probability | signals | weeks | mean probability | hit rate | 95% interval (weeks) "
        "| as if independent | consistent |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {b['from']:.2f}-{b['to']:.2f} | {b['count']} | {b['weeks']} | {b['mean_probability']:.3f} "
        f"| {b['hit_rate']:.3f} | {b['ci95'][0]:.3f}-{b['ci95'][1]:.3f} "
        f"| {b['ci95_independent'][0]:.3f}-{b['ci95_independent'][1]:.3f} "
        f"| {'yes' if b['consistent'] else 'no'} |"
        for b in bins
    ]
    lines.append(
        f"- {table['consistent_bins']} of {len(bins)} bins have their mean probability inside the interval "
        "of what happened; where it is outside, the probability does not mean what it says. Signals of "
        "the same days share their outcome (the banks move together, the horizons overlap), so the "
        "interval resamples whole weeks; the one beside it treats every signal as independent."
    )
    return lines


def _reconciled(sides: Mapping[str, int]) -> str:
    cents = next(iter(sides.values()))
    if reconciled(sides):
        return f"reconciles to the cent: start + realised - commissions = cash + cost = ${cents / 100:,.2f}"
    return f"DOES NOT RECONCILE: {dict(sides)}"


def _rate(summary: Mapping[str, Any]) -> str:
    return f"{_share(summary['hit_rate'])} of {summary['judged']}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def equity_html(history: History, report: Mapping[str, Any], prices: Prices) -> str:
    """Paper-trading equity against equal-weight buy-and-hold of the symbols, as an SVG."""
    kind = "Replay" if history.kind == "replay" else "Back-test"
    title = f"{'SYNTHETIC market - ' if history.synthetic else ''}{kind} {history.start} to {history.end}"
    days = [row["day"] for row in history.equity]
    if len(days) < 2:
        body = "<p>Fewer than two daily equity snapshots: nothing to draw.</p>"
    else:
        starting = history.starting_cents / 100
        holds = [buy_and_hold(history.start, history.end, prices, s, days) for s in history.symbols]
        weighted = equal_weight(holds)["curve"]
        body = _svg(
            {
                "paper trading": [row["equity_cents"] / 100 for row in history.equity],
                "buy and hold (equal weight)": [starting * v for v in weighted],
            },
            days,
        )
    return (
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<h1>{html.escape(title)}</h1>{body}"
        f"<h2>Reliability of the calibrated probability</h2>{_reliability_svg(report['reliability']['bins'])}"
    )


def _reliability_svg(bins: Sequence[Mapping[str, Any]]) -> str:
    """Realised hit rate (with its 95% interval) against mean probability per bin; the diagonal is
    where the two agree."""
    if not bins:
        return "<p>No calibrated signal could be judged.</p>"
    size, pad = 320, 40

    def x(v: float) -> float:
        return pad + (size - 2 * pad) * v

    def y(v: float) -> float:
        return size - pad - (size - 2 * pad) * v

    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{size}' height='{size}'>",
        f"<line x1='{x(0)}' y1='{y(0)}' x2='{x(1)}' y2='{y(1)}' stroke='#999' stroke-dasharray='4'/>",
        f"<text x='{pad}' y='{size - 8}' font-size='11'>mean probability</text>",
        f"<text x='4' y='{pad - 10}' font-size='11'>hit rate</text>",
    ]
    for b in bins:
        cx, (low, high) = x(b["mean_probability"]), b["ci95"]
        parts.append(
            f"<line x1='{cx:.1f}' y1='{y(low):.1f}' x2='{cx:.1f}' y2='{y(high):.1f}' stroke='#1f77b4'/>"
        )
        parts.append(
            f"<circle cx='{cx:.1f}' cy='{y(b['hit_rate']):.1f}' r='3' fill='#1f77b4'>"
            f"<title>{b['count']} signals</title></circle>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _svg(lines: Mapping[str, Sequence[float | None]], days: Sequence[str]) -> str:
    width, height, pad = 900, 360, 50
    values = [v for series in lines.values() for v in series if v is not None]
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    colours = ("#1f77b4", "#ff7f0e")

    def point(i: int, v: float) -> str:
        x = pad + (width - 2 * pad) * i / (len(days) - 1)
        y = height - pad - (height - 2 * pad) * (v - low) / span
        return f"{x:.1f},{y:.1f}"

    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}'>"]
    for series, colour in zip(lines.values(), colours, strict=False):
        points = " ".join(point(i, v) for i, v in enumerate(series) if v is not None)
        parts.append(f"<polyline fill='none' stroke='{colour}' stroke-width='1.5' points='{points}'/>")
    parts.append(f"<text x='{pad}' y='{pad - 20}' font-size='12'>${high:,.0f}</text>")
    parts.append(f"<text x='{pad}' y='{height - pad + 15}' font-size='12'>${low:,.0f}</text>")
    parts.append(f"<text x='{pad}' y='{height - 10}' font-size='12'>{days[0]}</text>")
    parts.append(f"<text x='{width - pad - 70}' y='{height - 10}' font-size='12'>{days[-1]}</text>")
    for i, (name, colour) in enumerate(zip(lines, colours, strict=False)):
        parts.append(
            f"<text x='{width - 300}' y='{pad - 20 + 15 * i}' font-size='12' fill='{colour}'>"
            f"{html.escape(name)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)
