"""Private by default: the home's directories, the embedded Redis's password, each process's secrets."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import psutil
import pytest

from services.base.config import TradingHome
from services.base.redis_server import PASSWORD_FILE, EmbeddedRedis, ping
from services.management.processes import OsProcessControl


def test_every_directory_of_the_home_is_its_owners_alone(tmp_path: Path) -> None:
    home = TradingHome(tmp_path / "home")
    home.root.mkdir(mode=0o755)
    (home.root / "logs").mkdir(mode=0o755)  # made before, by an older version
    home.create()
    for directory in (home.root, home.run, home.logs, home.data, home.models, home.backups):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory


def test_the_embedded_redis_asks_for_a_password_kept_off_its_command_line(redis: EmbeddedRedis) -> None:
    password_file = redis.home.run / PASSWORD_FILE
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    password = password_file.read_text().strip()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        sock.connect(str(redis.socket_path))
        sock.sendall(b"PING\r\n")
        assert sock.recv(256).startswith(b"-NOAUTH")
    assert ping(redis.socket_path, password=password)
    assert not ping(redis.socket_path, password="wrong")
    assert redis.process is not None
    assert password not in " ".join(psutil.Process(redis.process.pid).cmdline())
    assert f"password={password}" in redis.url  # what the services connect with


def test_each_process_gets_only_the_secrets_meant_for_it(
    home: TradingHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IG_PASSWORD", "ig-secret")
    monkeypatch.setenv("MARKETAUX_API_TOKEN", "news-secret")
    monkeypatch.setenv("SOMETHING_ELSE", "kept")
    control = OsProcessControl(home.root)
    assert control.environment("paper_trading")["IG_PASSWORD"] == "ig-secret"
    assert "MARKETAUX_API_TOKEN" not in control.environment("paper_trading")
    assert control.environment("sentiment")["MARKETAUX_API_TOKEN"] == "news-secret"
    for name in ("redis", "market_data", "prediction", "scheduler"):
        env = control.environment(name)
        assert "IG_PASSWORD" not in env
        assert "MARKETAUX_API_TOKEN" not in env
        assert env["SOMETHING_ELSE"] == "kept"
    assert os.environ["IG_PASSWORD"] == "ig-secret"  # the manager's own is untouched
