"""``tradingctl replay``, ``demo`` and ``backtest``: the commands that run history.

``service_manager`` registers them through ``add_history_commands``; everything they need is
imported when they run, so the rest of ``tradingctl`` starts without it.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
import tomllib
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.base.config import Settings, TradingHome
from services.management.processes import PROJECT_ROOT

if TYPE_CHECKING:  # imported when used
    from services.backtest.replay import ReplayPlan
    from services.management.wire import HealthEntry

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
SHARED_PRICES = PROJECT_ROOT.parent / "shared" / "data" / "prices"
# Long enough for the manager's restart backoff and a service's start after a crash.
SETTLE_S = 60.0

Command = Callable[[str, Callable[[Settings, argparse.Namespace], int], str], argparse.ArgumentParser]


def add_history_commands(command: Command) -> None:
    from services.ml_model.config import MODEL_KINDS

    replay = command("replay", cmd_replay, "run the whole stack through history on a simulated clock; "
                     "a back-test report at the end")  # fmt: skip
    _window_arguments(replay)
    replay.add_argument("--speed", default="max", type=_speed,
                        help="simulated seconds per real second, or 'max' (the default)")  # fmt: skip
    replay.add_argument("--home", type=Path, help="the replay's own TRADING_HOME (default: "
                        "TRADING_HOME/replays/<from>_<to>-<time>)")  # fmt: skip
    replay.add_argument("--models", nargs="+", default=["logistic"], choices=MODEL_KINDS)
    replay.add_argument("--synthetic", action="store_true", help=argparse.SUPPRESS)
    demo = command("demo", cmd_demo, "the whole stack on a generated (SYNTHETIC) market at an accelerated "
                   "clock: prices, signals and paper trades within a minute, offline")  # fmt: skip
    demo.add_argument("--speed", type=float, default=10000.0, help="simulated seconds per real second")
    demo.add_argument("--days", type=int, default=365, help="how many simulated days to run")
    demo.add_argument("--home", type=Path, help="the demo's TRADING_HOME (default: TRADING_HOME/demo)")


def _window_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="start", type=date.fromisoformat, required=True, metavar="DATE")
    parser.add_argument("--to", dest="end", type=date.fromisoformat, required=True, metavar="DATE")
    parser.add_argument("--symbols", nargs="+", metavar="SYMBOL", help="default: the Big 4")
    parser.add_argument("--prices", type=Path, default=SHARED_PRICES,
                        metavar="DIR", help="<SYMBOL>.csv files, ^AXJO.csv included")  # fmt: skip
    parser.add_argument("--config", type=Path, help="a TOML file of config tables merged over the run's")


def _speed(text: str) -> str:
    if text != "max":
        try:
            if float(text) <= 0:
                raise ValueError
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: a number above 0, or 'max'") from None
    return text


def _say(line: str) -> None:
    print(line, flush=True)


# -- replay and demo ----------------------------------------------------------------------------


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    return _run_replay(replay_plan(settings, args))


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from services.backtest import replay

    home = TradingHome((args.home or settings.home.root / "demo").absolute())
    if home.root.exists():
        if not home.synthetic:
            print(f"{home.root} exists and is not a demo home; give another --home", file=sys.stderr)
            return EXIT_USAGE
        shutil.rmtree(home.root)  # an earlier demo's: the demo always starts afresh
    print(f"SYNTHETIC demo: a generated market (not real prices) in {home.root}", flush=True)
    print(f"watch it with: TRADING_HOME={home.root} tradingctl dashboard", flush=True)
    plan = replay.demo_plan(home, speed=float(args.speed), days=args.days)
    return _run_replay(plan)


def _run_replay(plan: ReplayPlan) -> int:
    from services.backtest import replay
    from services.base.runner import REPLAY_CLOCK
    from services.management.service_manager import LONG_CALL_S, launch_manager, manager

    replay_settings = replay.prepare_home(plan)
    home = plan.home
    print(f"replay {plan.start} to {plan.end} of {', '.join(plan.symbols)} in {home.root}", flush=True)
    env = {REPLAY_CLOCK: str(plan.clock_file)}
    if launch_manager(home, None, env) != EXIT_OK:
        return EXIT_FAILED
    try:
        result = manager(home, "start", {"services": None, "boot": True}, timeout=LONG_CALL_S)
        if not result["ok"]:
            for name, why in result["failed"].items():
                print(f"FAILED {name}: {why}", file=sys.stderr)
            return EXIT_FAILED
        try:
            figures = asyncio.run(replay.drive(plan, replay_settings, progress=_say))
        except KeyboardInterrupt:
            print(f"interrupted at {plan.clock_file.read_text()}; stopping the stack", file=sys.stderr)
            return EXIT_FAILED
        return _replay_report(plan, figures)
    finally:
        manager(home, "stop", {"services": None}, timeout=LONG_CALL_S)


def replay_plan(settings: Settings, args: argparse.Namespace) -> ReplayPlan:
    from services.backtest.replay import DEFAULT_SYMBOLS, ReplayPlan

    stamp = time.strftime("%Y%m%dT%H%M%S")
    root = args.home or settings.home.root / "replays" / f"{args.start}_{args.end}-{stamp}"
    overrides = tomllib.loads(args.config.read_text()) if args.config else {}
    return ReplayPlan(
        start=args.start, end=args.end, prices=args.prices.absolute(),
        home=TradingHome(root.absolute()), symbols=tuple(args.symbols or DEFAULT_SYMBOLS),
        speed=None if args.speed == "max" else float(args.speed), models=tuple(args.models),
        overrides=overrides, synthetic=args.synthetic,
    )  # fmt: skip


def _replay_report(plan: ReplayPlan, figures: dict[str, Any]) -> int:
    from services.backtest.report import build_report, read_prices, reconciled, trades, write_report
    from services.management.service_manager import call

    home = plan.home
    health = settled_health(home)
    prices, fills = read_prices(plan), trades(plan)
    report = build_report(
        plan,
        figures=figures,
        portfolio=call(home, "paper_trading", "get_portfolio_status"),
        performance=call(home, "paper_trading", "get_trading_performance", {"period": "all"}),
        health=health,
        prices=prices,
        fills=fills,
    )
    directory = write_report(plan, report, prices, fills)
    print((directory / "report.md").read_text())
    print(f"report: {directory}/report.md, report.json, equity.html, trades.csv")
    fine = all(_settled(entry) for entry in health)
    return EXIT_OK if fine and reconciled(report["portfolio"]["reconciled"]) else EXIT_FAILED


def settled_health(home: TradingHome, wait_s: float = SETTLE_S) -> list[HealthEntry]:
    """The stack's health once it has settled: every service up and connected to Redis again.

    A service that died near the end of a replay is being restarted by the manager, and one that
    lost Redis reconnects after a backoff; their health a moment later is the stack's real state.
    Stops waiting at once when a service is FATAL (the manager gave up on it), else after ``wait_s``.
    """
    from services.management.service_manager import manager
    from services.management.states import ProcessState

    deadline = time.monotonic() + wait_s
    while True:
        health: list[HealthEntry] = manager(home, "stack_health", {"service": None})
        if all(_settled(entry) for entry in health) or time.monotonic() > deadline:
            return health
        status = manager(home, "status")
        if any(p["state"] == ProcessState.FATAL for p in status["processes"]):
            return health
        time.sleep(0.5)


def _settled(entry: HealthEntry) -> bool:
    redis_check = ((entry["report"] or {}).get("checks") or {}).get("redis") or {}
    return entry["status"] in ("ok", "degraded") and redis_check.get("status") != "degraded"
