"""``tradingctl replay``, ``demo`` and ``backtest``: the commands that run history.

``service_manager`` registers them through ``add_history_commands``; everything they need is
imported when they run, so the rest of ``tradingctl`` starts without it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.base.config import Settings, TradingHome
from services.management.processes import PROJECT_ROOT

if TYPE_CHECKING:  # imported when used
    from services.backtest.calibrate import Policy
    from services.backtest.fast import BacktestPlan
    from services.backtest.replay import ReplayPlan
    from services.backtest.report import History
    from services.management.wire import HealthEntry

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
SHARED_PRICES = PROJECT_ROOT.parent / "shared" / "data" / "prices"
# Long enough for the manager's restart backoff and a service's start after a crash.
SETTLE_S = 60.0
SCHEDULER_TIMEOUT_S = 20

Command = Callable[[str, Callable[[Settings, argparse.Namespace], int], str], argparse.ArgumentParser]


def add_history_commands(command: Command) -> None:
    from services.ml_model.config import MODEL_KINDS

    replay = command(
        "replay",
        cmd_replay,
        "run the whole stack through history on a simulated clock; a back-test report at the end",
    )
    _window_arguments(replay)
    replay.add_argument(
        "--speed",
        default="max",
        type=_speed,
        help="simulated seconds per real second, or 'max' (the default)",
    )
    replay.add_argument(
        "--home",
        type=Path,
        help="the replay's own TRADING_HOME (default: TRADING_HOME/replays/<from>_<to>-<time>)",
    )
    replay.add_argument("--models", nargs="+", default=["logistic"], choices=MODEL_KINDS)
    replay.add_argument("--synthetic", action="store_true", help=argparse.SUPPRESS)
    backtest = command(
        "backtest",
        cmd_backtest,
        "the stack's decisions and paper trades over history in one process (no services, no Redis): "
        "the same report as replay, in seconds",
    )
    _window_arguments(backtest)
    backtest.add_argument("--models", nargs="+", default=["logistic"], choices=MODEL_KINDS)
    backtest.add_argument(
        "--out", type=Path, help="the report's directory (default: TRADING_HOME/backtests/<from>_<to>-<time>)"
    )
    backtest.add_argument(
        "--calibration",
        default="walk-forward",
        metavar="WHICH",
        help="walk-forward (default: refitted on the run's own past decisions), shipped, active (this "
        "home's), or a calibration version's directory",
    )
    backtest.add_argument("--synthetic", action="store_true", help=argparse.SUPPRESS)
    calibrate = command(
        "calibrate",
        cmd_calibrate,
        "fit the probability that a signal is right on the decisions of a stretch of history, and make "
        "it the one prediction uses",
    )
    _window_arguments(calibrate)
    calibrate.add_argument("--models", nargs="+", default=["logistic"], choices=MODEL_KINDS)
    calibrate.add_argument("--no-activate", action="store_true", help="save it, but leave the active one")
    calibrate.add_argument(
        "--out", type=Path, help="write the version into this new directory instead of the home's models/"
    )
    tune = command(
        "tune",
        cmd_tune,
        "walk-forward tuning of the decision's weights and thresholds and the trading rules on Dask; "
        "reports only the test windows, against buy-and-hold",
    )
    _window_arguments(tune)
    tune.add_argument("--models", nargs="+", default=["logistic"], choices=MODEL_KINDS)
    tune.add_argument("--grid", type=Path, help='a TOML file with a [grid] table of "section.key" = [values]')
    tune.add_argument("--train-years", type=int, default=4, help="each training window (default 4)")
    tune.add_argument("--test-years", type=int, default=2, help="each test window after it (default 2)")
    tune.add_argument(
        "--mode",
        choices=("anchored", "rolling"),
        default="anchored",
        help="training windows from --from (anchored) or of --train-years each (rolling)",
    )
    where = tune.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help="a Dask scheduler to use, e.g. tcp://HOST:8786")
    where.add_argument(
        "--workers", type=int, help="a local Dask cluster of this many processes (default: cores)"
    )
    where.add_argument("--serial", action="store_true", help="no Dask: every task in this process")
    tune.add_argument("--out", type=Path, help="the report's directory (default: TRADING_HOME/tuning/<time>)")
    demo = command(
        "demo",
        cmd_demo,
        "the whole stack on a generated (SYNTHETIC) market at an accelerated "
        "clock: prices, signals and paper trades within a minute, offline",
    )
    demo.add_argument("--speed", type=float, default=10000.0, help="simulated seconds per real second")
    demo.add_argument("--days", type=int, default=365, help="how many simulated days to run")
    demo.add_argument("--home", type=Path, help="the demo's TRADING_HOME (default: TRADING_HOME/demo)")


def _window_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="start", type=date.fromisoformat, required=True, metavar="DATE")
    parser.add_argument("--to", dest="end", type=date.fromisoformat, required=True, metavar="DATE")
    parser.add_argument("--symbols", nargs="+", metavar="SYMBOL", help="default: the Big 4")
    parser.add_argument(
        "--prices",
        type=Path,
        default=SHARED_PRICES,
        metavar="DIR",
        help="<SYMBOL>.csv files, ^AXJO.csv included",
    )
    parser.add_argument("--config", type=Path, help="a TOML file of config tables merged over the run's")


def _speed(text: str) -> str:
    if text != "max":
        try:
            if float(text) <= 0:
                raise ValueError
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: a number above 0, or 'max'") from None
    return text


def read_toml(path: Path) -> dict[str, Any]:
    """A ``--config`` or ``--grid`` file's tables; ``ConfigError`` naming the file and the fault."""
    from services.base.errors import ConfigError

    try:
        return tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _say(line: str) -> None:
    print(line, flush=True)


