"""systemd integration: sd_notify over a real datagram socket, the watchdog, the unit file."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.base.config import TradingHome
from services.management.systemd import (
    UNIT_NAME,
    enable_hint,
    install_unit,
    sd_notify,
    unit_dir,
    unit_text,
    watchdog_interval,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_TRADINGCTL = Path("/home/trader/asx-trading-services/.venv/bin/tradingctl")
EXAMPLE_HOME = Path("/home/trader/.asx-trading")


def receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


@pytest.fixture
def notify_socket(home: TradingHome) -> Iterator[tuple[str, socket.socket]]:
    path = str(home.run / "notify")
    with receiver(path) as sock:
        yield path, sock


# -- sd_notify -------------------------------------------------------------------------------------


def test_sd_notify_sends_a_datagram(notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    assert sd_notify("READY=1", env={"NOTIFY_SOCKET": path})
    assert sock.recv(4096) == b"READY=1"
    assert sd_notify("STATUS=3 of 6 services up\nWATCHDOG=1", env={"NOTIFY_SOCKET": path})
    assert sock.recv(4096) == b"STATUS=3 of 6 services up\nWATCHDOG=1"


def test_sd_notify_reads_the_process_environment(
    notify_socket: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, sock = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert sd_notify("READY=1")
    assert sock.recv(4096) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not sd_notify("READY=1")


def test_sd_notify_to_an_abstract_socket() -> None:
    name = f"asx-trading-test-{uuid.uuid4().hex}"
    with receiver("\0" + name) as sock:
        assert sd_notify("READY=1", env={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"READY=1"


def test_sd_notify_without_systemd_or_with_a_dead_socket(home: TradingHome) -> None:
    assert not sd_notify("READY=1", env={})
    assert not sd_notify("READY=1", env={"NOTIFY_SOCKET": ""})
    assert not sd_notify("READY=1", env={"NOTIFY_SOCKET": str(home.run / "missing")})
    plain_file = home.run / "not-a-socket"
    plain_file.write_text("")
    assert not sd_notify("READY=1", env={"NOTIFY_SOCKET": str(plain_file)})
    with receiver(str(home.run / "closed")):
        pass  # bound, then closed: nobody is listening any more
    assert not sd_notify("READY=1", env={"NOTIFY_SOCKET": str(home.run / "closed")})
    assert not sd_notify("READY=1", env={"NOTIFY_SOCKET": "@" + uuid.uuid4().hex})


# -- watchdog --------------------------------------------------------------------------------------


def test_watchdog_interval() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}) == 0.5
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "4242"}, pid=4242) == 0.5
    # Inherited from a parent the watchdog was meant for: not ours to ping.
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "4242"}, pid=4243) is None
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "x"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "-5"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


def test_watchdog_interval_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval() == 10.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog_interval() is None


# -- the unit file ---------------------------------------------------------------------------------


def settings(text: str) -> list[str]:
    """The unit's lines without comments and blank lines."""
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_user_unit() -> None:
    text = unit_text(tradingctl=EXAMPLE_TRADINGCTL, home=EXAMPLE_HOME, user_mode=True, user="trader")
    assert settings(text) == [
        "[Unit]",
        "Description=ASX trading services (paper trading)",
        "After=network-online.target",
        "Wants=network-online.target",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        "ExecStart=/home/trader/asx-trading-services/.venv/bin/tradingctl start --foreground",
        "Environment=TRADING_HOME=/home/trader/.asx-trading",
        "Environment=PYTHONUNBUFFERED=1",
        "WorkingDirectory=/home/trader/.asx-trading",
        "Restart=on-failure",
        "RestartSec=5",
        "TimeoutStartSec=180",
        "KillMode=mixed",
        "TimeoutStopSec=120",
        "WatchdogSec=30",
        "[Install]",
        "WantedBy=default.target",
    ]
    comments = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert "KillMode=mixed" in comments
    assert "Type=notify" in comments


