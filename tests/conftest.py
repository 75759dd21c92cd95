"""Shared fixtures: a short temporary TRADING_HOME, a real embedded Redis, service processes."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from services.base.config import Settings, TradingHome, load_settings
from services.base.redis_server import EmbeddedRedis, ping

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_SERVICE = ROOT / "tests" / "sample_service.py"


@pytest.fixture
def home() -> Iterator[TradingHome]:
    # Unix socket paths are limited to 107 bytes, so keep the directory short.
    root = Path(tempfile.mkdtemp(prefix="at-", dir="/tmp"))
    trading_home = TradingHome(root)
    trading_home.create()
    yield trading_home
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    """Undo what configure_logging did to the root logger during a test."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    level = root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture
def redis(home: TradingHome) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(home)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings(home: TradingHome, redis: EmbeddedRedis) -> Settings:
    return load_settings(home, env={"REDIS_URL": redis.url})


def service_env(home: TradingHome, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADING")}
    env.update({"TRADING_HOME": str(home.root), "PYTHONPATH": str(ROOT)}, **extra)
    return env


class ServiceProcess:
    """A real service process, started like the manager starts one."""

    def __init__(
        self,
        home: TradingHome,
        script: Path = SAMPLE_SERVICE,
        name: str = "sample",
        *,
        module: str | None = None,
        **env: str,
    ) -> None:
        """Run ``script``, or ``python -m module`` when a module is named."""
        self.home = home
        self.socket = home.socket_path(name)
        self.log = home.logs / f"{name}.stderr"
        command = [sys.executable, "-m", module] if module else [sys.executable, str(script)]
        with self.log.open("ab") as stderr:
            self.process = subprocess.Popen(
                command,
                env=service_env(home, **env),
                stdout=stderr,
                stderr=stderr,
                cwd=ROOT,
            )

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"service exited with {self.process.returncode}: {self.log.read_text()[-2000:]}"
                )
            if self._accepts_connections():
                return
            time.sleep(0.02)
        raise AssertionError(f"service did not open {self.socket} within {timeout}s")

    def _accepts_connections(self) -> bool:
        # A socket file alone proves nothing: a killed process leaves its file behind.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(self.socket))
            except OSError:
                return False
        return True

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def sample_service(home: TradingHome, redis: EmbeddedRedis) -> Iterator[ServiceProcess]:
    service = ServiceProcess(home, REDIS_URL=redis.url)
    service.wait_ready()
    yield service
    service.stop()


async def eventually(predicate: Callable[[], bool | Awaitable[bool]], within: float = 10.0) -> None:
    """Wait for a condition that I/O will bring about (it polls; no test asserts on how long)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        outcome = predicate()
        if outcome if isinstance(outcome, bool) else await outcome:
            return
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


__all__ = ["ServiceProcess", "eventually", "ping", "service_env"]
