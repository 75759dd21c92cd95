"""A replay's report: paper-trading performance, signal counts, prediction accuracy against what
prices did next, buy-and-hold of the same symbols and of ^AXJO, an equity chart and the trades.

Written to ``<replay home>/report/``: ``report.json``, ``report.md``, ``equity.html`` (an SVG
chart, no script) and ``trades.csv``. The figures come from the services' own databases and the
price files; nothing is recomputed from a model of the run.
"""

from __future__ import annotations

import csv
import html
import sqlite3
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from services.asx.calendar import SYDNEY
from services.backtest.replay import INDEX, ReplayPlan
from services.market_data.csv_files import read_price_csv

# A prediction is judged on the close this many sessions after the one its price came from.
HORIZON_SESSIONS = 5
TRADE_COLUMNS = ("filled_at", "symbol", "side", "quantity", "price", "market_price", "value",
                 "commission", "realised", "reason")  # fmt: skip


def _rows(database: Path, query: str) -> list[sqlite3.Row]:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute(query).fetchall()


def trades(plan: ReplayPlan) -> list[dict[str, Any]]:
    rows = _rows(
        plan.home.database("paper_trading"),
        "SELECT filled_at, symbol, side, quantity, price, market_price, value_cents, commission_cents, "
        "realised_cents, reason FROM fills ORDER BY id",
    )
    dollars = {"value": "value_cents", "commission": "commission_cents", "realised": "realised_cents"}
    return [
        {name: r[dollars[name]] / 100 if name in dollars else r[name] for name in TRADE_COLUMNS} for r in rows
    ]


def equity_curve(plan: ReplayPlan) -> list[tuple[str, float]]:
    rows = _rows(plan.home.database("paper_trading"), "SELECT day, equity_cents FROM equity ORDER BY day")
    return [(r["day"], r["equity_cents"] / 100) for r in rows]


Prices = Mapping[str, pd.DataFrame]


def read_prices(plan: ReplayPlan) -> dict[str, pd.DataFrame]:
    """The symbols' and ^AXJO's complete bars, read once for the whole report."""
    prices = {}
    for symbol in (*plan.symbols, INDEX):
        bars = read_price_csv(plan.prices / f"{symbol}.csv")
        prices[symbol] = bars[bars["close"].notna()]
    return prices


def prediction_accuracy(plan: ReplayPlan, prices: Prices) -> dict[str, Any]:
    """Counts per signal, and how each did: the share of BUYs followed by a rise and of SELLs by
    a fall over the next sessions, and the mean move after each signal."""
    query = "SELECT symbol, signal, price_time, degraded FROM predictions"
    rows = _rows(plan.home.database("prediction"), query)
    counts = Counter(r["signal"] for r in rows)
    moves: dict[str, list[float]] = {"BUY": [], "SELL": [], "HOLD": []}
    closes = {symbol: prices[symbol]["adj_close"] for symbol in plan.symbols}
    unjudged = 0
    for row in rows:
        series = closes.get(row["symbol"])
        day = _sydney_day(row["price_time"])
        if series is None:
            unjudged += 1
            continue
        at = int(series.index.searchsorted(day, side="right")) - 1
        ahead = at + HORIZON_SESSIONS
        if at < 0 or ahead >= len(series):
            unjudged += 1
            continue
        moves[row["signal"]].append(float(series.iloc[ahead] / series.iloc[at] - 1))
    every = [m for signal_moves in moves.values() for m in signal_moves]

    def summary(values: Sequence[float], good: int) -> dict[str, Any]:
        hits = sum(1 for v in values if v * good > 0)
        return {
            "judged": len(values),
            "hit_rate": round(hits / len(values), 4) if values else None,
            "mean_move": round(sum(values) / len(values), 6) if values else None,
        }

    return {
        "predictions": len(rows),
        "degraded": sum(1 for r in rows if r["degraded"]),
        "signals": {s: counts.get(s, 0) for s in ("BUY", "HOLD", "SELL")},
        "horizon_sessions": HORIZON_SESSIONS,
        "buy": summary(moves["BUY"], +1),
        "sell": summary(moves["SELL"], -1),
        "hold": summary(moves["HOLD"], +1),
        # The base rate: how often prices rose over the horizon after any prediction.
        "all_up_rate": summary(every, +1)["hit_rate"],
        "unjudged": unjudged,
    }


