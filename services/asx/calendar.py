"""The ASX trading calendar: sessions with their opening and closing times, early closes included.

A thin layer over exchange_calendars' XASX calendar. It is built once per process with an explicit
range, because the library's default covers only the last 20 years and the next one, and lookups
are bisections over plain lists, so a run through years of history can ask millions of times.
"""

from __future__ import annotations

import bisect
import warnings
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import exchange_calendars

SYDNEY = ZoneInfo("Australia/Sydney")
DEFAULT_FIRST_YEAR = 1990
# Years of sessions kept beyond the current one, so a long-running process never runs off the end.
YEARS_AHEAD = 2


@dataclass(frozen=True, slots=True)
class Session:
    """One trading day: its date in Sydney and its opening and closing times in UTC."""

    date: date
    open: datetime
    close: datetime


class AsxCalendar:
    def __init__(self, first: date | None = None, last: date | None = None) -> None:
        first = first or date(DEFAULT_FIRST_YEAR, 1, 1)
        last = last or date(datetime.now(UTC).year + YEARS_AHEAD, 12, 31)
        with warnings.catch_warnings():
            # exchange_calendars 4.x still uses pandas APIs that pandas 3.1 deprecates.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            xasx = exchange_calendars.get_calendar("XASX", start=first, end=last)
            schedule = xasx.schedule
            named = xasx.regular_holidays.holidays(first, last, return_name=True)
        self.first = first
        self.last = last
        self._dates: list[date] = [label.date() for label in schedule.index]
        self._opens: list[datetime] = [ts.to_pydatetime() for ts in schedule["open"]]
        self._closes: list[datetime] = [ts.to_pydatetime() for ts in schedule["close"]]
        self._by_date = {day: i for i, day in enumerate(self._dates)}
        self._holidays: dict[date, str] = {label.date(): str(name) for label, name in named.items()}
        for label in xasx.adhoc_holidays:
            if first <= label.date() <= last:
                self._holidays.setdefault(label.date(), "market holiday")

    def _session(self, i: int) -> Session:
        return Session(self._dates[i], self._opens[i], self._closes[i])

    def _check(self, when: datetime | date) -> None:
        day = when.date() if isinstance(when, datetime) else when
        if not self.first <= day <= self.last:
            raise ValueError(
                f"{day.isoformat()} is outside the ASX calendar loaded ({self.first} to {self.last})"
            )

    def is_session(self, day: date) -> bool:
        self._check(day)
        return day in self._by_date

    def session(self, day: date) -> Session | None:
        """The session on ``day``, or None on a weekend or holiday."""
        self._check(day)
        i = self._by_date.get(day)
        return None if i is None else self._session(i)

    def holiday_name(self, day: date) -> str | None:
        """Why a weekday is not a session (e.g. "Anzac Day"); None for sessions and weekends."""
        if day.weekday() >= 5 or self.is_session(day):
            return None
        return self._holidays.get(day, "market holiday")

    def sessions_between(self, first: date, last: date) -> list[date]:
        """Session dates from ``first`` to ``last``, both included."""
        lo = bisect.bisect_left(self._dates, first)
        hi = bisect.bisect_right(self._dates, last)
        return self._dates[lo:hi]

    def last_closed(self, now: datetime) -> Session | None:
        """The latest session whose close is at or before ``now``."""
        self._check(now)
        i = bisect.bisect_right(self._closes, now) - 1
        return self._session(i) if i >= 0 else None

    def open_session(self, now: datetime) -> Session | None:
        """The session in progress at ``now`` (open <= now < close), if any."""
        self._check(now)
        i = bisect.bisect_right(self._opens, now) - 1
        if i >= 0 and now < self._closes[i]:
            return self._session(i)
        return None

    def next_open(self, now: datetime) -> Session | None:
        """The first session that opens after ``now``."""
        self._check(now)
        i = bisect.bisect_right(self._opens, now)
        return self._session(i) if i < len(self._dates) else None

    def sessions_after(self, day: date, until: datetime) -> int:
        """How many sessions after ``day`` had closed by ``until``: how far behind data ending on it is."""
        closed = bisect.bisect_right(self._closes, until)
        seen = bisect.bisect_right(self._dates, day)
        return max(0, closed - seen)


def local_day_end(day: date) -> datetime:
    """Midnight in Sydney at the end of ``day``, in UTC."""
    return datetime.combine(day + timedelta(days=1), datetime.min.time(), SYDNEY).astimezone(UTC)