# -- backtest ------------------------------------------------------------------------------------


def backtest_plan(settings: Settings, args: argparse.Namespace) -> BacktestPlan:
    """The plan of ``backtest`` or ``tune`` from their arguments."""
    from services.backtest.fast import BacktestPlan
    from services.backtest.replay import DEFAULT_SYMBOLS

    return BacktestPlan(
        start=args.start,
        end=args.end,
        prices=args.prices.absolute(),
        symbols=tuple(args.symbols or DEFAULT_SYMBOLS),
        models=tuple(args.models),
        overrides=read_toml(args.config) if args.config else {},
        model_cache=settings.home.root / "cache" / "backtest-models",
        synthetic=getattr(args, "synthetic", False),
        calibration=calibration_policy(settings, getattr(args, "calibration", "walk-forward")),
    )


def calibration_policy(settings: Settings, which: str) -> Policy | None:
    """``--calibration``: None for walk-forward (the plan's default), else the calibration named."""
    from services.backtest.calibrate import Fixed
    from services.base.errors import ConfigError, TradingError
    from services.prediction.calibration_store import CalibrationStore, load_directory, shipped

    try:
        if which == "walk-forward":
            return None
        if which == "shipped":
            return Fixed(shipped())
        if which == "active":
            return Fixed(CalibrationStore(settings.home.models / "calibration").load())
        path = Path(which)
        return Fixed(load_directory(path, path.name))
    except TradingError as exc:
        raise ConfigError(f"--calibration {which}: {exc.message}") from None


def cmd_backtest(settings: Settings, args: argparse.Namespace) -> int:
    from services.backtest.fast import run_backtest
    from services.backtest.report import History, reconciled
    from services.base.clock import utc_iso
    from services.base.errors import ConfigError

    started = time.perf_counter()
    try:
        plan = backtest_plan(settings, args)
        with _progress_bar() as progress:
            run = run_backtest(plan, progress)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    book = run.book
    history = History(
        kind="backtest",
        start=plan.start,
        end=plan.end,
        symbols=plan.symbols,
        prices=plan.prices,
        synthetic=plan.synthetic,
        predictions=[
            {
                "symbol": m.symbol,
                "signal": m.signal,
                "confidence": m.confidence,
                "probability": m.probability,
                "cases": m.cases,
                "calibration": m.calibration,
                "combined": m.combined,
                "regime": m.regime,
                "price": m.price,
                "price_time": m.price_time,
                "degraded": m.degraded,
                "created_at": utc_iso(m.at),
            }
            for m in run.decisions
        ],
        fills=book.fills,
        equity=book.equity,
        starting_cents=book.starting_cents,
        cash_cents=book.cash_cents,
        open_positions=book.open_positions,
        pending_orders=book.pending_orders,
        reconciled=book.reconciled,
        run={
            "wall_s": round(time.perf_counter() - started, 2),
            **{name: round(value, 3) for name, value in run.timings.items()},
            "models": "from the cache" if run.training["cached"] else "trained",
            "ignored_signals": dict(book.ignored),
            "rejected_orders": dict(book.rejected),
            "risk_alerts": book.risk_alerts,
        },
        calibration=run.calibration,
    )
    for failure in run.training["failures"]:
        print(f"model not trained: {failure}", file=sys.stderr)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    out = args.out or settings.home.root / "backtests" / f"{plan.start}_{plan.end}-{stamp}"
    report = _write(history, out.absolute())
    return EXIT_OK if reconciled(report["portfolio"]["reconciled"]) else EXIT_FAILED