def _sydney_day(stamp: str) -> str:
    if len(stamp) == 10:
        return stamp
    return datetime.fromisoformat(stamp).astimezone(SYDNEY).date().isoformat()


def buy_and_hold(plan: ReplayPlan, prices: Prices, symbol: str) -> dict[str, Any]:
    """Bought at the first session's open in the period, valued at the last close in it."""
    bars = prices[symbol]
    inside = bars[(bars.index >= plan.start.isoformat()) & (bars.index <= plan.end.isoformat())]
    if inside.empty:
        return {"symbol": symbol, "return": None, "note": "no bars in the period"}
    first, last = inside.iloc[0], inside.iloc[-1]
    entry = _entry_price(first)
    return {
        "symbol": symbol,
        "from": inside.index[0],
        "to": inside.index[-1],
        "return": round(float(last["close"]) / entry - 1, 6),
        # Dividends included (adjusted closes), for comparison: paper trading receives none.
        "total_return": round(float(last["adj_close"] / first["adj_close"]) - 1, 6),
    }


def _entry_price(bar: pd.Series) -> float:
    """A session's open; its close where the file has no open."""
    return float(bar["open"]) if pd.notna(bar["open"]) else float(bar["close"])


def build_report(
    plan: ReplayPlan,
    *,
    figures: Mapping[str, Any],
    portfolio: Mapping[str, Any],
    performance: Mapping[str, Any],
    health: Sequence[Mapping[str, Any]],
    prices: Prices,
    fills: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    holds = [buy_and_hold(plan, prices, s) for s in plan.symbols]
    returns = [h["return"] for h in holds if h["return"] is not None]
    starting = float(portfolio["starting_capital"])
    return {
        "synthetic": plan.synthetic,
        "period": {"from": plan.start.isoformat(), "to": plan.end.isoformat()},
        "symbols": list(plan.symbols),
        "prices": str(plan.prices),
        "home": str(plan.home.root),
        "run": dict(figures),
        "portfolio": dict(portfolio),
        "performance": dict(performance),
        "strategy_return": round(float(portfolio["equity"]) / starting - 1, 6),
        "predictions": prediction_accuracy(plan, prices),
        "buy_and_hold": {
            "symbols": holds,
            "equal_weight_return": round(sum(returns) / len(returns), 6) if returns else None,
            "index": buy_and_hold(plan, prices, INDEX),
        },
        "trades": len(fills),
        "health": [
            {"name": h["name"], "status": h["status"], "error": h.get("error") or _not_ok(h)} for h in health
        ],
    }


def _not_ok(entry: Mapping[str, Any]) -> str | None:
    """What a service's own health report says is not ok (e.g. the data it serves is stale)."""
    checks = (entry.get("report") or {}).get("checks") or {}
    said = [f"{name}: {c.get('detail')}" for name, c in checks.items() if c.get("status") != "ok"]
    return "; ".join(said) or None


def write_report(
    plan: ReplayPlan, report: Mapping[str, Any], prices: Prices, fills: Sequence[Mapping[str, Any]]
) -> Path:
    directory = plan.home.root / "report"
    directory.mkdir(exist_ok=True)
    (directory / "report.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    (directory / "report.md").write_text(report_markdown(report))
    with (directory / "trades.csv").open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=[*TRADE_COLUMNS, *(["data"] if plan.synthetic else [])])
        writer.writeheader()
        for row in fills:
            writer.writerow({**row, **({"data": "SYNTHETIC"} if plan.synthetic else {})})
    (directory / "equity.html").write_text(equity_html(plan, report, prices))
    return directory


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:+.2f}%"


