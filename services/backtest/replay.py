"""``tradingctl replay``: the whole stack through history on one simulated clock.

A replay runs in a ``TRADING_HOME`` of its own, with config written for it:

- market data's ``replay`` source over the price directory: a bar's open shows from its
  session's open, the rest from its close, so nothing is seen before it happened;
- no news sources (historical news is not available here), so predictions say they are degraded;
- models trained on the bars before ``--from`` only (no look-ahead);
- the intraday tasks off: the replay source has daily bars, so nothing changes within a session
  but the open, which the morning tasks already see;
- coarse periodic timers (model reload and scoring daily, paper trading's check once a session,
  at the open), since every distinct timer is a step of the whole stack;
- callers wait out a restarting dependency (``rpc.connect_attempts``) instead of degrading, so a
  crashed and restarted service does not change a decision.

The manager starts every service as it would live, each on a simulated clock read from
``run/replay-clock``; the ``ReplayDriver`` moves them through time together. Prediction and paper
trading run their normal code: signals travel over the Redis stream, fills use the prices market
data shows at that time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import tomli_w
from redis.exceptions import RedisError

from services.asx.calendar import SYDNEY
from services.backtest.driver import ReplayDriver
from services.base.clock import utc_iso
from services.base.config import Settings, TradingHome, load_settings
from services.base.errors import ConfigError
from services.base.events import SIGNALS_STREAM
from services.base.redis_server import redis_url
from services.base.rpc import RpcClient
from services.sentiment.config import BIG4 as SENTIMENT_BIG4

# Callees before callers: the driver advances them in this order.
DRIVEN = ("market_data", "sentiment", "ml_model", "prediction", "paper_trading", "scheduler")
CLOCK_FILE = "replay-clock"
PAPER_GROUP = "paper_trading"
INDEX = "^AXJO"
DEFAULT_SYMBOLS = ("CBA.AX", "WBC.AX", "ANZ.AX", "NAB.AX")


@dataclass(frozen=True, slots=True)
class Window:
    """A stretch of history: from the start of ``start`` to the end of ``end``, Sydney time."""

    start: date
    end: date  # inclusive: the run goes to the end of this day

    @property
    def begins_at(self) -> datetime:
        return midnight_before(self.start)

    @property
    def ends_at(self) -> datetime:
        return midnight_before(self.end + timedelta(days=1))


@dataclass(frozen=True, slots=True)
class ReplayPlan(Window):
    prices: Path
    home: TradingHome
    symbols: tuple[str, ...] = DEFAULT_SYMBOLS
    # Simulated seconds per real second; None: as fast as the stack goes.
    speed: float | None = None
    models: tuple[str, ...] = ("logistic",)
    # Extra config tables, merged over the replay's own (e.g. [manager] restart settings).
    overrides: Mapping[str, Any] = field(default_factory=dict)
    synthetic: bool = False

    @property
    def clock_file(self) -> Path:
        return self.home.run / CLOCK_FILE

    def check(self) -> None:
        """``ConfigError`` naming what is wrong with the plan."""
        if self.end < self.start:
            raise ConfigError(f"--to {self.end} is before --from {self.start}")
        if self.speed is not None and self.speed <= 0:
            raise ConfigError("--speed must be above 0 (or 'max')")
        missing = [s for s in (*self.symbols, INDEX) if not (self.prices / f"{s}.csv").is_file()]
        if missing:
            raise ConfigError(f"no price file for {', '.join(missing)} in {self.prices}")


def midnight_before(day: date) -> datetime:
    """The start of ``day`` in Sydney, in UTC: where a run through history begins or ends."""
    return datetime.combine(day, datetime.min.time(), SYDNEY).astimezone(UTC)


DEMO_FIRST_DAY = date(2024, 1, 2)
DEMO_HISTORY_DAYS = 3 * 365


def demo_plan(home: TradingHome, *, speed: float, days: int) -> ReplayPlan:
    """A replay of a generated market: three years of history to train and warm the indicators
    on, then ``days`` of replay paced at ``speed``. The shipped calibration, fitted on the real
    banks, rarely gives a probability at the live BUY bar (0.6); the demo is there to show the
    stack at work, so it lowers that bar to 0.35 and trades on most BUY signals."""
    from services.market_data.synthetic import write_synthetic_market

    prices = home.root / "synthetic-prices"
    end = DEMO_FIRST_DAY + timedelta(days=days)
    write_synthetic_market(prices, DEMO_FIRST_DAY - timedelta(days=DEMO_HISTORY_DAYS), end, DEFAULT_SYMBOLS)
    return ReplayPlan(
        start=DEMO_FIRST_DAY, end=end, prices=prices, home=home, speed=speed, synthetic=True,
        overrides={"paper_trading": {"buy_confidence": 0.35}},
    )  # fmt: skip


def replay_tables(plan: ReplayPlan) -> dict[str, Any]:
    return history_tables(plan.symbols, plan.prices, plan.models, plan.overrides)


def history_tables(
    symbols: Sequence[str], prices: Path, models: Sequence[str], overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """The config of a run through history, the replay's and the back-test's alike, with the
    user's ``--config`` tables merged over it."""
    tables: dict[str, Any] = {
        "rpc": {"connect_attempts": 12},
        "market_data": {"source": "clocked_csv", "csv_dir": str(prices.absolute()), "symbols": list(symbols)},
        # Sentiment keeps its Big 4 view whatever is replayed (it has no news here either way).
        "sentiment": {
            "symbols": list(dict.fromkeys([*symbols, *SENTIMENT_BIG4])),
            "marketaux": {"enabled": False},
            "rss": {"enabled": False},
        },
        "ml_model": {
            "symbols": list(symbols),
            "models": list(models),
            "reload_interval_s": 86400.0,
            "score_interval_s": 86400.0,
        },
        "prediction": {"symbols": list(symbols)},
        # The clocked source shows a day's open at the open and the rest at the close: one check
        # a session, at the open, sees every price an intraday one would.
        "paper_trading": {"symbols": list(symbols), "check_interval_s": 86400.0},
        # The manager's own task (backups) runs on the real clock: not in a replay.
        "scheduler": {"disable": ["intraday_market_data", "intraday_predictions", "daily_backup"]},
    }
    return merge(tables, overrides)


def merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def config_text(plan: ReplayPlan) -> str:
    """The replay home's ``config.toml``."""
    return tomli_w.dumps(replay_tables(plan))


def prepare_home(plan: ReplayPlan, progress: Callable[[str], None] = print) -> Settings:
    """A fresh home with the replay's config, its clock at the start, and models trained on the
    bars before it. Refuses a home that already holds data: a replay never mixes with another."""
    plan.check()
    home = plan.home
    if home.data.exists() and any(home.data.iterdir()):
        raise ConfigError(f"{home.root} already holds a run's data; give a new --home")
    home.create()
    if plan.synthetic:
        home.synthetic_marker.write_text("prices in this home are generated, not real\n")
    home.config_file.write_text(config_text(plan))
    plan.clock_file.write_text(utc_iso(plan.begins_at))
    settings = load_settings(home, env={})
    train_models(plan, settings, progress)
    return settings


def train_models(plan: ReplayPlan, settings: Settings, progress: Callable[[str], None]) -> None:
    """Models on the bars before the replay's first day; a failure is said, and the replay goes on
    without ML (its predictions say so)."""
    from services.market_data.csv_files import read_price_csv
    from services.ml_model.config import MlModelConfig
    from services.ml_model.registry import ModelRegistry
    from services.ml_model.training import run_training

    config = settings.section("ml_model", MlModelConfig)
    cut = plan.start.isoformat()
    bars = {s: read_price_csv(plan.prices / f"{s}.csv") for s in (*plan.symbols, INDEX)}
    bars = {s: frame[frame.index < cut] for s, frame in bars.items()}
    index_bars = bars.pop(INDEX)
    progress(f"training {', '.join(config.models)} on the bars before {cut}")
    try:
        report = run_training(
            config, bars, index_bars, ModelRegistry(settings.home.models),
            now=plan.begins_at, source=f"price files in {plan.prices} before {cut}", activate=True,
        )  # fmt: skip
    except ValueError as exc:
        progress(f"no models: training failed ({exc}); predictions will go without ML")
        return
    for failure in report["failures"]:
        progress(f"model not trained: {failure}")


# -- driving ----------------------------------------------------------------------------------


async def drive(
    plan: ReplayPlan,
    settings: Settings,
    progress: Callable[[str], None] = print,
    reached: Callable[[str, float], None] = lambda _stage, _done: None,
) -> dict[str, Any]:
    """Move every service from the plan's start to its end, paced by ``plan.speed``; the driver's
    figures (steps, waits, outages, wall_s) and the sessions replayed."""
    home = plan.home
    # One connect attempt: the driver's own retries wait out a restart (and it sets each call's timeout).
    clients = {name: RpcClient(home.socket_path(name), connect_attempts=1) for name in DRIVEN}
    store = aioredis.Redis.from_url(redis_url(settings))

    async def backlog() -> int:
        """Signals on the stream that paper trading has not applied: unread plus unacknowledged."""
        try:
            if not await store.exists(SIGNALS_STREAM):
                return 0
            for group in await store.xinfo_groups(SIGNALS_STREAM):
                if _text(group["name"]) == PAPER_GROUP:
                    after = f"({_text(group['last-delivered-id'])}"
                    unread = await store.xrange(SIGNALS_STREAM, min=after, count=1)
                    return int(group["pending"]) + len(unread or [])
        except RedisError:
            return 1  # unknown while Redis is away (or restarting): not quiet
        return 1  # paper trading has not joined the stream yet

    driver = ReplayDriver(clients, backlog=backlog, clock_file=plan.clock_file)
    started = time.monotonic()  # for pacing
    label = " SYNTHETIC" if plan.synthetic else ""
    reported: list[date] = []

    span = (plan.ends_at - plan.begins_at).total_seconds()

    async def on_step(now: datetime) -> None:
        day = now.astimezone(SYDNEY).date()
        reached(f"replay {day}{label}", (now - plan.begins_at).total_seconds() / span)
        if plan.speed is not None:
            due = (now - plan.begins_at).total_seconds() / plan.speed
            await asyncio.sleep(max(0.0, due - (time.monotonic() - started)))
            if not reported or day != reported[-1]:  # paced: a line a day, with the book
                reported.append(day)
                book = await driver.ask("paper_trading", "get_portfolio_status")
                progress(
                    f"{day}{label}  equity ${book['equity']:,.2f}  positions {book['positions']}  "
                    f"waiting orders {book['pending_orders']}"
                )
        elif not reported or (day.year, day.month) != (reported[-1].year, reported[-1].month):
            reported.append(day)
            progress(f"{day:%Y-%m}{label}  steps {driver.figures.steps}  {time.monotonic() - started:.1f}s")

    try:
        await driver.run(plan.ends_at, on_step=on_step)
    finally:
        for client in clients.values():
            await client.close()
        await store.aclose()
    figures = dataclasses.asdict(driver.figures)
    return figures | {"wall_s": round(figures["wall_s"], 2), "sessions": len(_sessions(plan))}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _sessions(plan: ReplayPlan) -> list[date]:
    from services.asx.calendar import AsxCalendar

    return AsxCalendar().sessions_between(plan.start, plan.end)
