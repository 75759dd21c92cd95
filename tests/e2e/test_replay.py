"""Acceptance: the whole stack, real processes under the real manager, replayed through history.

Each test runs ``tradingctl replay`` in a fresh TRADING_HOME over a few months of the shared ASX
prices (or, where they are absent, a generated market) and checks the results in the services'
own databases. The disturbed runs kill services (or Redis) with SIGKILL while the replay runs, and
their final ledger must equal the undisturbed run's.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.asx.calendar import SYDNEY
from services.base.config import TradingHome
from tests.e2e.conftest import ROOT, Market, Run, environment, replay, tradingctl

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def processes(home: TradingHome) -> dict[str, dict[str, Any]]:
    """The manager's view of its processes (name -> status entry); empty while it is not up."""
    try:
        answer = subprocess.run(
            [sys.executable, "-m", "services.management", "status", "--json"],
            env=environment(home.root),
            capture_output=True,
            timeout=30,
            check=False,
        )
        return {p["name"]: p for p in orjson.loads(answer.stdout)["processes"]}
    except (orjson.JSONDecodeError, KeyError, subprocess.TimeoutExpired):
        return {}


def kill_now_and_then(
    home: TradingHome,
    process: subprocess.Popen[bytes],
    end: date,
    names: tuple[str, ...],
    every_s: tuple[float, float],
    killed: list[str],
) -> None:
    """SIGKILL a random one of ``names`` every few seconds while the replay drives through all but
    its last week (the report's health is taken after the end, once the manager has restarted what
    died; a kill during that would be a failure the run could not have avoided)."""
    chance = random.Random(20181001)
    clock = home.run / "replay-clock"
    while process.poll() is None and not clock.exists():
        time.sleep(0.2)
    last_kill = datetime.combine(end - timedelta(days=7), datetime.min.time(), SYDNEY)
    while process.poll() is None:
        time.sleep(chance.uniform(*every_s))
        running = {n: p for n, p in processes(home).items() if n in names and p.get("pid")}
        if process.poll() is not None or not running:
            continue
        if datetime.fromisoformat(clock.read_text()) >= last_kill:
            return
        name = chance.choice(sorted(running))
        try:
            os.kill(running[name]["pid"], signal.SIGKILL)
            killed.append(name)
        except ProcessLookupError:
            pass


def check_whole(run: Run) -> None:
    """A finished replay: predictions stored, each signal applied once by paper trading, the
    ledger reconciled to the cent, every service healthy at the end."""
    assert run.returncode == 0, run.output[-3000:]
    predictions = run.rows("prediction", "SELECT event_id FROM predictions")
    assert len(predictions) > 100
    applied = run.rows(
        "paper_trading", "SELECT event_id FROM applied_events WHERE stream = 'trading:signals'"
    )
    assert sorted(applied) == sorted(predictions)  # every signal reached paper trading, once
    sides = run.report["portfolio"]["reconciled"]
    assert sides["starting_plus_realised_minus_commissions"] == sides["cash_plus_cost"]
    assert {h["name"]: h["status"] for h in run.report["health"]} == {
        "redis": "ok",
        "market_data": "ok",
        "sentiment": "degraded",
        "ml_model": "ok",
        "prediction": "ok",
        "paper_trading": "ok",
        "scheduler": "ok",
    }  # fmt: skip  (sentiment: no news source in a replay)
    why = {h["name"]: h["error"] for h in run.report["health"]}
    assert "news_sources: marketaux: unavailable (disabled in config" in why["sentiment"]  # says why
    assert why["prediction"] is None
    for name in ("report.md", "equity.html", "trades.csv", "signals.csv"):
        assert (run.home.root / "report" / name).stat().st_size > 0


def test_a_replay_runs_the_whole_stack_and_the_ledger_reconciles(undisturbed: Run) -> None:
    check_whole(undisturbed)
    ledger = undisturbed.ledger()
    assert ledger["fills"], "the replay made no trade: nothing to compare"
    assert len(ledger["equity"]) >= 60  # an end-of-day snapshot every session
    signals = undisturbed.report["predictions"]["signals"]
    assert signals["BUY"] > 0
    assert undisturbed.report["trades"] == len(ledger["fills"])
    trades = (undisturbed.home.root / "report" / "trades.csv").read_text().splitlines()
    assert len(trades) == len(ledger["fills"]) + 1


def test_services_killed_at_random_change_nothing(market: Market, undisturbed: Run) -> None:
    killed: list[str] = []
    names = ("market_data", "sentiment", "ml_model", "prediction", "paper_trading", "scheduler")
    run = replay(
        market, lambda home, process: kill_now_and_then(home, process, market.end, names, (2.0, 4.0), killed)
    )
    check_whole(run)
    assert len(killed) >= 3, killed
    assert run.report["run"]["outages"] > 0  # the driver waited for restarts
    assert run.ledger() == undisturbed.ledger()
    shutil.rmtree(run.home.root.parent, ignore_errors=True)  # kept, with its logs, when a check fails


def test_redis_killed_and_restarted_changes_nothing(market: Market, undisturbed: Run) -> None:
    killed: list[str] = []
    redis = ("redis",)
    run = replay(
        market, lambda home, process: kill_now_and_then(home, process, market.end, redis, (4.0, 6.0), killed)
    )
    check_whole(run)
    assert len(killed) >= 1, killed
    assert run.ledger() == undisturbed.ledger()
    shutil.rmtree(run.home.root.parent, ignore_errors=True)  # kept, with its logs, when a check fails


def test_sigterm_stops_the_replay_and_its_whole_stack(market: Market) -> None:
    """As ``timeout`` would: SIGTERM while the replay drives; the manager, every service and Redis
    end with it, and it says where it stopped."""
    root = Path(tempfile.mkdtemp(prefix="at-e2e-", dir="/tmp"))
    home = TradingHome(root / "h")
    command = tradingctl("replay", market, "--home", str(home.root))
    env = environment(root / "unused")
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    clock = home.run / "replay-clock"
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        running = processes(home)
        if clock.exists() and len(running) >= 6 and all(p.get("pid") for p in running.values()):
            break
        time.sleep(0.5)
    pids = [p["pid"] for p in processes(home).values() if p.get("pid")]
    assert pids, "the stack did not start"
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0].decode(errors="replace")
    assert process.returncode == 1, output[-3000:]
    assert "interrupted at" in output
    alive = [pid for pid in pids if _alive(pid)]
    assert alive == [], f"left running: {alive}\n{output[-3000:]}"
    assert not home.socket_path("manager").exists()
    shutil.rmtree(root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A child of ours that exited but was not reaped would look alive: ask what it is.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ", 1)[1][0] != "Z"