def cmd_calibrate(settings: Settings, args: argparse.Namespace) -> int:
    import numpy as np
    import sklearn  # type: ignore[import-untyped]

    from services.backtest.calibrate import fit_window
    from services.backtest.fast import prepare
    from services.base.clock import utc_iso
    from services.base.errors import ConfigError
    from services.prediction.calibration_store import CalibrationStore, write_version

    plan = backtest_plan(settings, args)
    try:
        run_settings = plan.settings()
        with _progress_bar() as progress:
            prepared = prepare(plan, run_settings, progress)
        source = f"tradingctl calibrate --from {plan.start} --to {plan.end}"
        calibration = fit_window(prepared.inputs, run_settings.prediction, plan, source)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if calibration is None:
        print(
            f"error: too few decisions with a known outcome between {plan.start} and {plan.end}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    card = {
        "created_at": utc_iso(datetime.now(UTC)),
        "command": source,
        "prices": str(plan.prices),
        "models": f"{', '.join(plan.models)} trained on the bars before {plan.start}",
        "fitted": dict(calibration.fitted),
        "settings": dict(calibration.settings),
        "libraries": {"numpy": np.__version__, "scikit-learn": sklearn.__version__},
    }
    if args.out:
        args.out.mkdir(parents=True)
        write_version(args.out, calibration, card)
        where = f"written to {args.out}"
    else:
        store = CalibrationStore(settings.home.models / "calibration")
        version = store.save(calibration, card)
        if not args.no_activate:
            store.activate(version)
        where = f"saved as {version}" + ("" if args.no_activate else ", active (prediction loads it)")
    fitted = calibration.fitted
    print(
        f"calibration of {fitted['cases']} decisions from {fitted['from']} to {fitted['to']} "
        f"(moves up to {fitted['through']}; base rate of a rise {fitted['base_rate_up']:.1%}): {where}"
    )
    for group, pair in calibration.curves.items():
        steps = ", ".join(f"{p:.1%} ({n})" for p, n in zip(pair["up"].p, pair["up"].n, strict=True))
        print(f"  P(rise) by score, {group}: {steps}")
    return EXIT_OK