def test_system_unit_runs_as_the_user_and_quotes_paths() -> None:
    text = unit_text(
        tradingctl=Path("/opt/asx trading/bin/tradingctl"),
        home=Path("/srv/asx home 100%"),
        user_mode=False,
        user="trader",
        environment={"REDIS_URL": "unix:///run/redis/redis.sock", "TRADING__LOG__LEVEL": 'say "hi" \\ $x'},
    )
    lines = settings(text)
    assert 'ExecStart="/opt/asx trading/bin/tradingctl" start --foreground' in lines
    assert [line for line in lines if line.startswith("Environment=")] == [
        'Environment="TRADING_HOME=/srv/asx home 100%%"',
        "Environment=REDIS_URL=unix:///run/redis/redis.sock",
        'Environment="TRADING__LOG__LEVEL=say \\"hi\\" \\\\ $x"',
        "Environment=PYTHONUNBUFFERED=1",
    ]
    assert "WorkingDirectory=/srv/asx home 100%%" in lines
    assert "User=trader" in lines
    assert lines[-1] == "WantedBy=multi-user.target"
    assert not any(
        line.startswith("User=")
        for line in settings(unit_text(tradingctl=EXAMPLE_TRADINGCTL, home=EXAMPLE_HOME, user_mode=False))
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tradingctl": Path("bin/tradingctl")}, "absolute"),
        ({"home": Path("relative/home")}, "absolute"),
        ({"tradingctl": Path('/opt/"odd"/tradingctl')}, "quotes or backslashes"),
        ({"home": Path("/srv/new\nline")}, "control characters"),
        ({"environment": {"MARKETAUX_API_TOKEN": "abc"}}, "looks like a secret"),
        ({"environment": {"IG_PASSWORD": "abc"}}, "looks like a secret"),
        ({"environment": {"TRADING_HOME": "/elsewhere"}}, "set by the unit"),
        ({"environment": {"BAD NAME": "x"}}, "invalid environment variable name"),
        ({"environment": {"X": "two\nlines"}}, "control characters"),
        ({"user": "root; rm"}, "invalid user name"),
    ],
)
def test_unit_text_rejects_what_it_cannot_write(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {
        "tradingctl": EXAMPLE_TRADINGCTL,
        "home": EXAMPLE_HOME,
        "user_mode": False,
    }
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        unit_text(**arguments)  # type: ignore[arg-type]


def test_example_unit_is_generated() -> None:
    example = (ROOT / "systemd" / UNIT_NAME).read_text()
    assert example == unit_text(tradingctl=EXAMPLE_TRADINGCTL, home=EXAMPLE_HOME, user_mode=True)


# -- systemd-analyze verify ------------------------------------------------------------------------

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def verify(unit: Path, *, user_mode: bool, runtime_dir: Path) -> tuple[int, list[str]]:
    """Run ``systemd-analyze verify`` on ``unit``; return its status and the lines about it.

    Works without a running systemd: system mode needs nothing, user mode a private runtime dir.
    Lines about other units of the machine are left out: only ours are under test.
    """
    assert SYSTEMD_ANALYZE is not None
    command = [SYSTEMD_ANALYZE, *(["--user"] if user_mode else []), "--man=no", "verify", str(unit)]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "XDG_RUNTIME_DIR": str(runtime_dir)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)
    output = (done.stdout + done.stderr).splitlines()
    return done.returncode, [line for line in output if UNIT_NAME in line or str(unit.parent) in line]


@pytest.fixture
def unit_setup(home: TradingHome) -> tuple[Path, Path, Path]:
    """An executable tradingctl and a home, both under paths with spaces and a %, and a runtime dir."""
    tradingctl = home.root / "venv 50%" / "bin" / "tradingctl"
    tradingctl.parent.mkdir(parents=True)
    tradingctl.write_text("#!/bin/sh\nexit 0\n")
    tradingctl.chmod(0o755)
    trading_home = home.root / "trading home"
    trading_home.mkdir()
    runtime_dir = home.root / "xdg-runtime"
    runtime_dir.mkdir(mode=0o700)
    return tradingctl, trading_home, runtime_dir


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed on this machine")
@pytest.mark.parametrize("user_mode", [True, False], ids=["user", "system"])
def test_systemd_analyze_verify_accepts_the_unit(
    home: TradingHome, unit_setup: tuple[Path, Path, Path], user_mode: bool
) -> None:
    tradingctl, trading_home, runtime_dir = unit_setup
    text = unit_text(
        tradingctl=tradingctl,
        home=trading_home,
        user_mode=user_mode,
        user=None if user_mode else "root",
        environment={"REDIS_URL": "redis://localhost:6379/0", "NOTE": 'a "quoted" value'},
    )
    unit = install_unit(text, home.root / "units")

    status, about_unit = verify(unit, user_mode=user_mode, runtime_dir=runtime_dir)

    assert (status, about_unit) == (0, [])


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed on this machine")
def test_systemd_analyze_verify_catches_a_broken_unit(
    home: TradingHome, unit_setup: tuple[Path, Path, Path]
) -> None:
    """The check above can fail: an unquoted path with a space, or an unknown key, is reported."""
    tradingctl, trading_home, runtime_dir = unit_setup
    text = unit_text(tradingctl=tradingctl, home=trading_home, user_mode=False)
    broken = text.replace(f'"{tradingctl}"'.replace("%", "%%"), str(tradingctl).replace("%", "%%"))
    broken = broken.replace("WatchdogSec=30", "WatchdogSecs=30")
    assert broken != text
    unit = install_unit(broken, home.root / "units")

    status, about_unit = verify(unit, user_mode=False, runtime_dir=runtime_dir)

    assert status != 0
    assert any("WatchdogSecs" in line for line in about_unit)
    assert any("not executable" in line for line in about_unit)


# -- installing ------------------------------------------------------------------------------------


def test_unit_dir() -> None:
    assert unit_dir(False) == Path("/etc/systemd/system")
    assert unit_dir(True, {"XDG_CONFIG_HOME": "/cfg", "HOME": "/home/t"}) == Path("/cfg/systemd/user")
    assert unit_dir(True, {"HOME": "/home/t"}) == Path("/home/t/.config/systemd/user")
    # The XDG spec: a relative XDG_CONFIG_HOME is invalid and ignored.
    assert unit_dir(True, {"XDG_CONFIG_HOME": "cfg", "HOME": "/home/t"}) == Path(
        "/home/t/.config/systemd/user"
    )


def test_install_unit_writes_0644_atomically(home: TradingHome) -> None:
    directory = home.root / "config" / "systemd" / "user"
    old_umask = os.umask(0o077)
    try:
        path = install_unit("first\n", directory)
    finally:
        os.umask(old_umask)
    assert path == directory / UNIT_NAME
    assert path.read_text() == "first\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644

    assert install_unit("second\n", directory) == path
    assert path.read_text() == "second\n"
    assert [p.name for p in directory.iterdir()] == [UNIT_NAME]


def test_enable_hint() -> None:
    assert enable_hint(False) == "systemctl daemon-reload && systemctl enable --now asx-trading"
    user = enable_hint(True)
    assert (
        user.splitlines()[0] == "systemctl --user daemon-reload && systemctl --user enable --now asx-trading"
    )
    assert "loginctl enable-linger" in user
