"""`tradingctl start --foreground` as systemd runs it: READY=1, watchdog pings, SIGTERM stops all."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.base.config import TradingHome
from services.management.processes import OsProcessControl
from tests.conftest import ROOT, service_env

SAMPLE = ROOT / "tests" / "sample_service.py"


@pytest.fixture
def notify_socket(home: TradingHome) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(home.run / "notify.sock"))
    sock.settimeout(30)
    yield sock
    sock.close()


def write_config(home: TradingHome) -> None:
    command = f'["{sys.executable}", "{SAMPLE}"]'
    home.config_file.write_text(
        "[manager]\ndefault_services = false\nstop_timeout_s = 2.0\n"
        f"[manager.services.alpha]\ncommand = {command}\n"
        f'[manager.services.beta]\ncommand = {command}\ndepends_on = ["alpha"]\n'
    )


def start_foreground(home: TradingHome, **env: str) -> subprocess.Popen[bytes]:
    """The manager as systemd runs it, notifying on run/notify.sock."""
    return subprocess.Popen(
        [sys.executable, "-m", "services.management", "start", "--foreground"],
        env=service_env(home, NOTIFY_SOCKET=str(home.run / "notify.sock"), **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )


def messages_until(sock: socket.socket, wanted: str) -> list[str]:
    seen: list[str] = []
    while not any(wanted in message for message in seen):
        seen.append(sock.recv(4096).decode())
    return seen


def test_foreground_manager_notifies_systemd_and_stops_everything_on_sigterm(
    home: TradingHome, notify_socket: socket.socket
) -> None:
    write_config(home)
    process = start_foreground(home, WATCHDOG_USEC="400000")
    control = OsProcessControl(Path(home.root))
    try:
        ready = messages_until(notify_socket, "READY=1")
        assert "STATUS=all services healthy" in ready[-1]
        # By the time READY=1 is sent, every service answers health.
        leaders = {found.name for found in control.find_managed() if found.leader}
        assert leaders == {"redis", "alpha", "beta"}
        # The watchdog is pinged at half the 0.4 s timeout.
        assert messages_until(notify_socket, "WATCHDOG=1")

        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        assert time.monotonic() - began < 15
        assert any("STOPPING=1" in m for m in messages_until(notify_socket, "STOPPING=1"))
        assert control.find_managed() == []
        assert not home.socket_path("manager").exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for found in control.find_managed():
            os.kill(found.pid, signal.SIGKILL)


def test_a_second_foreground_manager_is_refused(home: TradingHome, notify_socket: socket.socket) -> None:
    write_config(home)
    first = start_foreground(home)
    try:
        messages_until(notify_socket, "READY=1")
        second = subprocess.run(
            [sys.executable, "-m", "services.management", "start", "--foreground"],
            env=service_env(home),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert second.returncode == 1
        assert f"already running (pid {first.pid})" in second.stderr
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0
    assert OsProcessControl(Path(home.root)).find_managed() == []


def test_foreground_start_makes_what_it_needs_on_a_fresh_home(tmp_path: Path) -> None:
    home = TradingHome(tmp_path / "fresh")
    home.root.mkdir()
    write_config(home)  # a config.toml and nothing else: no run/, logs/ or data/ yet
    output = tmp_path / "manager.err"
    with output.open("wb") as err:
        manager = subprocess.Popen(
            [sys.executable, "-m", "services.management", "start", "--foreground"],
            env=service_env(home),
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=ROOT,
        )
    try:
        deadline = time.monotonic() + 60
        while not (home.run / "beta.sock").exists() and time.monotonic() < deadline:
            if manager.poll() is not None:
                pytest.fail(
                    f"the manager exited: {manager.stderr.read().decode()[-2000:] if manager.stderr else ''}"
                )
            time.sleep(0.1)
        assert (home.run / "beta.sock").exists()
        manager.send_signal(signal.SIGTERM)
        assert manager.wait(30) == 0
    finally:
        if manager.poll() is None:
            manager.kill()
            manager.wait()
