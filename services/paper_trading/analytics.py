"""Trading performance from the fills and the daily equity: returns, P&L, trade statistics, risk.

A closed trade is a sell fill. Its realised P&L is proceeds minus the cost of the shares it sold;
its net P&L also takes off its commission and the buys' commission on those shares (pro rata).
Wins, losses, profit factor and expectancy are of net P&L. Sharpe and Sortino are annualised
(252 sessions) from daily equity returns, with a zero risk-free rate.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

TRADING_DAYS = 252


@dataclass(frozen=True, slots=True)
class ClosedTrade:
    symbol: str
    realised_cents: int
    net_cents: int  # realised, less both sides' commissions
    filled_at: str


def trade_statistics(trades: Sequence[ClosedTrade]) -> dict[str, Any]:
    wins = [t.net_cents for t in trades if t.net_cents > 0]
    losses = [t.net_cents for t in trades if t.net_cents < 0]
    gross_win, gross_loss = sum(wins), -sum(losses)
    count = len(trades)
    return {
        "closed_trades": count,
        "wins": len(wins),
        "losses": len(losses),
        "win_rate": round(len(wins) / count, 4) if count else None,
        "profit_factor": round(gross_win / gross_loss, 4) if gross_loss else None,
        "average_win": round(gross_win / len(wins) / 100, 2) if wins else None,
        "average_loss": round(-gross_loss / len(losses) / 100, 2) if losses else None,
        "expectancy": round(sum(t.net_cents for t in trades) / count / 100, 2) if count else None,
    }


def max_drawdown(equity: Sequence[int]) -> float | None:
    """The largest fall from a peak, as a fraction of the peak."""
    if not equity:
        return None
    peak, worst = equity[0], 0.0
    for value in equity:
        peak = max(peak, value)
        if peak > 0:
            worst = max(worst, (peak - value) / peak)
    return round(worst, 6)


def ratios(equity: Sequence[int]) -> dict[str, float | None]:
    """Annualised Sharpe and Sortino from daily equity (None with fewer than 3 days or no spread)."""
    returns = [b / a - 1 for a, b in itertools.pairwise(equity) if a > 0]
    if len(returns) < 2:
        return {"sharpe": None, "sortino": None}
    mean = sum(returns) / len(returns)
    spread = math.sqrt(sum((r - mean) ** 2 for r in returns) / (len(returns) - 1))
    downside = math.sqrt(sum(min(r, 0.0) ** 2 for r in returns) / len(returns))
    scale = math.sqrt(TRADING_DAYS)
    return {
        "sharpe": round(mean / spread * scale, 4) if spread > 0 else None,
        "sortino": round(mean / downside * scale, 4) if downside > 0 else None,
    }
