"""The manager and ``tradingctl`` against real processes: start, stop, crashes, adoption, events.

Every test runs the CLI as a real subprocess (``python -m services.management``) on a short
temporary TRADING_HOME whose ``config.toml`` runs copies of ``tests/sample_service.py`` behind the
manager's embedded redis-server. Waits poll the manager's ``status`` RPC with a deadline. Whatever
happens, teardown stops the stack and SIGKILLs anything of the home still alive.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest
import redis

from services.backtest.commands import settled_health
from services.base.config import TradingHome
from services.base.errors import InvalidParams
from services.base.redis_server import read_password
from services.management.manager_service import running_manager_pid
from services.management.processes import ENV_HOME, OsProcessControl
from services.management.service_manager import call
from tests.conftest import ROOT, SAMPLE_SERVICE, service_env

BACKOFF_S = 0.5
MAX_FAILURES = 3
STOP_TIMEOUT_S = 1.0
CLI_TIMEOUT_S = 60.0
NAMES = ["redis", "alpha", "beta", "gamma"]
SPAWNED = re.compile(r"^(?P<name>\w+) spawned \(pid (?P<pid>\d+)\)$")


@dataclass(frozen=True)
class Svc:
    flags: Sequence[str] = ()
    depends_on: Sequence[str] = ()
    stop_timeout_s: float | None = None


CHAIN = {
    "alpha": Svc(["--spawn-helper"]),
    "beta": Svc(depends_on=["alpha"]),
    "gamma": Svc(depends_on=["beta"]),
}


# -- helpers --------------------------------------------------------------------------------------


def alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_until(predicate: Callable[[], Any], within: float, what: str) -> Any:
    """Poll until ``predicate`` returns something truthy; that value."""
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {within:g}s: {what}"
        time.sleep(0.02)


def processes_of(home: TradingHome) -> list[psutil.Process]:
    """Every live process started for this home: the manager, redis, services, helpers."""
    root, found = str(home.root), []
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        try:
            environ = process.environ()
            if root not in (environ.get(ENV_HOME), environ.get("TRADING_HOME")):
                continue
            if process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except psutil.Error:
            continue
    return found


class Stack:
    """One home's manager and services, driven through the CLI."""

    def __init__(self, home: TradingHome) -> None:
        self.home = home
        self.control = OsProcessControl(Path(home.root))

    def configure(self, services: dict[str, Svc], *manager_lines: str) -> None:
        lines = [
            "[manager]",
            *manager_lines,
            "default_services = false",
            f"backoff_initial_s = {BACKOFF_S}",
            f"max_failures = {MAX_FAILURES}",
            "failure_window_s = 60.0",
            f"stop_timeout_s = {STOP_TIMEOUT_S}",
            "sample_interval_s = 0.5",
            "start_timeout_s = 20.0",
        ]
        for name, svc in services.items():
            lines += [
                "",
                f"[manager.services.{name}]",
                f"command = {json.dumps([sys.executable, str(SAMPLE_SERVICE), *svc.flags])}",
                f"depends_on = {json.dumps(list(svc.depends_on))}",
            ]
            if svc.stop_timeout_s is not None:
                lines.append(f"stop_timeout_s = {svc.stop_timeout_s}")
        self.home.config_file.write_text("\n".join(lines) + "\n")

    def ctl(self, *args: str, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services.management", *args],
            env=service_env(self.home),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
        )

    def start(self, *services: str) -> subprocess.CompletedProcess[str]:
        result = self.ctl("start", *services)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "all services healthy" in result.stdout
        return result

    def status(self) -> dict[str, Any]:
        """The manager's ``status``, asked in this process (cheaper than a CLI per poll)."""
        result: dict[str, Any] = call(self.home, "manager", "status", timeout=10.0)
        return result

    def procs(self) -> dict[str, dict[str, Any]]:
        return {p["name"]: p for p in self.status()["processes"]}

    def pids(self) -> dict[str, int]:
        return {name: p["pid"] for name, p in self.procs().items()}

    def rpc(self, service: str, method: str, params: dict[str, Any] | None = None) -> Any:
        return call(self.home, service, method, params, timeout=10.0)

    def manager_log(self) -> list[dict[str, Any]]:
        path = self.home.logs / "manager.log"
        return [orjson.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def spawned(self, name: str) -> list[int]:
        pids = []
        for record in self.manager_log():
            match = SPAWNED.match(record["msg"])
            if match and match["name"] == name:
                pids.append(int(match["pid"]))
        return pids

    def wait_restarted(self, name: str, old_pid: int, within: float) -> dict[str, Any]:
        def restarted() -> dict[str, Any] | None:
            p = self.procs()[name]
            fine = p["state"] == "running" and p["pid"] not in (None, old_pid) and p["health"] == "ok"
            return p if fine else None

        result: dict[str, Any] = wait_until(restarted, within, f"{name} running again with health ok")
        return result

    def leftovers(self) -> list[str]:
        found = {p.pid: p for p in processes_of(self.home)}
        for process in self.control.find_managed():
            found.setdefault(process.pid, psutil.Process(process.pid))
        described = []
        for pid, process in sorted(found.items()):
            try:
                described.append(f"{pid} {' '.join(process.cmdline())}")
            except psutil.Error:
                described.append(str(pid))
        return described

    def kill_everything(self) -> None:
        victims = processes_of(self.home)
        pid = running_manager_pid(Path(self.home.root))
        if pid:
            victims.append(psutil.Process(pid))
        for found in self.control.find_managed():
            victims.append(psutil.Process(found.pid))
        for process in victims:
            try:
                process.kill()
            except psutil.Error:
                continue
        psutil.wait_procs(victims, timeout=5)

    def teardown(self) -> None:
        try:
            self.ctl("stop")
        finally:
            self.kill_everything()


def assert_nothing_left(stack: Stack, also: Sequence[int] = (), sockets: Sequence[str] = ()) -> None:
    assert stack.control.find_managed() == []
    assert stack.leftovers() == []
    assert running_manager_pid(Path(stack.home.root)) is None
    for pid in also:
        assert not alive(pid), f"pid {pid} outlived the stack"
    assert sorted(p.name for p in stack.home.run.glob("*.sock")) == list(sockets)


def new_home() -> TradingHome:
    home = TradingHome(Path(tempfile.mkdtemp(prefix="at-", dir="/tmp")))
    home.create()
    return home


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def stack(home: TradingHome) -> Iterator[Stack]:
    """A configured home; each test starts what it needs; everything is stopped afterwards."""
    stack = Stack(home)
    try:
        yield stack
    finally:
        stack.teardown()


@pytest.fixture(scope="module")
def shared() -> Iterator[Stack]:
    """One running alpha <- beta <- gamma stack for the tests that only look or call."""
    home = new_home()
    stack = Stack(home)
    try:
        stack.configure(CHAIN)
        stack.start()
        yield stack
    finally:
        stack.teardown()
        shutil.rmtree(home.root, ignore_errors=True)


# -- start, stop, crashes -------------------------------------------------------------------------


def test_start_then_stop_leaves_nothing_behind(stack: Stack) -> None:
    stack.configure(CHAIN)
    stack.start()

    listed = stack.ctl("status", "--json")
    assert listed.returncode == 0, listed.stderr
    status = orjson.loads(listed.stdout)
    assert [p["name"] for p in status["processes"]] == NAMES
    for p in status["processes"]:
        assert p["state"] == "running", p
        assert isinstance(p["pid"], int), p
        assert alive(p["pid"]), p
        assert p["health"] == "ok", p
    manager_pid = status["manager"]["pid"]
    assert manager_pid == running_manager_pid(Path(stack.home.root))
    assert alive(manager_pid)

    for name in ["alpha", "beta", "gamma"]:
        echoed = stack.ctl("call", name, "echo", '{"message": "hi"}')
        assert echoed.returncode == 0, echoed.stderr
        assert orjson.loads(echoed.stdout) == "hi"
    helper = stack.rpc("alpha", "helper_pid")
    assert alive(helper)
    pids = [p["pid"] for p in status["processes"]]

    stopped = stack.ctl("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert "manager stopped" in stopped.stdout
    assert_nothing_left(stack, also=[manager_pid, helper, *pids])


def test_killed_processes_are_restarted_alone(stack: Stack) -> None:
    stack.configure(CHAIN)
    stack.start()
    for victim in NAMES:
        before = stack.procs()
        helper = stack.rpc("alpha", "helper_pid")
        killed_at = time.monotonic()
        os.kill(before[victim]["pid"], signal.SIGKILL)
        after = stack.wait_restarted(victim, before[victim]["pid"], within=BACKOFF_S + 5)
        took = time.monotonic() - killed_at
        assert took <= BACKOFF_S + 2, f"{victim} took {took:.2f}s to be running again"

        if victim != "redis":  # the new process itself answers on the socket
            assert stack.rpc(victim, "health")["pid"] == after["pid"]
        now = stack.procs()
        assert now[victim]["restarts"] == before[victim]["restarts"] + 1
        for other in NAMES:
            if other != victim:
                assert now[other]["pid"] == before[other]["pid"], f"{other} restarted with {victim}"
                assert now[other]["restarts"] == before[other]["restarts"]
        if victim == "alpha":
            wait_until(lambda h=helper: not alive(h), 2, "alpha's old helper killed")
            new_helper = stack.rpc("alpha", "helper_pid")
            assert new_helper != helper
            assert alive(new_helper)
            helpers = [f for f in stack.control.find_managed() if f.name == "alpha" and not f.leader]
            assert [(f.pid, f.session) for f in helpers] == [(new_helper, after["pid"])]
    assert {name: p["restarts"] for name, p in stack.procs().items()} == dict.fromkeys(NAMES, 1)


def test_a_hung_service_is_restarted_and_alerted(stack: Stack) -> None:
    stack.configure(CHAIN, "hung_after_s = 2.0")
    stack.start()
    before = stack.procs()["beta"]
    os.kill(before["pid"], signal.SIGSTOP)  # alive, its socket accepts, nothing answers
    try:
        after = stack.wait_restarted("beta", before["pid"], within=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(before["pid"], signal.SIGCONT)
    assert after["restarts"] == before["restarts"] + 1
    assert not alive(before["pid"])
    alerts = call(stack.home, "manager", "alerts", timeout=10.0)
    assert any("beta backoff: hung: health has not answered" in a["message"] for a in alerts)
    assert any("hung: health has not answered" in r["msg"] for r in stack.manager_log())


def test_a_service_crashing_at_start_up_becomes_fatal(stack: Stack) -> None:
    stack.configure({"alpha": Svc(), "broken": Svc(["--crash-at-start"])})
    started = stack.ctl("start")
    assert started.returncode == 1, started.stdout + started.stderr
    assert "broken" in started.stderr
    assert "crashing at start-up" in started.stderr

    listed = stack.ctl("status", "--json")
    assert listed.returncode == 1  # not every process is running
    states = {p["name"]: p for p in orjson.loads(listed.stdout)["processes"]}
    assert states["broken"]["state"] == "fatal"
    assert states["broken"]["pid"] is None
    assert states["alpha"]["state"] == "running"
    alpha_pid = states["alpha"]["pid"]
    attempts = wait_until(lambda: stack.spawned("broken"), 5, "spawn records in manager.log")
    assert len(attempts) == MAX_FAILURES
    assert len(set(attempts)) == MAX_FAILURES

    again = stack.ctl("start", "broken")
    assert again.returncode == 1, again.stdout + again.stderr
    assert "crashing at start-up" in again.stderr
    attempts = stack.spawned("broken")
    assert len(attempts) == 2 * MAX_FAILURES
    now = stack.procs()
    assert now["broken"]["state"] == "fatal"
    assert now["alpha"]["state"] == "running"
    assert now["alpha"]["pid"] == alpha_pid
    assert now["alpha"]["restarts"] == 0
    assert not any(alive(pid) for pid in attempts)


def test_settled_health_waits_for_what_the_manager_is_restarting(stack: Stack) -> None:
    stack.configure(CHAIN)
    stack.start()
    before = stack.pids()
    for victim in ("redis", "beta"):
        os.kill(before[victim], signal.SIGKILL)
    health = settled_health(stack.home)  # asked at once: both are still down
    assert {entry["name"]: entry["status"] for entry in health} == dict.fromkeys(NAMES, "ok")
    for entry in health:
        if entry["report"] is not None:  # every service is connected to Redis again
            assert entry["report"]["checks"]["redis"]["status"] == "ok"
    after = stack.pids()
    assert after["redis"] != before["redis"]
    assert after["beta"] != before["beta"]


def test_settled_health_does_not_wait_for_a_fatal_service(stack: Stack) -> None:
    stack.configure({"alpha": Svc(), "broken": Svc(["--crash-at-start"])})
    assert stack.ctl("start").returncode == 1
    # A wait longer than this test's timeout: only giving up on a FATAL service lets it pass.
    health = settled_health(stack.home, wait_s=600.0)
    assert {entry["name"]: entry["status"] for entry in health}["broken"] == "down"


def test_a_process_ignoring_sigterm_is_killed(stack: Stack) -> None:
    stack.configure({"stubborn": Svc(["--ignore-sigterm"], stop_timeout_s=STOP_TIMEOUT_S)})
    stack.start()
    pid = stack.procs()["stubborn"]["pid"]

    began = time.monotonic()
    stopped = stack.ctl("stop", "stubborn")
    took = time.monotonic() - began
    assert stopped.returncode == 0, stopped.stderr
    assert took < 2 * STOP_TIMEOUT_S + 4, f"stop took {took:.1f}s"
    assert not alive(pid)
    assert stack.procs()["stubborn"]["state"] == "stopped"
    assert stack.procs()["redis"]["state"] == "running"
    warnings = [r["msg"] for r in stack.manager_log() if r["level"] == "WARNING"]
    assert f"pid {pid} ignored SIGTERM for {STOP_TIMEOUT_S:g}s; killing it" in warnings


# -- a killed manager -----------------------------------------------------------------------------


def test_a_new_manager_adopts_what_a_killed_one_left(stack: Stack) -> None:
    stack.configure(CHAIN)
    stack.start()
    before = stack.pids()
    helper = stack.rpc("alpha", "helper_pid")
    manager_pid = int((stack.home.run / "manager.lock").read_text())
    assert manager_pid == stack.status()["manager"]["pid"]

    os.kill(manager_pid, signal.SIGKILL)
    wait_until(lambda: not alive(manager_pid), 5, "the manager gone")
    assert all(alive(pid) for pid in before.values())
    assert stack.rpc("gamma", "echo", {"message": "still here"}) == "still here"

    restarted = stack.start()
    for name in NAMES:
        assert f"adopted {name} (pid {before[name]})" in restarted.stdout, restarted.stdout
    assert stack.status()["manager"]["pid"] not in (manager_pid, None)
    assert stack.pids() == before
    found = stack.control.find_managed()
    leaders = sorted((f.name, f.pid) for f in found if f.leader)
    assert leaders == sorted(before.items())
    assert [(f.pid, f.session) for f in found if not f.leader] == [(helper, before["alpha"])]

    # The adopted processes are watched like the manager's own children.
    os.kill(before["beta"], signal.SIGKILL)
    beta = stack.wait_restarted("beta", before["beta"], within=BACKOFF_S + 5)
    assert beta["restarts"] == 1
    assert {n: p for n, p in stack.pids().items() if n != "beta"} == {
        n: p for n, p in before.items() if n != "beta"
    }

    stopped = stack.ctl("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert_nothing_left(stack, also=[*before.values(), beta["pid"], helper])


def test_stop_without_a_manager_stops_what_it_left(stack: Stack) -> None:
    stack.configure(CHAIN)
    stack.start()
    pids = list(stack.pids().values())
    helper = stack.rpc("alpha", "helper_pid")
    manager_pid = stack.status()["manager"]["pid"]
    os.kill(manager_pid, signal.SIGKILL)
    wait_until(lambda: not alive(manager_pid), 5, "the manager gone")
    listed = stack.ctl("status")  # its socket file is still there, but nothing answers on it
    assert listed.returncode == 3, listed.stdout + listed.stderr
    assert "tradingctl start" in listed.stderr

    stopped = stack.ctl("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert f"stopped {len(pids) + 1} leftover processes" in stopped.stdout
    # The killed manager could not remove its socket; stop removes it.
    assert_nothing_left(stack, also=[*pids, helper])


# -- events ---------------------------------------------------------------------------------------


def test_state_changes_are_published(stack: Stack) -> None:
    stack.configure(CHAIN)
    stack.start()
    old_pid = stack.procs()["beta"]["pid"]
    client = redis.Redis(
        unix_socket_path=str(stack.home.run / "redis.sock"), password=read_password(stack.home)
    )
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe("trading.service_state")
        wait_until(lambda: client.pubsub_numsub("trading.service_state")[0][1] >= 1, 5, "subscribed")
        os.kill(old_pid, signal.SIGKILL)

        events: list[dict[str, Any]] = []

        def from_manager() -> list[dict[str, Any]]:
            # Services publish their own lifecycle on this channel too, with themselves as source.
            return [e for e in events if e["source"] == "manager" and e["data"]["service"] == "beta"]

        def beta_running_again() -> bool:
            message = pubsub.get_message(timeout=0.1)
            if message is not None:
                events.append(orjson.loads(message["data"]))
            return any(e["data"]["state"] == "running" for e in from_manager())

        wait_until(beta_running_again, BACKOFF_S + 5, "the manager's event: beta running")
    finally:
        pubsub.close()
        client.close()

    beta = from_manager()
    assert [e["data"]["state"] for e in beta] == ["backoff", "starting", "running"]
    assert [e["data"]["previous"] for e in beta] == ["running", "backoff", "starting"]
    assert {e["type"] for e in beta} == {"service_state"}
    assert "killed by SIGKILL" in beta[0]["data"]["reason"]
    assert [e["data"]["restarts"] for e in beta] == [0, 1, 1]
    assert beta[-1]["data"]["pid"] == stack.procs()["beta"]["pid"] != old_pid
    assert set(beta[0]["data"]) == {"service", "state", "previous", "reason", "pid", "restarts"}


# -- the CLI against a running stack --------------------------------------------------------------


def test_status_without_a_manager(home: TradingHome) -> None:
    stack = Stack(home)
    listed = stack.ctl("status")
    assert listed.returncode == 3
    assert listed.stdout == ""
    assert len(listed.stderr.strip().splitlines()) == 1
    assert "tradingctl start" in listed.stderr
    stopped = stack.ctl("stop")
    assert stopped.returncode == 0
    assert "not running" in stopped.stdout


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ("[paper_trading]\nbogus_key = 1\n", "bogus_key"),
        ("[rpc]\nmax_message_bytes = 0\n", "max_message_bytes"),
        ("[prediction]\nbuy_threshold = { bull = 2.0, sideways = 0.15, bear = 0.25 }\n", "thresholds"),
    ],
)
def test_start_checks_every_section_first_and_starts_nothing_on_a_mistake(
    home: TradingHome, config: str, named: str
) -> None:
    stack = Stack(home)
    home.config_file.write_text(config)
    started = stack.ctl("start")
    assert started.returncode == 2, started.stdout + started.stderr
    assert "configuration error" in started.stderr
    assert named in started.stderr
    assert processes_of(home) == []  # no manager, no service
    assert not (home.run / "manager.sock").exists()


def test_usage_errors_and_a_second_manager(shared: Stack) -> None:
    manager_pid = shared.status()["manager"]["pid"]
    second = shared.ctl("start", "--foreground", timeout=30)
    assert second.returncode == 1, second.stdout + second.stderr
    assert "already running" in second.stderr
    assert str(manager_pid) in second.stderr
    assert shared.status()["manager"]["pid"] == manager_pid
    pids = shared.pids()
    again = shared.ctl("start")
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"the manager is already running (pid {manager_pid})" in again.stdout
    assert shared.pids() == pids

    not_json = shared.ctl("call", "alpha", "echo", "not json")
    assert not_json.returncode == 2
    assert "not valid JSON" in not_json.stderr
    nosuch = shared.ctl("call", "nosuch", "health")
    assert nosuch.returncode == 3
    assert "nosuch is not running" in nosuch.stderr
    for command in (("stop", "nosuch"), ("restart", "nosuch"), ("health", "nosuch")):
        named = shared.ctl(*command)
        assert named.returncode == 2, command  # a usage error, like start's
        assert "nosuch" in named.stderr
    for name in ("nosuch", "x\x00", "../../etc/passwd"):
        with pytest.raises(InvalidParams, match="unknown service"):
            call(shared.home, "manager", "logs", {"service": name}, timeout=10.0)


def test_backup_copies_the_databases(shared: Stack) -> None:
    result = shared.ctl("backup")
    assert result.returncode == 0, result.stderr
    directory = shared.home.backups / datetime.date.today().isoformat()
    for name in ["alpha", "beta", "gamma"]:
        copy = directory / f"{name}.db"
        assert copy.is_file(), result.stdout
        with sqlite3.connect(f"file:{copy}?mode=ro", uri=True) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        conn.close()


def test_service_manager_runs_as_a_script(shared: Stack) -> None:
    env = service_env(shared.home)
    del env["PYTHONPATH"]
    script = ROOT / "services" / "management" / "service_manager.py"
    results = {}
    for how, command in {
        "script": [sys.executable, str(script), "status", "--json"],
        "module": [sys.executable, "-m", "services.management", "status", "--json"],
    }.items():
        cwd = "/" if how == "script" else ROOT
        result = subprocess.run(
            command, env=env, cwd=cwd, capture_output=True, text=True, timeout=CLI_TIMEOUT_S
        )
        assert result.returncode == 0, f"{how}: {result.stderr}"
        processes = orjson.loads(result.stdout)["processes"]
        results[how] = [(p["name"], p["state"], p["pid"]) for p in processes]
    assert results["script"] == results["module"]
    assert [name for name, _, _ in results["script"]] == NAMES

    text = subprocess.run(
        [sys.executable, str(script), "status"],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )
    assert text.returncode == 0, text.stderr
    for name, state, pid in results["script"]:
        assert re.search(rf"^{name}\s+{state}\s+{pid}\s", text.stdout, re.MULTILINE), text.stdout


def test_health_and_logs(shared: Stack) -> None:
    health = shared.ctl("health", "--json")
    assert health.returncode == 0, health.stderr
    entries = orjson.loads(health.stdout)
    assert [(e["name"], e["status"]) for e in entries] == [(name, "ok") for name in NAMES]
    assert entries[1]["report"]["service"] == "alpha"

    logs = shared.ctl("logs", "alpha", "-n", "5")
    assert logs.returncode == 0, logs.stderr
    assert len(logs.stdout.splitlines()) == 5


def test_restart_replaces_only_that_service(shared: Stack) -> None:
    before = shared.pids()
    restarted = shared.ctl("restart", "beta")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    after = shared.procs()
    assert after["beta"]["state"] == "running"
    assert after["beta"]["pid"] not in (None, before["beta"])
    assert not alive(before["beta"])
    assert {n: p["pid"] for n, p in after.items() if n != "beta"} == {
        n: pid for n, pid in before.items() if n != "beta"
    }


def test_the_script_run_by_a_python_without_the_libraries_goes_on_with_the_projects(tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=60)
    script = ROOT / "services" / "management" / "service_manager.py"
    ran = subprocess.run(
        [str(bare / "bin" / "python"), str(script), "--help"], capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr  # no ModuleNotFoundError: psutil
    assert "Run and control the ASX trading services" in ran.stdout
