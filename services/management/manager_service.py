"""The manager daemon: the supervisor behind a JSON-RPC socket (``run/manager.sock``).

It holds a lock so only one manager runs per ``TRADING_HOME``, adopts or replaces what a killed
manager left running, runs the embedded Redis (unless ``REDIS_URL`` is set) and every service,
samples their memory, CPU and health, publishes each state change as a ``service_state`` event,
and answers ``tradingctl``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from services.base.config import Settings, TradingHome
from services.base.errors import (
    DependencyUnavailable,
    InvalidParams,
    NotFound,
    OperationalError,
    TradingError,
)
from services.base.events import Event, EventType
from services.base.logs import configure_logging
from services.base.redis_server import SOCKET_NAME as REDIS_SOCKET
from services.base.redis_server import EmbeddedRedis, ping_async, read_password
from services.base.rpc import RpcClient, rpc_method
from services.base.runner import event_loop_factory, raise_open_file_limit
from services.base.service import BaseService, Check, Status
from services.management import backup, logview
from services.management.catalog import REDIS, Catalog, ManagerConfig, ServiceSpec, build_catalog
from services.management.processes import OsProcessControl, ProcessControl, Sample
from services.management.states import ProcessState
from services.management.supervisor import StateChange, Supervisor
from services.management.systemd import sd_notify, watchdog_interval
from services.management.wire import (
    Adoption,
    Alert,
    BackupResult,
    HealthEntry,
    ProcessStatus,
    StackStatus,
    StartResult,
    blank_process_status,
)

if TYPE_CHECKING:
    from services.management import prometheus
    from services.management.prometheus import Exporter

log = logging.getLogger("services.manager")

LOCK_NAME = "manager.lock"
ALERT_TYPES = (EventType.BUY_RATE_ALERT, EventType.RISK_ALERT, EventType.STORAGE_ALERT)


class AlreadyRunning(OperationalError):
    def __init__(self, pid: int | None) -> None:
        super().__init__(f"the manager is already running (pid {pid if pid else 'unknown'})")
        self.pid = pid


class ManagerLock:
    """An flock on ``run/manager.lock`` held for the manager's life; the file holds its pid.

    The kernel drops the lock when the process dies, however it dies, so a stale file never
    blocks the next start. The descriptor is not inherited by children.
    """

    def __init__(self, home: TradingHome) -> None:
        self.path = home.run / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(running_manager_pid(self.path.parent.parent)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def running_manager_pid(root: Path) -> int | None:
    """The pid in the lock file while some process holds the lock; None when no manager runs."""
    path = root / "run" / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else 0
        return None
    finally:
        os.close(fd)


class SocketProber:
    """Health over the processes' own sockets: JSON-RPC ``health``, or PING for Redis."""

    def __init__(self, home: TradingHome, timeout: float) -> None:
        self.home = home
        self.timeout = timeout

    async def health(self, spec: ServiceSpec) -> str:
        if spec.kind == "redis":
            await ping_async(self.home.run / REDIS_SOCKET, self.timeout, password=read_password(self.home))
            return "ok"
        report = await self.report(spec.name)
        return str(report.get("status"))

    async def report(self, name: str) -> dict[str, Any]:
        report = await self._call(name, "health")
        if not isinstance(report, dict):
            raise DependencyUnavailable(f"{name}: health answered {type(report).__name__}, not an object")
        return report

    async def metrics(self, name: str) -> dict[str, Any]:
        result = await self._call(name, "metrics")
        return result if isinstance(result, dict) else {}

    async def request_shutdown(self, spec: ServiceSpec) -> None:
        # A busy service may take a while to answer: as long as a stop step may take.
        await self._call(spec.name, "shutdown", timeout=spec.stop_timeout_s)

    async def _call(self, name: str, method: str, *, timeout: float | None = None) -> Any:
        socket = self.home.socket_path(name)
        budget = timeout or self.timeout
        async with RpcClient(socket, timeout=budget, connect_attempts=1) as client:
            return await client.call(method)


