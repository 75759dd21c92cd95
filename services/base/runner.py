"""Run one service in the foreground: ``python -m services.<name>`` calls ``run_service``.

Loads settings (a config error exits with status 2 and a message naming the key), sets up
logging, uses uvloop when installed, turns SIGTERM/SIGINT into a graceful, bounded shutdown. When
the environment asks for one, the service runs in a simulation (``services.base.simulation``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import sys
from collections.abc import Callable
from typing import Any

from services.base.config import Settings, load_settings
from services.base.errors import ConfigError, OperationalError
from services.base.logs import configure_logging
from services.base.service import BaseService
from services.base.simulation import Simulation
from services.base.storage import DatabaseRefused

log = logging.getLogger("services.runner")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
# Start-up refused for a reason a restart cannot change (a database that must not be opened): the
# manager stops trying at once. Config errors (2) are the same.
EXIT_NEEDS_HUMAN = 3


def run_service(service_class: type[BaseService], **service_kwargs: Any) -> int:
    os.umask(0o077)  # what a service writes (logs, databases, models) is its owner's alone
    try:
        settings = load_settings()
        settings.home.create()
        # A caller that brings its own clock (a test's) keeps it.
        simulation = Simulation.from_environment() if "clock" not in service_kwargs else None
        if simulation is not None:
            service_kwargs = {**service_kwargs, "simulation": simulation}
    except ConfigError as exc:
        print(f"{service_class.name}: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(
        service_class.name,
        settings.home.logs,
        level=settings.logging.level,
        keep_days=settings.logging.keep_days,
        # Under the manager, stderr goes to logs/<service>.out: log to the .log file only.
        to_stderr=not os.environ.get("TRADING_SUPERVISED"),
        synthetic=settings.home.synthetic,
    )
    raise_open_file_limit()
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(_serve(service_class, settings, service_kwargs))


async def _serve(service_class: type[BaseService], settings: Settings, kwargs: dict[str, Any]) -> int:
    service = service_class(settings, **kwargs)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, service.request_shutdown, signal.Signals(signum).name)
    try:
        await service.start()
    except OperationalError as exc:
        log.error("%s could not start: %s", service.name, exc)
        # Also on stderr: under the manager it is the last line of <service>.out, which
        # `tradingctl start` and `status` show.
        print(f"{service.name} could not start: {exc}", file=sys.stderr, flush=True)
        if isinstance(exc, ConfigError):
            return EXIT_CONFIG
        return EXIT_NEEDS_HUMAN if isinstance(exc, DatabaseRefused) else EXIT_FAILED
    await service.wait_for_shutdown()
    await service.stop()
    return EXIT_OK


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed, else asyncio's default."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def raise_open_file_limit() -> None:
    """Allow as many sockets as the hard limit permits (1,000 clients need more than 1,024 fds)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