@contextlib.contextmanager
def _progress_bar() -> Iterator[Callable[[str, float], None]]:
    """A rich progress bar on stderr (shown on a terminal only) fed with (stage, share done)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    columns = (TextColumn("{task.description:<20}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("starting", total=1.0)

        def update(stage: str, done: float) -> None:
            bar.update(task, description=stage, completed=done)

        yield update


def cmd_tune(settings: Settings, args: argparse.Namespace) -> int:
    import orjson
    import tomli_w

    from services.backtest import tune as tuning
    from services.backtest.fast import prepare
    from services.backtest.replay import history_tables
    from services.backtest.report import read_prices
    from services.base.errors import ConfigError

    plan = backtest_plan(settings, args)
    try:
        grid = tuning.parse_grid(read_toml(args.grid)) if args.grid else tuning.DEFAULT_GRID
        cuts = tuning.folds(args.start, args.end, args.train_years, args.test_years, args.mode)
        with _progress_bar() as bar:
            prepared = prepare(plan, plan.settings(), bar)
            prices = read_prices(plan.prices, plan.symbols)
            with _runner(args) as (runner, where):
                result = tuning.tune(plan, prepared, grid, cuts, prices, runner, bar)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    out = (args.out or settings.home.root / "tuning" / time.strftime("%Y%m%dT%H%M%S")).absolute()
    out.mkdir(parents=True, exist_ok=True)
    document = {
        "grid": result.grid,
        "settings": len(result.settings),
        "mode": args.mode,
        "where": where,
        "folds": result.folds,
        "out_of_sample": result.out_of_sample,
        "adopt": result.adopt,
    }
    (out / "tune.json").write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    (out / "tune.md").write_text(tuning.markdown(result, plan, args.mode, where))
    header = "# Chosen on the latest training window by `tradingctl tune`; see tune.md before adopting it.\n"
    tables = history_tables(plan.symbols, plan.prices, plan.models, plan.overrides)
    (out / "config.toml").write_text(header + tomli_w.dumps(tuning.snippet(result, tables)))
    print((out / "tune.md").read_text())
    print(f"report: {out}/tune.md, tune.json; the setting to adopt: {out}/config.toml")
    return EXIT_OK


@contextlib.contextmanager
def _runner(args: argparse.Namespace) -> Iterator[tuple[Any, str]]:
    """The tune's runner and where it runs: this process, a local Dask cluster, or a given one."""
    from services.backtest.tune import on_dask, serial
    from services.base.errors import DependencyUnavailable

    if args.serial:
        yield serial, "this process (serial)"
        return
    from dask.distributed import Client, LocalCluster

    if args.scheduler:
        try:
            client = Client(args.scheduler, timeout=SCHEDULER_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError) as exc:
            message = f"cannot reach the Dask scheduler at {args.scheduler}: {exc}"
            raise DependencyUnavailable(message) from None
        with client:
            yield on_dask(client), f"the Dask cluster at {args.scheduler}"
        return
    workers = args.workers or os.cpu_count() or 1
    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        yield on_dask(client), f"a local Dask cluster of {workers} worker processes"


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
    """Prepare the home, start its stack, drive it to the end, report; the stack is stopped
    however the run ends (Ctrl-C and SIGTERM included)."""
    from services.backtest import replay
    from services.base.simulation import REPLAY_CLOCK
    from services.management.service_manager import LONG_CALL_S, launch_manager, manager

    with _stop_signals_interrupt():
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
            with _progress_bar() as bar:
                figures = asyncio.run(replay.drive(plan, replay_settings, progress=_say, reached=bar))
            return _replay_report(plan, figures)
        except KeyboardInterrupt:
            print(f"interrupted at {plan.clock_file.read_text()}; stopping the stack", file=sys.stderr)
            return EXIT_FAILED
        finally:
            with _ignoring_stop_signals():  # the stack's stop is not cut short by a second signal
                manager(home, "stop", {"services": None}, timeout=LONG_CALL_S)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _stop_signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP stop the run as Ctrl-C does (``KeyboardInterrupt``), so what it
    started is stopped too (by default they would end this process alone)."""

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    before = {signum: signal.signal(signum, interrupt) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def _ignoring_stop_signals() -> Iterator[None]:
    before = {signum: signal.signal(signum, signal.SIG_IGN) for signum in (*STOP_SIGNALS, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def replay_plan(settings: Settings, args: argparse.Namespace) -> ReplayPlan:
    from services.backtest.replay import DEFAULT_SYMBOLS, ReplayPlan

    stamp = time.strftime("%Y%m%dT%H%M%S")
    root = args.home or settings.home.root / "replays" / f"{args.start}_{args.end}-{stamp}"
    overrides = read_toml(args.config) if args.config else {}
    return ReplayPlan(
        start=args.start,
        end=args.end,
        prices=args.prices.absolute(),
        home=TradingHome(root.absolute()),
        symbols=tuple(args.symbols or DEFAULT_SYMBOLS),
        speed=None if args.speed == "max" else float(args.speed),
        models=tuple(args.models),
        overrides=overrides,
        synthetic=args.synthetic,
    )


def _replay_report(plan: ReplayPlan, figures: dict[str, Any]) -> int:
    """The report from what the services answer over RPC, once the stack has settled."""
    from services.backtest.report import History, reconciled
    from services.management.service_manager import call

    home = plan.home
    health = settled_health(home)
    portfolio = call(home, "paper_trading", "get_portfolio_status")
    history = History(
        kind="replay",
        start=plan.start,
        end=plan.end,
        symbols=plan.symbols,
        prices=plan.prices,
        synthetic=plan.synthetic,
        predictions=_pages(home, "prediction", "get_predictions"),
        fills=_pages(home, "paper_trading", "get_fills"),
        equity=call(home, "paper_trading", "get_equity_curve"),
        starting_cents=round(portfolio["starting_capital"] * 100),
        cash_cents=round(portfolio["cash"] * 100),
        open_positions={p["symbol"]: p["quantity"] for p in call(home, "paper_trading", "get_positions")},
        pending_orders=portfolio["pending_orders"],
        reconciled=portfolio["reconciled"],
        run=figures,
        health=health,
        calibration=_stack_calibration(plan),
    )
    report = _write(history, home.root / "report")
    fine = all(_settled(entry) for entry in health)
    return EXIT_OK if fine and reconciled(report["portfolio"]["reconciled"]) else EXIT_FAILED


def _stack_calibration(plan: ReplayPlan) -> dict[str, Any]:
    """How the stack calibrated its signals: the home's active calibration, else the shipped one."""
    from services.backtest.calibrate import Fixed
    from services.base.errors import TradingError
    from services.prediction.calibration_store import CalibrationStore, shipped

    store = CalibrationStore(plan.home.models / "calibration")
    try:
        calibration = store.load() if store.active_version() else shipped()
    except TradingError as exc:
        return {"kind": "none", "reading": f"uncalibrated: {exc.message}"}
    return Fixed(calibration).describe(plan)


def _pages(home: TradingHome, service: str, method: str) -> list[dict[str, Any]]:
    """Every row of a paged read (``after_id``, ``limit``), oldest first."""
    from services.management.service_manager import call

    rows: list[dict[str, Any]] = []
    while True:
        page = call(home, service, method, {"after_id": rows[-1]["id"] if rows else 0, "limit": 1000})
        rows.extend(page)
        if len(page) < 1000:
            return rows


def _write(history: History, directory: Path) -> dict[str, Any]:
    from services.backtest.report import build_report, read_prices, write_report

    prices = read_prices(history.prices, history.symbols)
    report = build_report(history, prices)
    write_report(directory, history, report, prices)
    print((directory / "report.md").read_text())
    print(f"report: {directory}/report.md, report.json, equity.html, trades.csv, signals.csv")
    return report


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
