"""``tradingctl``: run, watch and control the stack (also ``python services/management/service_manager.py``).

Exit statuses: 0 done; 1 something failed (a service did not start, is unhealthy, an RPC error);
2 usage or configuration error; 3 the manager (or the service called) is not running.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a script from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from services.management.interpreter import use_project_python

    use_project_python(__file__)


import argparse
import asyncio
import getpass
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson
import psutil

from services.backtest.commands import add_history_commands
from services.base.config import Settings, TradingHome, check_whole_config, load_settings
from services.base.errors import ConfigError, TradingError
from services.base.rpc import RpcClient
from services.management import logview, systemd
from services.management.catalog import ManagerConfig
from services.management.manager_service import (
    AlreadyRunning,
    run_manager,
    running_manager_pid,
    stack_catalog,
    unknown_services_message,
)
from services.management.processes import PROJECT_ROOT, SMALL_DAEMON_ENV, OsProcessControl
from services.management.states import ProcessState
from services.management.wire import StackStatus, StartResult
from services.ml_model.arguments import add_arguments as add_training_arguments

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3

# Long enough for every start timeout and backoff; start answers as soon as all settle.
LONG_CALL_S = 3600.0
MANAGER_BOOT_S = 60.0


class NotRunning(Exception):
    """The manager or a service socket is not there to ask."""


def not_running_message(home: TradingHome) -> str:
    return f"the manager is not running (TRADING_HOME={home.root}); start it with: tradingctl start"


# -- talking to the manager --------------------------------------------------------------------


def call(home: TradingHome, service: str, method: str, params: dict[str, Any] | None = None,
         *, timeout: float = 30.0) -> Any:  # fmt: skip
    """One JSON-RPC call to a service socket; ``NotRunning`` when nothing listens there."""
    socket = home.socket_path(service)
    if not socket.exists():
        raise NotRunning(service)

    async def ask() -> Any:
        async with RpcClient(socket, timeout=timeout, connect_attempts=1) as client:
            return await client.call(method, params, timeout=timeout)

    try:
        return asyncio.run(ask())
    except (ConnectionError, FileNotFoundError) as exc:
        raise NotRunning(service) from exc
    except TradingError as exc:
        if service == "manager" and running_manager_pid(home.root) is None:
            raise NotRunning(service) from exc
        raise


def manager(home: TradingHome, method: str, params: dict[str, Any] | None = None, *,
            timeout: float = 30.0) -> Any:  # fmt: skip
    return call(home, "manager", method, params, timeout=timeout)


# -- commands -------------------------------------------------------------------------------------


def cmd_start(settings: Settings, args: argparse.Namespace) -> int:
    home = settings.home
    # Every service's section, before anything starts: a mistake in one is found now, not when
    # that process starts while the rest of the stack runs.
    check_whole_config(home)
    services = list(args.services) or None
    unknown = unknown_services(settings, services or [])
    if unknown:
        print(unknown, file=sys.stderr)
        return EXIT_USAGE
    if args.foreground or args.daemon:
        try:
            return run_manager(
                settings,
                initial=services,
                notify=bool(os.environ.get("NOTIFY_SOCKET")),
                to_stderr=not args.daemon,
            )
        except AlreadyRunning as exc:
            print(f"{exc}; see: tradingctl status", file=sys.stderr)
            return EXIT_FAILED
    pid = running_manager_pid(home.root)
    if pid:
        print(f"the manager is already running (pid {pid})")
    else:
        started = launch_manager(home, services)
        if started != EXIT_OK:
            return started
    params = {"services": services, "boot": not pid}
    result: StartResult = manager(home, "start", params, timeout=LONG_CALL_S)
    status: StackStatus = manager(home, "status")
    for adoption in status["manager"]["adoptions"] if not pid else []:
        print(f"{adoption['action']} {adoption['name']} (pid {adoption['pid']}): {adoption['reason']}")
    print_status(status)
    if not result["ok"]:
        for name, why in result["failed"].items():
            print(f"FAILED {name}: {why}", file=sys.stderr)
        return EXIT_FAILED
    print(start_summary(manager(home, "stack_health", {"service": None})))
    return EXIT_OK


def start_summary(entries: Sequence[Mapping[str, Any]]) -> str:
    """The last words of ``start``: all healthy, or which services run degraded and why."""
    degraded = [entry for entry in entries if entry["status"] != "ok"]
    if not degraded:
        return "all services healthy. Watch them with: tradingctl dashboard"
    lines = ["all services up, some degraded (tradingctl health says more):"]
    for entry in degraded:
        checks = (entry.get("report") or {}).get("checks") or {}
        why = "; ".join(f"{name}: {c.get('detail')}" for name, c in checks.items() if c.get("status") != "ok")
        lines.append(f"  {entry['name']} {entry['status']}: {(why or entry.get('error') or '')[:200]}")
    return "\n".join(lines)


def unknown_services(settings: Settings, names: Sequence[str]) -> str | None:
    catalog = stack_catalog(settings, settings.section("manager", ManagerConfig))
    return unknown_services_message(catalog, names)


def launch_manager(
    home: TradingHome, services: list[str] | None, extra_env: dict[str, str] | None = None
) -> int:
    """Start the manager detached from this terminal and wait until its socket answers."""
    home.create()
    output = home.logs / "manager.out"
    env = dict(SMALL_DAEMON_ENV) | dict(os.environ, TRADING_HOME=str(home.root)) | (extra_env or {})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "services.management", "start", "--daemon", *(services or [])]
    with output.open("ab") as out:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=home.root,
            start_new_session=True,
        )
    print(f"starting the manager (pid {process.pid}); its log: {home.logs / 'manager.log'}")
    deadline = time.monotonic() + MANAGER_BOOT_S
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            if running_manager_pid(home.root):  # another start won the race; use that one
                return EXIT_OK
            print(f"the manager exited with status {code}:", file=sys.stderr)
            print(_tail(output), file=sys.stderr)
            return EXIT_FAILED
        try:
            manager(home, "health", timeout=2.0)
            return EXIT_OK
        except (NotRunning, TradingError):
            time.sleep(0.05)
    print(f"the manager did not answer within {MANAGER_BOOT_S:g}s; see {output}", file=sys.stderr)
    return EXIT_FAILED


def cmd_stop(settings: Settings, args: argparse.Namespace) -> int:
    home = settings.home
    unknown = unknown_services(settings, list(args.services))
    if unknown:
        print(unknown, file=sys.stderr)
        return EXIT_USAGE
    pid = running_manager_pid(home.root)
    if not pid:
        left = stop_leftovers(home)
        home.socket_path("manager").unlink(missing_ok=True)  # left by a manager that was killed
        print(f"the manager is not running{f'; stopped {left} leftover processes' if left else ''}")
        return EXIT_OK
    services = list(args.services) or None
    result = manager(home, "stop", {"services": services}, timeout=LONG_CALL_S)
    for name, state in result["states"].items():
        print(f"{name:<16} {state}")
    if result["manager_stopping"]:
        # The lock is released a moment before the process ends: wait for both.
        deadline = time.monotonic() + 30
        while (running_manager_pid(home.root) or not _exited(pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        if running_manager_pid(home.root) or not _exited(pid):
            print(f"the manager (pid {pid}) is still running after 30s", file=sys.stderr)
            return EXIT_FAILED
        print("manager stopped")
    return EXIT_OK


def _exited(pid: int) -> bool:
    """True once ``pid`` has ended (a zombie waiting for its parent has ended too)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def stop_leftovers(home: TradingHome, timeout: float = 10.0) -> int:
    """Stop processes of this home that outlived their manager: SIGTERM, then SIGKILL."""
    control = OsProcessControl(home.root)
    found = control.find_managed()
    handles = [h for h in (control.adopt(f.pid) for f in found) if h is not None]
    for handle in handles:
        control.signal(handle, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(h.alive() for h in handles) and time.monotonic() < deadline:
        time.sleep(0.05)
    for handle in handles:
        if handle.alive():
            control.kill_tree(handle)
    return len(handles)


def cmd_restart(settings: Settings, args: argparse.Namespace) -> int:
    unknown = unknown_services(settings, [args.service])
    if unknown:
        print(unknown, file=sys.stderr)
        return EXIT_USAGE
    result: StartResult = manager(settings.home, "restart", {"service": args.service}, timeout=LONG_CALL_S)
    for name, state in result["states"].items():
        print(f"{name:<16} {state}")
    for name, why in result["failed"].items():
        print(f"FAILED {name}: {why}", file=sys.stderr)
    return EXIT_OK if result["ok"] else EXIT_FAILED


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    status: StackStatus = manager(settings.home, "status")
    if args.json:
        print_json(status)
    else:
        print_status(status)
    healthy = all(p["state"] in (ProcessState.RUNNING, ProcessState.EXTERNAL) for p in status["processes"])
    return EXIT_OK if healthy else EXIT_FAILED


def cmd_health(settings: Settings, args: argparse.Namespace) -> int:
    unknown = unknown_services(settings, [args.service] if args.service else [])
    if unknown:
        print(unknown, file=sys.stderr)
        return EXIT_USAGE
    entries = manager(settings.home, "stack_health", {"service": args.service})
    if args.json:
        print_json(entries)
    else:
        for entry in entries:
            report = entry["report"] or {}
            checks = report.get("checks") or {}
            not_ok = [f"{n}: {c.get('detail')}" for n, c in checks.items() if c.get("status") != "ok"]
            detail = entry["error"] or "; ".join(not_ok)
            print(f"{entry['name']:<16} {entry['status']:<9} {detail}".rstrip())
    fine = all(entry["status"] in ("ok", "degraded") for entry in entries)
    return EXIT_OK if fine else EXIT_FAILED


def cmd_dashboard(settings: Settings, args: argparse.Namespace) -> int:
    from services.management.dashboard import run_dashboard  # rich loads only when needed

    return run_dashboard(settings.home, refresh_s=args.refresh, once=args.once)


def cmd_logs(settings: Settings, args: argparse.Namespace) -> int:
    home = settings.home
    known = logview.services_with_logs(home)
    if args.service and args.service not in known:
        print(f"no logs for {args.service!r}; logs exist for: {', '.join(known) or 'nothing yet'}",
              file=sys.stderr)  # fmt: skip
        return EXIT_FAILED
    color = sys.stdout.isatty()
    try:
        for record in logview.tail(home, args.service, lines=args.lines, level=args.level):
            print(logview.format_record(record, color=color))
        if args.follow:
            for record in logview.follow(home, args.service, level=args.level):
                print(logview.format_record(record, color=color), flush=True)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # piped into head
        sys.stderr.close()
    return EXIT_OK


def cmd_call(settings: Settings, args: argparse.Namespace) -> int:
    try:
        params = orjson.loads(args.params) if args.params else None
    except orjson.JSONDecodeError as exc:
        print(f"params are not valid JSON: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if params is not None and not isinstance(params, dict):
        print("params must be a JSON object of named parameters", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = call(settings.home, args.service, args.method, params, timeout=args.timeout)
    except NotRunning:
        print(f"{args.service} is not running (no answer on {settings.home.socket_path(args.service)})",
              file=sys.stderr)  # fmt: skip
        return EXIT_NOT_RUNNING
    print_json(result)
    return EXIT_OK


def cmd_signals(settings: Settings, args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if args.symbol:
        params["symbol"] = args.symbol
    try:
        rows = call(settings.home, "prediction", "get_prediction_history", params)
    except NotRunning:
        print(f"prediction is not running (no answer on {settings.home.socket_path('prediction')})",
              file=sys.stderr)  # fmt: skip
        return EXIT_NOT_RUNNING
    if args.json:
        print_json(rows)
        return EXIT_OK
    if not rows:
        print("no predictions yet")
        return EXIT_OK
    print(f"{'time (UTC)':<20} {'symbol':<8} {'signal':<6} {'P(right)':>8} {'95%':>9} {'cases':>6}  "
          f"{'price':>9} {'price of':<10}  calibration")  # fmt: skip
    for row in rows:
        print(signal_line(row))
    return EXIT_OK


def signal_line(row: Mapping[str, Any]) -> str:
    """One stored prediction as a line of ``tradingctl signals``."""
    probability, interval = row.get("probability"), row.get("probability_interval")
    chance = f"{probability:.1%}" if isinstance(probability, float) else "-"
    band = (
        f"{interval[0]:.0%}-{interval[1]:.0%}" if isinstance(interval, list) and len(interval) == 2 else "-"
    )
    degraded = " (degraded)" if row.get("degraded") else ""
    when, of = str(row.get("ts", ""))[:19], str(row.get("price_time", ""))[:10]
    return (
        f"{when:<20} {row.get('symbol', ''):<8} {row.get('signal', ''):<6} {chance:>8} {band:>9} "
        f"{row.get('cases', 0):>6}  {row.get('price', 0):>9.2f} {of:<10}  "
        f"{row.get('calibration', 'uncalibrated')}{degraded}"
    )


def cmd_backup(settings: Settings, args: argparse.Namespace) -> int:
    from services.management.backup import restore_hint

    result = manager(settings.home, "backup", timeout=LONG_CALL_S)
    print(f"backed up {len(result['files'])} databases ({result['bytes']:,} bytes) to {result['directory']}")
    for name in result["files"]:
        print(f"  {name}")
    if result["removed"]:
        print(f"removed old backups: {', '.join(result['removed'])}")
    for name, reason in result.get("failed", {}).items():
        print(f"NOT backed up: {name}: {reason}", file=sys.stderr)
    print(restore_hint(settings.home))
    return EXIT_FAILED if result.get("failed") else EXIT_OK


def cmd_train(settings: Settings, args: argparse.Namespace) -> int:
    from services.ml_model.train import train

    return train(settings, args)


def cmd_models(settings: Settings, args: argparse.Namespace) -> int:
    from services.ml_model.train import import_cli

    return import_cli(settings, args)


def cmd_install_systemd(settings: Settings, args: argparse.Namespace) -> int:
    tradingctl = shutil.which("tradingctl") or str(Path(sys.executable).with_name("tradingctl"))
    text = systemd.unit_text(
        tradingctl=Path(tradingctl).resolve(),
        home=settings.home.root,
        user_mode=args.user,
        user=None if args.user else getpass.getuser(),
        environment=SMALL_DAEMON_ENV
        | ({"REDIS_URL": os.environ["REDIS_URL"]} if os.environ.get("REDIS_URL") else {}),
    )
    if args.print:
        print(text, end="")
        return EXIT_OK
    try:
        path = systemd.install_unit(text, systemd.unit_dir(args.user))
    except PermissionError as exc:
        print(f"cannot write the unit ({exc.strerror}): run as root, or use --user", file=sys.stderr)
        return EXIT_FAILED
    print(f"wrote {path}")
    print(systemd.enable_hint(args.user))
    return EXIT_OK


# -- output ---------------------------------------------------------------------------------------


def print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def print_status(status: StackStatus) -> None:
    from services.management.dashboard import human_duration, megabytes

    info = status["manager"]
    redis = "embedded" if info["redis_embedded"] else "external"
    print(f"manager pid {info['pid']}, up {human_duration(info['uptime_s'])}, home {info['home']}, "
          f"redis {redis} ({info['redis_url']})")  # fmt: skip
    header = (
        f"{'SERVICE':<16} {'STATE':<9} {'PID':>7} {'UPTIME':>9} {'RESTARTS':>8} {'MEMORY':>9} {'CPU%':>6}"
    )
    print(f"{header}  {'HEALTH':<8} LAST ERROR")
    for p in status["processes"]:
        memory = p["memory_pss"] if p["memory_pss"] is not None else p["memory_rss"]
        cpu = f"{p['cpu_percent']:.1f}" if p["cpu_percent"] is not None else "—"
        retry = f" (retry in {p['retry_in_s']:g}s)" if p["retry_in_s"] is not None else ""
        print(
            f"{p['name']:<16} {p['state']:<9} {p['pid'] or '—':>7} {human_duration(p['uptime_s']):>9} "
            f"{p['restarts']:>8} {megabytes(memory):>9} {cpu:>6}  {p['health'] or '—':<8} "
            f"{(p['last_error'] or '')[:80]}{retry}"
        )
    print(f"stack memory: {megabytes(status['total_memory_pss'])} (PSS, manager included)")
    if info["not_installed"]:
        print(f"not installed here: {', '.join(info['not_installed'])}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- argument parsing -----------------------------------------------------------------------------


def service_name(text: str) -> str:
    """A service as the user names it: ``market-data`` (as the design document spells them) is
    ``market_data``."""
    return text.replace("-", "_")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tradingctl", description="Run and control the ASX trading services."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[[Settings, argparse.Namespace], int], text: str,
                ) -> argparse.ArgumentParser:  # fmt: skip
        sub = commands.add_parser(name, help=text, description=text)
        sub.set_defaults(handler=handler)
        return sub

    start = command("start", cmd_start, "start the manager and services (all by default); wait until healthy")
    start.add_argument("services", nargs="*", metavar="SERVICE", type=service_name)
    start.add_argument("--foreground", action="store_true", help="run the manager in this process (systemd)")
    start.add_argument("--daemon", action="store_true", help=argparse.SUPPRESS)
    stop = command("stop", cmd_stop, "stop services (all, and the manager, by default)")
    stop.add_argument("services", nargs="*", metavar="SERVICE", type=service_name)
    restart = command("restart", cmd_restart, "restart one service (its dependents keep running)")
    restart.add_argument("service", type=service_name)
    status = command("status", cmd_status, "state, pid, uptime, restarts, memory, CPU and last error")
    status.add_argument("--json", action="store_true")
    health = command("health", cmd_health, "ask every service (or one) for its health now")
    health.add_argument("service", nargs="?", type=service_name)
    health.add_argument("--json", action="store_true")
    dashboard = command("dashboard", cmd_dashboard, "live terminal dashboard")
    dashboard.add_argument("--refresh", type=float, default=1.5, help="seconds between refreshes")
    dashboard.add_argument("--once", action="store_true", help="print one frame and exit")
    logs = command("logs", cmd_logs, "show logs of one service, or all merged by time")
    logs.add_argument("service", nargs="?", type=service_name)
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("-n", "--lines", type=int, default=50)
    logs.add_argument("--level", type=str.upper, choices=list(logview.LEVELS))
    call_ = command("call", cmd_call, "call any RPC method of a service; prints the result as JSON")
    call_.add_argument("service", type=service_name)
    call_.add_argument("method")
    call_.add_argument("params", nargs="?", help="a JSON object of named parameters")
    call_.add_argument("--timeout", type=float, default=30.0)
    signals = command(
        "signals", cmd_signals, "the latest signals with their calibrated probability, cases and calibration"
    )
    signals.add_argument("--symbol")
    signals.add_argument("--limit", type=int, default=20)
    signals.add_argument("--json", action="store_true")
    train = command("train", cmd_train, "train, evaluate walk-forward and register the ML models")
    add_training_arguments(train)
    models = command(
        "models",
        cmd_models,
        "import FILE: a scikit-learn model of your own (a pickle, with --trust-pickle) as a checked version",
    )
    models.add_argument("action", choices=["import"])
    models.add_argument("file", type=Path)
    models.add_argument("--symbol", required=True, help="the ticker it serves, or 'pooled'")
    models.add_argument("--name", required=True, help="its model name, e.g. my_forest")
    models.add_argument("--trust-pickle", action="store_true", help="load the pickle: only a file you trust")
    models.add_argument(
        "--prices", type=Path, help="CSV files for the walk-forward figures (default: market data)"
    )
    models.add_argument("--no-activate", action="store_true")
    add_history_commands(command)
    command("backup", cmd_backup, "copy every service database into backups/YYYY-MM-DD (14 days kept)")
    install = command("install-systemd", cmd_install_systemd, "write a systemd unit for this machine")
    install.add_argument("--user", action="store_true", help="a user unit (no root needed)")
    install.add_argument("--print", action="store_true", help="print the unit instead of writing it")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.umask(0o077)  # the manager, its logs and what tradingctl writes are their owner's alone
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        code: int = args.handler(settings, args)
    except NotRunning:
        print(not_running_message(settings.home), file=sys.stderr)
        return EXIT_NOT_RUNNING
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TradingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return code


if __name__ == "__main__":
    sys.exit(main())
