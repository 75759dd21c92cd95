"""Task definitions: what to call, when, and how hard to try; parsed and checked field by field.

A task is written as a plain object (in ``config.toml`` or to ``schedule_task``)::

    {"id": "intraday_predictions", "service": "prediction", "method": "generate_predictions",
     "schedule": {"every_minutes": 15, "from": "10:15"}, "phase": "open",
     "depends_on": ["intraday_market_data"], "retries": 3, "timeout_s": 300}

Schedules are local Sydney times: ``{"at": "HH:MM"}`` fires once a day, ``{"every_minutes": N,
"from": "HH:MM", "until": "HH:MM"}`` every N minutes in that window; ``"days"`` is ``"trading"``
(the default: ASX sessions only) or ``"all"``. ``phase`` keeps only the fire times that fall in
the named market phase(s).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from types import MappingProxyType
from typing import Any, Literal

from services.asx.calendar import SYDNEY, AsxCalendar
from services.asx.market_hours import Phase, phase_at, sydney_time
from services.base.errors import InvalidParams

TASK_ID = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
SERVICE_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
METHOD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,63}")
HH_MM = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")

Days = Literal["trading", "all"]
DAYS: tuple[Days, ...] = ("trading", "all")

DEFAULT_RETRIES = 3
DEFAULT_BACKOFF_S = 30.0
DEFAULT_BACKOFF_MAX_S = 300.0
DEFAULT_TIMEOUT_S = 300.0
DEFAULT_MISFIRE_GRACE_S = 600.0
SEARCH_HORIZON = timedelta(days=400)


@dataclass(frozen=True, slots=True)
class DailyAt:
    """Once a day at a wall-clock time in Sydney."""

    at: time
    days: Days = "trading"

    def candidates(self, day: date) -> Iterator[datetime]:
        yield sydney_time(day, self.at)

    def describe(self) -> str:
        return f"{self.at:%H:%M} on {_days_text(self.days)}"

    def to_wire(self) -> dict[str, Any]:
        return {"at": f"{self.at:%H:%M}", "days": self.days}


@dataclass(frozen=True, slots=True)
class Every:
    """Every ``minutes`` from ``start`` until ``until`` (exclusive; the day's end when None)."""

    minutes: int
    start: time = time(0, 0)
    until: time | None = None
    days: Days = "trading"

    def candidates(self, day: date) -> Iterator[datetime]:
        # Stepped in Sydney wall-clock time, like the daily times: the same local times every day.
        # Times a daylight-saving change skips can land on a later one; each instant comes once.
        start = self.start.hour * 60 + self.start.minute
        end = self.until.hour * 60 + self.until.minute if self.until is not None else 24 * 60
        seen: set[datetime] = set()
        for minute in range(start, end, self.minutes):
            when = sydney_time(day, time(minute // 60, minute % 60))
            if when not in seen:
                seen.add(when)
                yield when

    def describe(self) -> str:
        until = f" until {self.until:%H:%M}" if self.until is not None else ""
        return f"every {self.minutes} min from {self.start:%H:%M}{until} on {_days_text(self.days)}"

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "every_minutes": self.minutes,
            "from": f"{self.start:%H:%M}",
            "days": self.days,
        }
        if self.until is not None:
            wire["until"] = f"{self.until:%H:%M}"
        return wire


Schedule = DailyAt | Every


def _days_text(days: Days) -> str:
    return "trading days" if days == "trading" else "every day"


@dataclass(frozen=True, slots=True, kw_only=True)
class Task:
    id: str
    service: str
    method: str
    schedule: Schedule
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    phases: frozenset[Phase] = frozenset()
    depends_on: tuple[str, ...] = ()
    retries: int = DEFAULT_RETRIES
    retry_backoff_s: float = DEFAULT_BACKOFF_S
    retry_backoff_max_s: float = DEFAULT_BACKOFF_MAX_S
    timeout_s: float = DEFAULT_TIMEOUT_S
    misfire_grace_s: float = DEFAULT_MISFIRE_GRACE_S
    description: str = ""

    def backoff(self, failed_attempt: int) -> float:
        """Seconds to wait after attempt ``failed_attempt`` (1-based): doubling, capped."""
        return float(min(self.retry_backoff_s * 2 ** (failed_attempt - 1), self.retry_backoff_max_s))

    def fire_times(self, calendar: AsxCalendar, after: datetime) -> Iterator[datetime]:
        """Every fire time later than ``after``, in order, for a year at most.

        The bound keeps a schedule that can never fire (a phase its times never meet) from
        scanning the whole calendar on the event loop; such a task has no next run.
        """
        day = after.astimezone(SYDNEY).date()
        last = min(calendar.last, day + SEARCH_HORIZON)
        while day <= last:
            if self.schedule.days == "all" or calendar.is_session(day):
                for when in self.schedule.candidates(day):
                    if when > after and self.allowed_in(calendar, when):
                        yield when
            day += timedelta(days=1)

    def next_fire(self, calendar: AsxCalendar, after: datetime) -> datetime | None:
        return next(self.fire_times(calendar, after), None)

    def allowed_in(self, calendar: AsxCalendar, when: datetime) -> bool:
        return not self.phases or phase_at(calendar, when).phase in self.phases

    def to_wire(self) -> dict[str, Any]:
        """The task as written in config or to ``schedule_task``; ``parse_task`` reads it back."""
        return {
            "id": self.id,
            "service": self.service,
            "method": self.method,
            "params": dict(self.params),
            "schedule": self.schedule.to_wire(),
            "phase": sorted(str(phase) for phase in self.phases),
            "depends_on": list(self.depends_on),
            "retries": self.retries,
            "retry_backoff_s": self.retry_backoff_s,
            "retry_backoff_max_s": self.retry_backoff_max_s,
            "timeout_s": self.timeout_s,
            "misfire_grace_s": self.misfire_grace_s,
            "description": self.description,
        }


# -- parsing ---------------------------------------------------------------------------------

TASK_FIELDS = frozenset(
    {
        "id", "service", "method", "params", "schedule", "phase", "depends_on", "retries",
        "retry_backoff_s", "retry_backoff_max_s", "timeout_s", "misfire_grace_s", "description",
    }
)  # fmt: skip
SCHEDULE_FIELDS = frozenset({"at", "every_minutes", "from", "until", "days"})


def parse_task(raw: Any, *, where: str = "config", task_id: str | None = None) -> Task:
    """Build a ``Task`` from a plain object; ``InvalidParams`` names the first bad field."""
    if not isinstance(raw, Mapping):
        raise InvalidParams("a task must be an object", field=where)
    for key in raw:
        if key not in TASK_FIELDS:
            raise InvalidParams(f"unknown task field {key!r}", field=f"{where}.{key}")
    fields = dict(raw)
    if task_id is not None:
        if "id" in fields and fields["id"] != task_id:
            raise InvalidParams(
                f"id {fields['id']!r} differs from the table name {task_id!r}", field=f"{where}.id"
            )
        fields["id"] = task_id
    get = _Reader(fields, where)
    retry_backoff_s = get.number("retry_backoff_s", DEFAULT_BACKOFF_S, minimum=0.0)
    return Task(
        id=get.matching("id", TASK_ID, "lower-case letters, digits, '_', '.' or '-', at most 64"),
        service=get.matching("service", SERVICE_NAME, "a service name such as 'market_data'"),
        method=get.matching("method", METHOD_NAME, "an RPC method name"),
        schedule=parse_schedule(get.required("schedule"), where=f"{where}.schedule"),
        params=MappingProxyType(dict(get.mapping("params"))),
        phases=get.phases("phase"),
        depends_on=get.task_ids("depends_on"),
        retries=get.integer("retries", DEFAULT_RETRIES, minimum=0, maximum=20),
        retry_backoff_s=retry_backoff_s,
        retry_backoff_max_s=get.number("retry_backoff_max_s", max(DEFAULT_BACKOFF_MAX_S, retry_backoff_s),
                                       minimum=retry_backoff_s),
        timeout_s=get.number("timeout_s", DEFAULT_TIMEOUT_S, minimum=0.001),
        misfire_grace_s=get.number("misfire_grace_s", DEFAULT_MISFIRE_GRACE_S, minimum=0.0),
        description=get.text("description"),
    )  # fmt: skip


def parse_schedule(raw: Any, *, where: str) -> Schedule:
    if not isinstance(raw, Mapping):
        raise InvalidParams('a schedule is an object such as {"at": "09:30"}', field=where)
    for key in raw:
        if key not in SCHEDULE_FIELDS:
            raise InvalidParams(f"unknown schedule field {key!r}", field=f"{where}.{key}")
    get = _Reader(dict(raw), where)
    days = get.choice("days", DAYS, "trading")
    if "at" in raw:
        extra = [key for key in ("every_minutes", "from", "until") if key in raw]
        if extra:
            raise InvalidParams(f"'at' cannot be combined with {extra[0]!r}", field=f"{where}.{extra[0]}")
        return DailyAt(get.clock_time("at"), days)
    if "every_minutes" in raw:
        minutes = get.integer("every_minutes", 0, minimum=1, maximum=24 * 60)
        start = get.clock_time("from") if "from" in raw else time(0, 0)
        until = get.clock_time("until") if "until" in raw else None
        if until is not None and until <= start:
            raise InvalidParams("'until' must be later than 'from'", field=f"{where}.until")
        return Every(minutes, start, until, days)
    raise InvalidParams("a schedule needs 'at' (HH:MM) or 'every_minutes'", field=where)


class _Reader:
    """Typed reads of one object's fields, each failure naming ``where.field``."""

    def __init__(self, fields: dict[str, Any], where: str) -> None:
        self.fields = fields
        self.where = where

    def fail(self, key: str, message: str) -> InvalidParams:
        return InvalidParams(message, field=f"{self.where}.{key}")

    def required(self, key: str) -> Any:
        if key not in self.fields:
            raise self.fail(key, f"missing required field {key!r}")
        return self.fields[key]

    def matching(self, key: str, pattern: re.Pattern[str], expected: str) -> str:
        value = self.required(key)
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise self.fail(key, f"{key} must be {expected}, got {value!r}")
        return value

    def text(self, key: str) -> str:
        value = self.fields.get(key, "")
        if not isinstance(value, str):
            raise self.fail(key, f"{key} must be a string")
        return value

    def mapping(self, key: str) -> Mapping[str, Any]:
        value = self.fields.get(key, {})
        if not isinstance(value, Mapping):
            raise self.fail(key, f"{key} must be an object of named parameters")
        return value

    def integer(self, key: str, default: int, *, minimum: int, maximum: int) -> int:
        value = self.fields.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
            raise self.fail(key, f"{key} must be an integer from {minimum} to {maximum}, got {value!r}")
        return value

    def number(self, key: str, default: float, *, minimum: float) -> float:
        value = self.fields.get(key, default)
        if not isinstance(value, int | float) or isinstance(value, bool) or not value >= minimum:
            raise self.fail(key, f"{key} must be a number of at least {minimum:g}, got {value!r}")
        return float(value)

    def choice(self, key: str, choices: tuple[Days, ...], default: Days) -> Days:
        value = self.fields.get(key, default)
        for choice in choices:
            if value == choice:
                return choice
        raise self.fail(key, f"{key} must be one of {', '.join(choices)}, got {value!r}")

    def clock_time(self, key: str) -> time:
        value = self.fields[key]
        match = HH_MM.fullmatch(value) if isinstance(value, str) else None
        if match is None:
            raise self.fail(key, f"{key} must be a time HH:MM (00:00 to 23:59), got {value!r}")
        return time(int(match[1]), int(match[2]))

    def phases(self, key: str) -> frozenset[Phase]:
        value = self.fields.get(key, [])
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list | tuple):
            raise self.fail(key, f"{key} must be a phase name or a list of them")
        known = {str(phase) for phase in Phase}
        for name in names:
            if name not in known:
                raise self.fail(key, f"unknown phase {name!r}; choose from {', '.join(sorted(known))}")
        return frozenset(Phase(name) for name in names)

    def task_ids(self, key: str) -> tuple[str, ...]:
        value = self.fields.get(key, [])
        if not isinstance(value, list | tuple) or not all(
            isinstance(item, str) and TASK_ID.fullmatch(item) for item in value
        ):
            raise self.fail(key, f"{key} must be a list of task ids")
        if self.fields.get("id") in value:
            raise self.fail(key, "a task cannot depend on itself")
        return tuple(value)


# -- the stack's default schedule -----------------------------------------------------------

DEFAULT_TASKS: tuple[dict[str, Any], ...] = (
    {
        "id": "morning_analysis",
        "service": "prediction",
        "method": "generate_predictions",
        "schedule": {"at": "09:30"},
        "description": "predictions for the day ahead, before the open",
    },
    {
        "id": "morning_market_data",
        "service": "market_data",
        "method": "refresh_all_data",
        "schedule": {"at": "09:45"},
        "description": "prices up to the last close",
    },
    {
        "id": "morning_sentiment",
        "service": "sentiment",
        "method": "refresh_sentiment_cache",
        "schedule": {"at": "09:50"},
        "description": "news sentiment before the open",
    },
    {
        "id": "intraday_market_data",
        "service": "market_data",
        "method": "refresh_all_data",
        "schedule": {"every_minutes": 15, "from": "10:15"},
        "phase": "open",
        "description": "prices every 15 minutes while the market is open",
    },
    {
        "id": "intraday_predictions",
        "service": "prediction",
        "method": "generate_predictions",
        "schedule": {"every_minutes": 15, "from": "10:15"},
        "phase": "open",
        "depends_on": ["intraday_market_data"],
        "description": "predictions on the fresh prices, after the intraday refresh",
    },
    {
        "id": "evening_analysis",
        "service": "prediction",
        "method": "generate_predictions",
        "schedule": {"at": "17:00"},
        "description": "predictions on the day's closing prices",
    },
    {
        "id": "paper_trading_eod",
        "service": "paper_trading",
        "method": "end_of_day_sync",
        "schedule": {"at": "17:30"},
        "description": "end-of-day equity snapshot and sync of the paper book",
    },
    {
        "id": "daily_backup",
        "service": "manager",
        "method": "backup",
        "schedule": {"at": "02:00", "days": "all"},
        "timeout_s": 900,
        "misfire_grace_s": 6 * 3600,
        "description": "online SQLite backup of every service database into backups/YYYY-MM-DD (14 kept)",
    },
)
