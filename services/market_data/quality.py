"""Data quality of a daily series: a score from 0 to 100 and the issues behind it.

The checks look at the last ``window_sessions`` sessions of the ASX calendar up to the last one that
has closed, and find: staleness (sessions closed since the newest bar), missing sessions, bars on
days without a session, empty bars, invalid bars (high below low, open or close outside the range,
non-positive prices, negative volume), zero-volume flat bars, and one-day spikes that reverse the
next day (bad ticks). Each kind costs points per occurrence, up to a cap.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from services.asx.calendar import AsxCalendar
from services.market_data.bars import PRICE_COLUMNS

# kind -> (points per occurrence, most points the kind can cost)
PENALTIES: dict[str, tuple[float, float]] = {
    "stale": (10, 50),
    "missing_sessions": (2, 30),
    "non_session_bar": (5, 20),
    "empty_bar": (5, 20),
    "invalid_bar": (10, 40),
    "zero_volume_flat_bar": (2, 20),
    "spike": (10, 40),
}
SHOWN_BARS = 10
# A spike "reverses" when the next close is back within this share of the jump.
REVERSAL_SHARE = 0.5
_TOLERANCE = 1e-9


@dataclass(frozen=True, slots=True)
class Issue:
    kind: str
    detail: str
    bars: tuple[str, ...] = ()
    # How many times it occurs, when that is not the number of bars named (sessions behind).
    occurrences: int | None = None

    @property
    def count(self) -> int:
        return self.occurrences if self.occurrences is not None else max(1, len(self.bars))

    def to_wire(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "detail": self.detail,
            "count": self.count,
            "bars": list(self.bars[:SHOWN_BARS]),
        }


def assess_quality(
    bars: pd.DataFrame,
    *,
    calendar: AsxCalendar,
    now: datetime,
    is_index: bool,
    window_sessions: int,
    spike_threshold: float,
) -> dict[str, Any]:
    expected = calendar.last_closed(now)
    if bars.empty or expected is None:
        return {
            "score": 0 if bars.empty else 100,
            "issues": [{"kind": "no_data", "detail": "no bars stored", "count": 1, "bars": []}]
            if bars.empty
            else [],
            "expected_last_session": expected.date.isoformat() if expected else None,
            "newest_bar": None,
            "sessions_behind": None,
            "bars_checked": 0,
        }
    sessions = calendar.sessions_between(
        expected.date - timedelta(days=2 * window_sessions + 14), expected.date
    )
    window_first = sessions[-window_sessions:][0] if sessions else expected.date
    first_key, last_key = window_first.isoformat(), expected.date.isoformat()
    window = bars.loc[(bars.index >= first_key) & (bars.index <= last_key)]

    issues: list[Issue] = []
    has_close = bars["close"].notna()
    newest = str(bars.index[has_close.to_numpy()][-1]) if has_close.any() else None
    behind = calendar.sessions_after(date.fromisoformat(newest), now) if newest else None
    if newest is None:
        issues.append(Issue("stale", "no bar has a close", occurrences=window_sessions))
    elif behind:
        issues.append(
            Issue(
                "stale",
                f"newest bar {newest} is {behind} session(s) behind the last session {last_key}",
                occurrences=behind,
            )
        )
    issues.extend(_calendar_issues(window, calendar, window_first, expected.date, newest))
    issues.extend(_bar_issues(window, is_index=is_index))
    issues.extend(_spikes(window, spike_threshold))

    penalty = 0.0
    for issue in issues:
        per_bar, cap = PENALTIES[issue.kind]
        penalty += min(cap, per_bar * issue.count)
    return {
        "score": round(max(0.0, 100.0 - penalty)),
        "issues": [issue.to_wire() for issue in issues],
        "window": {"first": first_key, "last": last_key},
        "expected_last_session": last_key,
        "newest_bar": newest,
        "sessions_behind": behind,
        "bars_checked": len(window),
    }


def _calendar_issues(
    window: pd.DataFrame, calendar: AsxCalendar, window_first: date, window_last: date, newest: str | None
) -> list[Issue]:
    issues = []
    keys = list(window.index)
    off_days = tuple(key for key in keys if not calendar.is_session(date.fromisoformat(key)))
    if off_days:
        issues.append(
            Issue("non_session_bar", f"{len(off_days)} bar(s) dated on a weekend or holiday", off_days)
        )
    if newest is not None and keys:
        complete_days = {
            key for key, close in zip(keys, window["close"].to_numpy(), strict=True) if close == close
        }
        start = max(window_first, date.fromisoformat(keys[0]))
        # Up to the newest bar, but not a session still in progress (its bar is not checked yet).
        until = min(date.fromisoformat(newest), window_last)
        expected = calendar.sessions_between(start, until)
        missing = tuple(day.isoformat() for day in expected if day.isoformat() not in complete_days)
        if missing:
            issues.append(Issue("missing_sessions", f"{len(missing)} session(s) with no bar", missing))
    return issues


def _bar_issues(window: pd.DataFrame, *, is_index: bool) -> list[Issue]:
    issues = []
    prices = window[list(PRICE_COLUMNS)].to_numpy(dtype=float)
    keys = np.asarray(window.index, dtype=object)
    empty = np.isnan(prices).all(axis=1)
    if empty.any():
        issues.append(Issue("empty_bar", f"{int(empty.sum())} bar(s) with no prices", tuple(keys[empty])))

    o, h, low, c = (window[name].to_numpy(dtype=float) for name in PRICE_COLUMNS)
    volume = window["volume"].to_numpy(dtype=float)
    slack = _TOLERANCE * np.nan_to_num(np.abs(h), nan=0.0)
    with np.errstate(invalid="ignore"):
        invalid = (
            (h < low - slack)
            | (c > h + slack)
            | (c < low - slack)
            | (o > h + slack)
            | (o < low - slack)
            | (np.nan_to_num(prices, nan=1.0) <= 0).any(axis=1)
            | (volume < 0)
        )
    if invalid.any():
        issues.append(
            Issue(
                "invalid_bar",
                f"{int(invalid.sum())} bar(s) with high below low, open or close outside the range, "
                "or a non-positive price or volume",
                tuple(keys[invalid]),
            )
        )
    if not is_index:
        flat = (o == h) & (h == low) & (low == c)
        zero_flat = flat & (volume == 0)
        if zero_flat.any():
            issues.append(
                Issue(
                    "zero_volume_flat_bar",
                    f"{int(zero_flat.sum())} bar(s) with no volume and open = high = low = close",
                    tuple(keys[zero_flat]),
                )
            )
    return issues


def _spikes(window: pd.DataFrame, threshold: float) -> list[Issue]:
    closes = window["close"].dropna()
    c = closes.to_numpy(dtype=float)
    if len(c) < 3:
        return []
    before, at, after = c[:-2], c[1:-1], c[2:]
    with np.errstate(divide="ignore", invalid="ignore"):
        jump = at / before - 1.0
        back = after / at - 1.0
        reverses = np.abs(after - before) <= REVERSAL_SHARE * np.abs(at - before)
    spike = (np.abs(jump) >= threshold) & (jump * back < 0) & reverses
    if not spike.any():
        return []
    keys = np.asarray(closes.index, dtype=object)[1:-1][spike]
    moves = ", ".join(f"{key} {move:+.0%}" for key, move in zip(keys, jump[spike], strict=True))
    return [Issue("spike", f"one-day moves reversed the next day: {moves}", tuple(keys))]
