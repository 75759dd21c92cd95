"""ASX trading phases in Sydney time: pre-open, open, closing auction, post-market and closed.

The session's open and close (early closes included) come from the calendar; the phases around
them are the ASX's own: pre-open from 07:00, the closing single price auction for 12 minutes
after the close, and the post-market adjust phases until 19:00. Every boundary is a wall-clock
time in Sydney turned into UTC through zoneinfo, so daylight saving is handled once, here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any

from services.asx.calendar import SYDNEY, AsxCalendar, Session

PRE_OPEN_FROM = time(7, 0)
CLOSING_AUCTION = timedelta(minutes=12)
POST_MARKET_UNTIL = time(19, 0)
REGULAR_CLOSE = time(16, 0)


class Phase(StrEnum):
    PRE_OPEN = "pre_open"
    OPEN = "open"
    CLOSING_AUCTION = "closing_auction"
    POST_MARKET = "post_market"
    CLOSED = "closed"


def sydney_time(day: date, wall: time) -> datetime:
    """``wall`` o'clock in Sydney on ``day``, in UTC.

    A time skipped by the spring-forward change is read with the standard-time offset, so it comes
    as long after midnight as on any other day (02:00 is the instant of the change, 02:30 becomes
    03:30 summer time); a time that happens twice in autumn maps to its first occurrence.
    """
    return datetime.combine(day, wall, SYDNEY).astimezone(UTC)


@dataclass(frozen=True, slots=True)
class PhaseAt:
    phase: Phase
    reason: str | None
    day: date  # the date in Sydney
    session: Session | None


def phase_at(calendar: AsxCalendar, now: datetime) -> PhaseAt:
    """The market phase at ``now`` and, when the market is not simply trading, why."""
    day = now.astimezone(SYDNEY).date()
    session = calendar.session(day)
    if session is None:
        reason = "weekend" if day.weekday() >= 5 else f"holiday: {calendar.holiday_name(day)}"
        return PhaseAt(Phase.CLOSED, reason, day, None)
    early = early_close_note(session)
    if now < sydney_time(day, PRE_OPEN_FROM):
        return PhaseAt(Phase.CLOSED, "before pre-open (07:00)", day, session)
    if now < session.open:
        return PhaseAt(Phase.PRE_OPEN, early, day, session)
    if now < session.close:
        return PhaseAt(Phase.OPEN, early, day, session)
    if now < session.close + CLOSING_AUCTION:
        return PhaseAt(Phase.CLOSING_AUCTION, early, day, session)
    if now < sydney_time(day, POST_MARKET_UNTIL):
        return PhaseAt(Phase.POST_MARKET, early, day, session)
    return PhaseAt(Phase.CLOSED, "after hours", day, session)


def early_close_note(session: Session) -> str | None:
    close = session.close.astimezone(SYDNEY).time()
    return f"early close at {close:%H:%M}" if close < REGULAR_CLOSE else None


def market_status(calendar: AsxCalendar, now: datetime) -> dict[str, Any]:
    """What ``get_market_status`` answers: the phase, its reason, and the next open and close."""
    current = phase_at(calendar, now)
    next_open = calendar.next_open(now)
    open_now = calendar.open_session(now)
    next_close = open_now.close if open_now is not None else next_open.close if next_open else None
    session = current.session
    return {
        "phase": str(current.phase),
        "reason": current.reason,
        "is_trading_day": session is not None,
        "early_close": session is not None and early_close_note(session) is not None,
        "date": current.day.isoformat(),
        "now_local": now.astimezone(SYDNEY).isoformat(),
        "now_utc": now.astimezone(UTC).isoformat(),
        "session_open_local": _local(session.open if session else None),
        "session_close_local": _local(session.close if session else None),
        "next_open_local": _local(next_open.open if next_open else None),
        "next_open_utc": _utc(next_open.open if next_open else None),
        "next_close_local": _local(next_close),
        "next_close_utc": _utc(next_close),
        "timezone": "Australia/Sydney",
    }


def _local(when: datetime | None) -> str | None:
    return when.astimezone(SYDNEY).isoformat() if when is not None else None


def _utc(when: datetime | None) -> str | None:
    return when.astimezone(UTC).isoformat() if when is not None else None