def stack_catalog(settings: Settings, config: ManagerConfig) -> Catalog:
    """The configured services, behind the embedded Redis when no ``REDIS_URL`` is set."""
    catalog = build_catalog(settings)
    if settings.redis.url:
        return catalog
    redis = ServiceSpec(
        name=REDIS,
        command=tuple(EmbeddedRedis(settings.home).command()),
        depends_on=(),
        start_timeout_s=10.0,
        stop_timeout_s=config.stop_timeout_s,
        kind="redis",
    )
    specs = {REDIS: redis}
    for name, spec in catalog.specs.items():
        specs[name] = dataclasses.replace(spec, depends_on=(REDIS, *spec.depends_on))
    return Catalog(specs=specs, missing=catalog.missing)


def unknown_services_message(catalog: Catalog, names: Sequence[str]) -> str | None:
    """A message naming the services that are not in the stack, or None when all are."""
    unknown = [name for name in names if name not in catalog.specs]
    if not unknown:
        return None
    missing = [name for name in unknown if name in catalog.missing]
    known = ", ".join(catalog.specs) or "none"
    if missing:
        return f"not installed here: {', '.join(missing)} (services here: {known})"
    return f"unknown service {', '.join(unknown)} (services here: {known})"


class ManagerService(BaseService):
    name = "manager"
    start_timeout_s = 60.0

    def __init__(
        self,
        settings: Settings,
        *,
        initial: Sequence[str] | None = None,
        control: ProcessControl | None = None,
        notify: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(settings, **kwargs)
        self.config = settings.section("manager", ManagerConfig)
        self.catalog = stack_catalog(settings, self.config)
        self._check_names(initial or [])
        self.initial = list(initial) if initial else None
        self.control = control or OsProcessControl(self.home.root)
        self.prober = SocketProber(self.home, self.config.health_timeout_s)
        self.supervisor = Supervisor(
            self.catalog,
            config=self.config,
            control=self.control,
            prober=self.prober,
            clock=self.clock,
            output_dir=self.home.logs,
            on_change=self._on_change,
            restarts_file=self.home.run / "restarts.json",
        )
        self.notify = notify
        self.adoptions: list[Adoption] = []
        self.recent_alerts: deque[Alert] = deque(maxlen=100)
        self.samples: dict[str, Sample] = {}
        self.health_seen: dict[str, str] = {}
        self.metrics_seen: dict[str, dict[str, Any]] = {}
        self.boot: asyncio.Task[StartResult] | None = None
        self._changes: asyncio.Queue[StateChange] = asyncio.Queue()
        # The sampler and the start RPC both sample; one at a time, so CPU figures cover a real
        # interval and an older sample never replaces a newer one.
        self._sampling = asyncio.Lock()
        self._exporter: Exporter | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def _start(self) -> None:
        self.adoptions = await self.supervisor.adopt_orphans()
        if REDIS in self.supervisor.children:
            result = await self.supervisor.start([REDIS])
            if not result["ok"]:
                raise DependencyUnavailable(f"redis did not start: {result['failed'][REDIS]}")
        self.bus.subscribe(ALERT_TYPES, self._on_alert)
        self.spawn(self._publish_changes(), name="state-events")
        self.spawn(self._sample_loop(), name="sampler")
        if self.config.metrics_port is not None:
            from services.management.prometheus import Exporter  # only for users who ask for it

            self._exporter = Exporter(self._metrics_snapshot, port=self.config.metrics_port)
            self._exporter.start()
            log.info("Prometheus metrics on http://127.0.0.1:%d/metrics", self._exporter.port)
        self.boot = self.spawn(self._boot(), name="boot")

    async def _boot(self) -> StartResult:
        result = await self.supervisor.start(self.initial)
        if result["ok"]:
            log.info("all services healthy: %s", ", ".join(result["states"]))
        else:
            log.error("some services did not start: %s", result["failed"])
        if self.notify:
            status = "all services healthy" if result["ok"] else f"not started: {', '.join(result['failed'])}"
            sd_notify(f"READY=1\nSTATUS={status}")
            interval = watchdog_interval()
            if interval is not None:
                self.spawn(self._watchdog(interval), name="watchdog")
        return result

    async def shutdown_stack(self) -> None:
        """Stop every process in reverse dependency order (the manager's own stop comes after)."""
        if self.notify:
            sd_notify("STOPPING=1")
        if self.boot is not None and not self.boot.done():
            self.boot.cancel()
        await self.supervisor.close()
        if self._exporter is not None:
            await asyncio.to_thread(self._exporter.close)

    async def _watchdog(self, interval: float) -> None:
        while True:
            sd_notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    # -- state events and alerts ---------------------------------------------------------------

    def _on_change(self, change: StateChange) -> None:
        self._changes.put_nowait(change)
        self.health_seen.pop(change.name, None)  # belongs to the previous process; the sampler asks anew
        if change.state in (ProcessState.BACKOFF, ProcessState.FATAL):
            self.recent_alerts.appendleft(
                {
                    "ts": change.at.isoformat(),
                    "type": EventType.SERVICE_STATE,
                    "source": self.name,
                    "message": f"{change.name} {change.state}: {change.reason}",
                    "data": {"service": change.name, "state": str(change.state)},
                }
            )

    async def _publish_changes(self) -> None:
        # One at a time, so subscribers see each process's changes in order.
        while True:
            change = await self._changes.get()
            await self.bus.publish(
                EventType.SERVICE_STATE,
                {
                    "service": change.name,
                    "state": str(change.state),
                    "previous": str(change.previous),
                    "reason": change.reason,
                    "pid": change.pid,
                    "restarts": change.restarts,
                },
            )

    async def _on_alert(self, event: Event) -> None:
        message = event.data.get("message") or ", ".join(f"{k}={v}" for k, v in event.data.items())
        self.recent_alerts.appendleft(
            {
                "ts": event.ts,
                "type": event.type,
                "source": event.source,
                "message": str(message),
                "data": event.data,
            }
        )

    # -- sampling --------------------------------------------------------------------------------

    async def _sample_loop(self) -> None:
        while True:
            try:
                await self._sample_once()
            except Exception:  # one bad sample must not end sampling for the manager's life
                log.exception("sampling failed")
            await asyncio.sleep(self.config.sample_interval_s)

    async def _sample_once(self) -> None:
        async with self._sampling:
            await self._sample_locked()

    async def _sample_locked(self) -> None:
        pids = {child.name: child.pid for child in self.supervisor.children.values() if child.pid}
        pids[self.name] = os.getpid()
        self.samples = await asyncio.to_thread(self._sample_pids, pids)
        running = [c.spec for c in self.supervisor.children.values() if c.state is ProcessState.RUNNING]
        healths = await asyncio.gather(
            *(self.prober.health(spec) for spec in running), return_exceptions=True
        )
        self.health_seen = {
            spec.name: (health if isinstance(health, str) else "down")
            for spec, health in zip(running, healths, strict=True)
        }
        if self._exporter is not None:
            services = [spec.name for spec in running if spec.kind == "service"]
            results = await asyncio.gather(
                *(self.prober.metrics(n) for n in services), return_exceptions=True
            )
            self.metrics_seen = {n: r for n, r in zip(services, results, strict=True) if isinstance(r, dict)}

    def _sample_pids(self, pids: dict[str, int]) -> dict[str, Sample]:
        samples = {}
        for name, pid in pids.items():
            # The manager's children are the services, each counted on its own.
            sample = self.control.sample(pid, children=name != self.name)
            if sample is not None:
                samples[name] = sample
        return samples

    def _metrics_snapshot(self) -> prometheus.MetricsSnapshot:
        # Runs in the exporter's thread: it only reads references the loop replaces whole.
        from services.management.prometheus import MetricsSnapshot

        return MetricsSnapshot(status=self.stack_status(), services=self.metrics_seen)

    # -- status ----------------------------------------------------------------------------------

    def stack_status(self) -> StackStatus:
        now = self.clock.now()
        processes = [self._process_status(child.name, now) for child in self.supervisor.children.values()]
        if self.settings.redis.url:
            processes.insert(0, self._external_redis(now))
        manager_sample = self.samples.get(self.name)
        everyone = [*processes, _sample_fields(manager_sample)]
        return {
            "manager": {
                "pid": os.getpid(),
                "home": str(self.home.root),
                "uptime_s": round(time.monotonic() - self._started_monotonic, 1),
                "redis_url": self._redis_url_for_display(),
                "redis_embedded": not self.settings.redis.url,
                "adoptions": self.adoptions,
                "not_installed": list(self.catalog.missing),
                "memory_rss": manager_sample.memory_rss if manager_sample else None,
                "memory_pss": manager_sample.memory_pss if manager_sample else None,
            },
            "processes": processes,
            "total_memory_rss": sum(p.get("memory_rss") or 0 for p in everyone),
            "total_memory_pss": sum(p.get("memory_pss") or p.get("memory_rss") or 0 for p in everyone),
        }

    def _process_status(self, name: str, now: datetime) -> ProcessStatus:
        child = self.supervisor.children[name]
        fields = _sample_fields(self.samples.get(name) if child.pid else None)
        running = child.state is ProcessState.RUNNING
        since = child.running_since if running else None
        return {
            "name": name,
            "state": str(child.state),
            "pid": child.pid,
            "uptime_s": round((now - since).total_seconds(), 1) if since else None,
            "restarts": child.restarts,
            "memory_rss": fields["memory_rss"],
            "memory_pss": fields["memory_pss"],
            "cpu_percent": fields["cpu_percent"],
            "health": self.health_seen.get(name) if running else None,
            "last_error": child.last_error,
            "depends_on": list(child.spec.depends_on),
            "since": child.since.isoformat(),
            "retry_in_s": _seconds_until(child.retry_at, now),
        }

    def _external_redis(self, now: datetime) -> ProcessStatus:
        connected = self._bus is not None and self._bus.connected
        status = blank_process_status(REDIS, str(ProcessState.EXTERNAL), since=now.isoformat())
        status["health"] = "ok" if connected else "down"
        if not connected and self._bus is not None:
            status["last_error"] = self._bus.last_error
        return status

    def _redis_url_for_display(self) -> str:
        url = self.settings.redis.url
        if not url:
            return f"unix://{self.home.run / REDIS_SOCKET}"
        # Never show a password.
        if "@" in url:
            scheme, _, rest = url.partition("://")
            return f"{scheme}://***@{rest.rpartition('@')[2]}"
        return url

    def health_checks(self) -> dict[str, Check]:
        checks = super().health_checks()
        for child in self.supervisor.children.values():
            state = child.state
            status: Status = "ok" if state is ProcessState.RUNNING else "degraded"
            if state is ProcessState.FATAL:
                status = "failing"
            detail = str(state) if not child.last_error or status == "ok" else f"{state}: {child.last_error}"
            checks[child.name] = {"status": status, "detail": detail}
        return checks

    def _check_names(self, names: Iterable[str]) -> list[str]:
        names = list(names)
        problem = unknown_services_message(self.catalog, names)
        if problem:
            raise NotFound(problem)
        return names

    # -- RPC ---------------------------------------------------------------------------------

    @rpc_method(idempotent=True)
    def status(self) -> StackStatus:
        """Every process: state, pid, uptime, restarts, memory, CPU, health, last error; and totals."""
        return self.stack_status()

    # start and stop are the lifecycle methods of every service, hence the Python names.
    @rpc_method(name="start")
    async def start_services(self, services: list[str] | None = None, boot: bool = False) -> StartResult:
        """Start services (default: all) and what they need; answers once each is running or FATAL.

        A FATAL service is started afresh. ``boot``: only wait for the start the manager made
        when it came up, and return its result (what ``tradingctl start`` does after launching it).
        """
        names = self._check_names(services) if services else None
        if boot and self.boot is not None:
            result = await asyncio.shield(self.boot)
        else:
            result = await self.supervisor.start(names)
        await self._sample_once()  # so the status that usually follows has figures
        return result

    @rpc_method(name="stop")
    async def stop_services(self, services: list[str] | None = None) -> dict[str, Any]:
        """Stop services in reverse dependency order; with none named, the whole stack and the manager."""
        if services:
            return {
                "states": await self.supervisor.stop(self._check_names(services)),
                "manager_stopping": False,
            }
        states = await self.supervisor.stop()
        self.request_shutdown("stop RPC")
        return {"states": states, "manager_stopping": True}

    @rpc_method
    async def restart(self, service: str) -> StartResult:
        """Stop and start one service; the services that depend on it keep running."""
        self._check_names([service])
        return await self.supervisor.restart(service)

    @rpc_method(idempotent=True)
    async def stack_health(self, service: str | None = None) -> list[HealthEntry]:
        """Ask every service (or one) for its health now, in parallel, each with a timeout."""
        names = self._check_names([service]) if service else list(self.supervisor.children)
        return list(await asyncio.gather(*(self._health_entry(name) for name in names)))

    async def _health_entry(self, name: str) -> HealthEntry:
        child = self.supervisor.children[name]
        if child.pid is None:
            return _down(name, child.last_error or str(child.state))
        try:
            if child.spec.kind == "redis":
                await ping_async(
                    self.home.run / REDIS_SOCKET,
                    self.config.health_timeout_s,
                    password=read_password(self.home),
                )
                return {"name": name, "status": "ok", "report": None, "error": None}
            report = await self.prober.report(name)
        except Exception as exc:
            return _down(name, str(exc) or type(exc).__name__)
        status = report.get("status")
        if status == "ok" or status == "degraded":
            return {"name": name, "status": status, "report": report, "error": None}
        return {"name": name, "status": "failing", "report": report, "error": None}

    @rpc_method(idempotent=True)
    def alerts(self, limit: int = 20) -> list[Alert]:
        """Recent alerts, newest first: crashes and FATAL services, buy-rate and risk alerts."""
        return list(self.recent_alerts)[: max(0, limit)]

    @rpc_method(idempotent=True)
    async def logs(
        self, service: str | None = None, lines: int = 50, level: str | None = None
    ) -> list[dict[str, Any]]:
        """The last log records of one service, or of all merged by time."""
        known = {"manager", *self.supervisor.names}
        if service is not None and service not in known:
            raise InvalidParams(
                f"unknown service {service[:100]!r}; known: {', '.join(sorted(known))}", field="service"
            )
        records = await asyncio.to_thread(logview.tail, self.home, service, lines=lines, level=level)
        return [
            {"ts": r.ts.isoformat(), "level": r.level, "service": r.service, "msg": r.msg, **r.fields}
            for r in records
        ]

    @rpc_method
    async def backup(self) -> BackupResult:
        """Copy every service database (SQLite online backup) into backups/YYYY-MM-DD, keeping 14 days."""
        today = self.clock.now().astimezone().date()
        result = await asyncio.to_thread(
            backup.backup_databases, self.home, today=today, keep_days=self.config.backup_keep_days
        )
        log.info("backup written to %s (%d files)", result["directory"], len(result["files"]))
        for name, reason in result["failed"].items():
            log.error("backup of %s failed: %s", name, reason)
        return result


class _SampleFields(TypedDict):
    memory_rss: int | None
    memory_pss: int | None
    cpu_percent: float | None


def _sample_fields(sample: Sample | None) -> _SampleFields:
    if sample is None:
        return {"memory_rss": None, "memory_pss": None, "cpu_percent": None}
    return {
        "memory_rss": sample.memory_rss,
        "memory_pss": sample.memory_pss,
        "cpu_percent": sample.cpu_percent,
    }


def _seconds_until(when: datetime | None, now: datetime) -> float | None:
    return round(max(0.0, (when - now).total_seconds()), 1) if when is not None else None


def _down(name: str, error: str) -> HealthEntry:
    return {"name": name, "status": "down", "report": None, "error": error}


# -- running the manager --------------------------------------------------------------------------


def run_manager(
    settings: Settings, *, initial: Sequence[str] | None = None, notify: bool = False, to_stderr: bool = True
) -> int:
    """Run the manager in this process until SIGTERM/SIGINT or a ``stop`` call; the exit status."""
    lock = ManagerLock(settings.home)
    lock.acquire()  # raises AlreadyRunning
    try:
        configure_logging(
            "manager",
            settings.home.logs,
            level=settings.logging.level,
            keep_days=settings.logging.keep_days,
            to_stderr=to_stderr,
            synthetic=settings.home.synthetic,
        )
        raise_open_file_limit()
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            return runner.run(_serve(settings, initial, notify))
    finally:
        lock.release()


async def _serve(settings: Settings, initial: Sequence[str] | None, notify: bool) -> int:
    try:
        manager = ManagerService(settings, initial=initial, notify=notify)
    except TradingError as exc:
        log.error("the manager could not start: %s", exc)
        return 1
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, manager.request_shutdown, signal.Signals(signum).name)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)
    try:
        await manager.start()
    except TradingError as exc:
        log.error("the manager could not start: %s", exc)
        with contextlib.suppress(Exception):
            await manager.shutdown_stack()
        return 1
    await manager.wait_for_shutdown()
    log.info("stopping every service")
    await manager.shutdown_stack()
    await manager.stop()
    return 0
