"""Task parsing, fire times in Sydney time (daylight saving and holidays included), market phases."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from itertools import islice
from typing import Any

import pytest

from services.asx.calendar import SYDNEY, AsxCalendar
from services.asx.market_hours import Phase, market_status, phase_at
from services.base.config import TradingHome, load_settings
from services.base.errors import ConfigError, InvalidParams
from services.scheduler.config import SchedulerConfig
from services.scheduler.tasks import DEFAULT_TASKS, DailyAt, Every, parse_task

CALENDAR = AsxCalendar()


def local(day: date, hh_mm: str) -> datetime:
    return datetime.combine(day, time.fromisoformat(hh_mm), SYDNEY)


def task(**fields: Any) -> dict[str, Any]:
    return {
        "id": "t",
        "service": "prediction",
        "method": "generate_predictions",
        "schedule": {"at": "09:30"},
    } | fields


# -- parsing ---------------------------------------------------------------------------------


def test_parse_fills_the_issue_defaults_and_round_trips() -> None:
    parsed = parse_task(task())
    assert parsed.schedule == DailyAt(time(9, 30), "trading")
    assert (parsed.retries, parsed.retry_backoff_s, parsed.retry_backoff_max_s) == (3, 30.0, 300.0)
    assert [parsed.backoff(n) for n in range(1, 6)] == [30.0, 60.0, 120.0, 240.0, 300.0]
    assert parse_task(parsed.to_wire()) == parsed


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"schedule": {"at": "9:30"}}, "config.schedule.at", "HH:MM"),
        ({"schedule": {"at": "24:00"}}, "config.schedule.at", "HH:MM"),
        (
            {"schedule": {"at": "09:30", "every_minutes": 5}},
            "config.schedule.every_minutes",
            "cannot be combined",
        ),
        (
            {"schedule": {"every_minutes": 15, "from": "16:00", "until": "10:00"}},
            "config.schedule.until",
            "later",
        ),
        ({"schedule": {"every_minutes": 1441}}, "config.schedule.every_minutes", "1440"),
        ({"schedule": {"at": "09:30", "days": "weekdays"}}, "config.schedule.days", "trading, all"),
        ({"schedule": {"at": "09:30", "tz": "UTC"}}, "config.schedule.tz", "unknown schedule field"),
        ({"schedule": "09:30"}, "config.schedule", "object"),
        ({"retries": -1}, "config.retries", "0 to 20"),
        ({"retries": True}, "config.retries", "integer"),
        ({"timeout_s": 0}, "config.timeout_s", "at least"),
        ({"retry_backoff_s": 60, "retry_backoff_max_s": 30}, "config.retry_backoff_max_s", "at least 60"),
        ({"phase": ["open", "lunch"]}, "config.phase", "unknown phase 'lunch'"),
        ({"depends_on": ["t"]}, "config.depends_on", "itself"),
        ({"depends_on": "other"}, "config.depends_on", "list"),
        ({"params": [1]}, "config.params", "object"),
        ({"id": "Bad Id"}, "config.id", "lower-case"),
        ({"method": "rm -rf"}, "config.method", "method name"),
        ({"owner": "me"}, "config.owner", "unknown task field"),
    ],
)
def test_parse_names_the_bad_field(fields: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(InvalidParams) as bad:
        parse_task(task(**fields))
    assert bad.value.data["field"] == field
    assert words in bad.value.message


def test_missing_fields_are_named() -> None:
    with pytest.raises(InvalidParams) as bad:
        parse_task({"id": "t", "service": "prediction", "schedule": {"at": "09:30"}})
    assert bad.value.data["field"] == "config.method"


def test_config_section_validates_tasks_and_dependencies(tmp_path: Any) -> None:
    home = TradingHome(tmp_path)
    home.config_file.write_text('[scheduler.tasks.evening_analysis]\nservice = "prediction"\nmethod = "x"\n')
    with pytest.raises(ConfigError, match=r"tasks\.evening_analysis\.schedule: missing required field"):
        load_settings(home, env={})
    home.config_file.write_text('[scheduler]\ndisable = ["intraday_market_data"]\n')
    with pytest.raises(ConfigError, match="'intraday_predictions' depends on 'intraday_market_data'"):
        load_settings(home, env={})
    home.config_file.write_text('[scheduler]\ndisable = ["lunch"]\n')
    with pytest.raises(ConfigError, match="'lunch' is not a default task"):
        load_settings(home, env={})
    home.config_file.write_text(
        '[scheduler.tasks.a]\nservice = "s"\nmethod = "m"\nschedule = { at = "01:00" }\ndepends_on = ["b"]\n'
        '[scheduler.tasks.b]\nservice = "s"\nmethod = "m"\nschedule = { at = "01:00" }\ndepends_on = ["a"]\n'
    )
    with pytest.raises(ConfigError, match="cycle"):
        load_settings(home, env={})


def test_config_replaces_a_default_task_and_keeps_the_rest() -> None:
    config = SchedulerConfig(
        disable=("paper_trading_eod",),
        tasks={"morning_analysis": {"service": "prediction", "method": "generate_predictions",
                                    "schedule": {"at": "09:35"}}},
    )  # fmt: skip
    tasks = config.configured_tasks()
    assert set(tasks) == {t["id"] for t in DEFAULT_TASKS} - {"paper_trading_eod"}
    assert tasks["morning_analysis"].schedule == DailyAt(time(9, 35))
    assert tasks["intraday_predictions"].depends_on == ("intraday_market_data",)


# -- fire times ------------------------------------------------------------------------------


def fires(fields: dict[str, Any], after: datetime, count: int) -> list[str]:
    parsed = parse_task(task(**fields))
    return [
        f"{t.astimezone(SYDNEY):%a %d %b %H:%M %Z}" for t in islice(parsed.fire_times(CALENDAR, after), count)
    ]


def test_daily_on_trading_days_skips_weekends_and_holidays() -> None:
    # Thursday 24 December 2026; Christmas Friday, the weekend and Monday 28 (Boxing Day observed).
    assert fires({}, local(date(2026, 12, 24), "00:00"), 3) == [
        "Thu 24 Dec 09:30 AEDT", "Tue 29 Dec 09:30 AEDT", "Wed 30 Dec 09:30 AEDT",
    ]  # fmt: skip
    assert fires({"schedule": {"at": "02:00", "days": "all"}}, local(date(2026, 12, 24), "03:00"), 3) == [
        "Fri 25 Dec 02:00 AEDT", "Sat 26 Dec 02:00 AEDT", "Sun 27 Dec 02:00 AEDT",
    ]  # fmt: skip


def test_fire_times_are_strictly_after_the_given_instant() -> None:
    assert fires({}, local(date(2026, 12, 21), "09:30"), 1) == ["Tue 22 Dec 09:30 AEDT"]
    assert fires({}, local(date(2026, 12, 21), "09:29"), 1) == ["Mon 21 Dec 09:30 AEDT"]


def test_every_n_minutes_within_the_open_phase_stops_at_an_early_close() -> None:
    intraday = {"schedule": {"every_minutes": 15, "from": "10:15"}, "phase": "open"}
    christmas_eve = fires(intraday, local(date(2026, 12, 24), "00:00"), 17)
    assert christmas_eve[0] == "Thu 24 Dec 10:15 AEDT"
    assert christmas_eve[15] == "Thu 24 Dec 14:00 AEDT"  # the market closes at 14:10
    assert christmas_eve[16] == "Tue 29 Dec 10:15 AEDT"
    monday = fires(intraday, local(date(2026, 12, 21), "00:00"), 24)
    assert monday[22] == "Mon 21 Dec 15:45 AEDT"
    assert monday[23] == "Tue 22 Dec 10:15 AEDT"


def test_every_with_until_and_all_days() -> None:
    every = {"schedule": {"every_minutes": 20, "from": "23:00", "until": "23:50", "days": "all"}}
    assert parse_task(task(**every)).schedule == Every(20, time(23, 0), time(23, 50), "all")
    assert fires(every, local(date(2026, 12, 26), "12:00"), 4) == [
        "Sat 26 Dec 23:00 AEDT", "Sat 26 Dec 23:20 AEDT", "Sat 26 Dec 23:40 AEDT", "Sun 27 Dec 23:00 AEDT",
    ]  # fmt: skip


def test_every_n_minutes_keeps_wall_clock_times_across_both_changes() -> None:
    every = {"schedule": {"every_minutes": 30, "from": "01:00", "until": "04:00", "days": "all"}}
    assert fires(every, local(date(2027, 4, 3), "12:00"), 6) == [  # 02:00-02:59 happens twice: once each
        "Sun 04 Apr 01:00 AEDT", "Sun 04 Apr 01:30 AEDT", "Sun 04 Apr 02:00 AEDT",
        "Sun 04 Apr 02:30 AEDT", "Sun 04 Apr 03:00 AEST", "Sun 04 Apr 03:30 AEST",
    ]  # fmt: skip
    assert fires(every, local(date(2026, 10, 3), "12:00"), 5) == [  # 02:00-02:59 does not exist
        "Sun 04 Oct 01:00 AEST", "Sun 04 Oct 01:30 AEST", "Sun 04 Oct 03:00 AEDT",
        "Sun 04 Oct 03:30 AEDT", "Mon 05 Oct 01:00 AEDT",
    ]  # fmt: skip
    ninety = {"schedule": {"every_minutes": 90, "days": "all"}}
    assert fires(ninety, local(date(2026, 10, 4), "02:59"), 2) == [
        "Sun 04 Oct 04:30 AEDT",
        "Sun 04 Oct 06:00 AEDT",
    ]


def test_a_phase_no_schedule_can_meet_has_no_next_fire() -> None:
    never = parse_task(task(schedule={"at": "03:00", "days": "all"}, phase="open"))
    assert never.next_fire(CALENDAR, datetime(2026, 12, 1, tzinfo=UTC)) is None


# -- market phases ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "phase", "reason"),
    [
        (local(date(2026, 12, 21), "06:59"), Phase.CLOSED, "before pre-open (07:00)"),
        (local(date(2026, 12, 21), "07:00"), Phase.PRE_OPEN, None),
        (local(date(2026, 12, 21), "10:00"), Phase.OPEN, None),
        (local(date(2026, 12, 21), "15:59"), Phase.OPEN, None),
        (local(date(2026, 12, 21), "16:00"), Phase.CLOSING_AUCTION, None),
        (local(date(2026, 12, 21), "16:12"), Phase.POST_MARKET, None),
        (local(date(2026, 12, 21), "19:00"), Phase.CLOSED, "after hours"),
        (local(date(2026, 12, 24), "14:09"), Phase.OPEN, "early close at 14:10"),
        (local(date(2026, 12, 24), "14:10"), Phase.CLOSING_AUCTION, "early close at 14:10"),
        (local(date(2026, 12, 24), "14:22"), Phase.POST_MARKET, "early close at 14:10"),
        (local(date(2026, 12, 25), "11:00"), Phase.CLOSED, "holiday: Christmas"),
        (local(date(2026, 12, 27), "11:00"), Phase.CLOSED, "weekend"),
        (local(date(2027, 3, 26), "11:00"), Phase.CLOSED, "holiday: Good Friday"),
        (local(date(2022, 9, 22), "11:00"), Phase.CLOSED, "holiday: market holiday"),  # a one-off closure
    ],
)
def test_phase_at(when: datetime, phase: Phase, reason: str | None) -> None:
    found = phase_at(CALENDAR, when)
    assert (found.phase, found.reason) == (phase, reason)


def test_market_status_in_winter_and_summer_time() -> None:
    winter = market_status(CALENDAR, local(date(2026, 6, 19), "17:00"))  # a Friday in AEST
    assert winter["phase"] == "post_market"
    assert winter["next_open_local"] == "2026-06-22T10:00:00+10:00"
    assert winter["next_open_utc"] == "2026-06-22T00:00:00+00:00"
    summer = market_status(CALENDAR, local(date(2026, 12, 21), "11:00"))
    assert summer["phase"] == "open"
    assert summer["is_trading_day"] is True
    assert summer["next_close_local"] == "2026-12-21T16:00:00+11:00"
    assert summer["next_close_utc"] == "2026-12-21T05:00:00+00:00"
    assert summer["next_open_local"] == "2026-12-22T10:00:00+11:00"