def report_markdown(report: Mapping[str, Any]) -> str:
    label = "SYNTHETIC market (generated prices, not real) - " if report["synthetic"] else ""
    period = report["period"]
    portfolio, perf, preds = report["portfolio"], report["performance"], report["predictions"]
    bh = report["buy_and_hold"]
    run = report["run"]
    lines = [
        f"# {label}Replay {period['from']} to {period['to']}: {', '.join(report['symbols'])}",
        "",
        f"{run.get('sessions')} sessions in {run.get('wall_s')} s ({run.get('steps')} steps; "
        f"{run.get('outages')} calls waited for a restarted service).",
        "",
        "## Paper trading",
        f"- Equity ${portfolio['equity']:,.2f} from ${portfolio['starting_capital']:,.2f}: "
        f"{_pct(report['strategy_return'])}; realised ${portfolio['realised_pnl']:,.2f}, "
        f"commissions ${portfolio['commissions']:,.2f}",
        f"- Ledger: {_reconciled(portfolio['reconciled'])}",
        f"- {report['trades']} fills; closed trades {perf.get('closed_trades')}, win rate "
        f"{perf.get('win_rate')}, profit factor {perf.get('profit_factor')}, max drawdown "
        f"{perf.get('max_drawdown')}, Sharpe {perf.get('sharpe')}",
        "",
        "## Signals and accuracy",
        f"- {preds['predictions']} predictions ({preds['degraded']} degraded): "
        + ", ".join(f"{k} {v}" for k, v in preds["signals"].items()),
        f"- Over the next {preds['horizon_sessions']} sessions: BUY followed by a rise "
        f"{_rate(preds['buy'])}; SELL followed by a fall {_rate(preds['sell'])}; prices rose after "
        f"{_share(preds['all_up_rate'])} of all predictions (the base rate)",
        "",
        "## Buy and hold (first open to last close in the period, no dividends)",
        *[f"- {h['symbol']}: {_pct(h['return'])}{_note(h)}" for h in bh["symbols"]],
        f"- Equal weight: {_pct(bh['equal_weight_return'])}",
        f"- {bh['index']['symbol']}: {_pct(bh['index']['return'])}{_note(bh['index'])}",
        "",
        "## Health at the end",
        *[
            f"- {h['name']}: {h['status']}" + (f" ({h['error']})" if h["error"] else "")
            for h in report["health"]
        ],
    ]
    return "\n".join(lines) + "\n"


def reconciled(sides: Mapping[str, int]) -> bool:
    """Paper trading's two sides of its ledger invariant agree (it also refuses to answer when
    cash or realised P&L differ from what its fills add up to)."""
    return len(set(sides.values())) == 1


def _reconciled(sides: Mapping[str, int]) -> str:
    cents = next(iter(sides.values()))
    if reconciled(sides):
        return f"reconciles to the cent: start + realised - commissions = cash + cost = ${cents / 100:,.2f}"
    return f"DOES NOT RECONCILE: {dict(sides)}"


def _note(hold: Mapping[str, Any]) -> str:
    return f" ({hold['note']})" if hold.get("note") else f" ({hold['from']} to {hold['to']})"


def _rate(summary: Mapping[str, Any]) -> str:
    return f"{_share(summary['hit_rate'])} of {summary['judged']}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def equity_html(plan: ReplayPlan, report: Mapping[str, Any], prices: Prices) -> str:
    """Paper-trading equity against equal-weight buy-and-hold of the symbols, as an SVG."""
    curve = equity_curve(plan)
    title = f"{'SYNTHETIC market - ' if plan.synthetic else ''}Replay {plan.start} to {plan.end}"
    if len(curve) < 2:
        body = "<p>Fewer than two daily equity snapshots: nothing to draw.</p>"
    else:
        days = [d for d, _ in curve]
        starting = float(report["portfolio"]["starting_capital"])
        hold = _hold_curve(plan, prices, days, starting)
        body = _svg({"paper trading": [v for _, v in curve], "buy and hold (equal weight)": hold}, days)
    return (
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<h1>{html.escape(title)}</h1>{body}"
    )


def _hold_curve(plan: ReplayPlan, prices: Prices, days: Sequence[str], starting: float) -> list[float | None]:
    values: list[float | None] = []
    series = {s: prices[s] for s in plan.symbols}
    entries = {}
    for symbol, bars in series.items():
        inside = bars[bars.index >= plan.start.isoformat()]
        if not inside.empty:
            entries[symbol] = _entry_price(inside.iloc[0])
    for day in days:
        parts = []
        for symbol, entry in entries.items():
            closes = series[symbol]["close"]
            at = int(closes.index.searchsorted(day, side="right")) - 1
            if at >= 0:
                parts.append(float(closes.iloc[at]) / entry)
        values.append(starting * sum(parts) / len(parts) if parts else None)
    return values


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
