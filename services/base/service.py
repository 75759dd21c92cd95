"""BaseService: the lifecycle, RPC endpoint, event bus and built-in methods every service shares.

Subclasses set ``name``, add ``@rpc_method`` methods, and fill in ``_start``/``_stop``;
``start``/``stop`` belong to the base and are not overridden. Every state change goes through
``_TRANSITIONS``, is logged, and is published as a ``service_state`` event.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Coroutine
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypedDict, TypeVar

import psutil

from services.base.clock import Clock, SystemClock, utc_iso
from services.base.config import Settings
from services.base.db import Database
from services.base.errors import OperationalError
from services.base.events import EventBus, EventType
from services.base.metrics import Metrics
from services.base.redis_server import redis_url
from services.base.rpc import protocol
from services.base.rpc.client import RpcClient
from services.base.rpc.methods import MethodTable, rpc_method
from services.base.rpc.server import PeerUid, RpcServer
from services.base.storage import open_service_database
from services.base.work import Work

if TYPE_CHECKING:
    from services.base.simulation import Simulation

log = logging.getLogger("services.service")

T = TypeVar("T")

Status = Literal["ok", "degraded", "failing"]


class ServiceState(StrEnum):
    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


_TRANSITIONS: dict[ServiceState, frozenset[ServiceState]] = {
    ServiceState.CREATED: frozenset({ServiceState.STARTING}),
    ServiceState.STARTING: frozenset({ServiceState.RUNNING, ServiceState.FAILED}),
    ServiceState.RUNNING: frozenset({ServiceState.STOPPING}),
    ServiceState.STOPPING: frozenset({ServiceState.STOPPED, ServiceState.FAILED}),
    ServiceState.STOPPED: frozenset(),
    ServiceState.FAILED: frozenset(),
}


class Check(TypedDict):
    status: Status
    detail: str


class HealthReport(TypedDict, total=False):
    service: str
    status: Status
    state: str
    uptime_s: float
    pid: int
    memory_rss: int
    cpu_percent: float
    checks: dict[str, Check]


class BaseService:
    name: ClassVar[str] = "base"
    # Services with durable events or tables of their own set this; it opens data/<name>.db.
    uses_database: ClassVar[bool] = False
    database_synchronous: ClassVar[Literal["NORMAL", "FULL"]] = "NORMAL"
    start_timeout_s: ClassVar[float] = 30.0

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        bus: EventBus | None = None,
        peer_uid: PeerUid = protocol.peer_uid,
        simulation: Simulation | None = None,
    ) -> None:
        """``simulation`` (``services.base.simulation``; the runner passes one when the environment
        asks for it) brings the clock, the account of work and of calls out, and methods of its own."""
        if simulation is not None and clock is not None:
            raise ValueError("a simulation brings its own clock")
        self.settings = settings
        self.home = settings.home
        self.clock: Clock = simulation.clock if simulation is not None else clock or SystemClock()
        # The work this service does for its clock's timers (see spawn's on_clock, and Work).
        self.timer_work: Work = simulation.work if simulation is not None else Work(self.clock)
        self._on_call = simulation.count_call if simulation is not None else None
        self.stats = Metrics()
        self.state = ServiceState.CREATED
        self.db: Database | None = None
        self._bus = bus
        self._tasks: set[asyncio.Task[Any]] = set()
        # The latest state-event publish. Kept apart from _tasks: stopping cancels those but
        # waits for this one, and each publish waits for the one before, so events stay in order.
        self._state_event: asyncio.Task[None] | None = None
        self._shutdown_requested: asyncio.Event | None = None
        self._started_monotonic = time.monotonic()
        self._process = psutil.Process(os.getpid())
        self.rpc = RpcServer(
            MethodTable.from_object(self),
            self.home.socket_path(self.name),
            config=settings.rpc,
            metrics=self.stats,
            peer_uid=peer_uid,
            label={"synthetic": True} if self.home.synthetic else None,
        )
        if simulation is not None:
            simulation.install(self)

    @property
    def bus(self) -> EventBus:
        if self._bus is None:
            raise RuntimeError(f"{self.name}: the event bus exists only after start()")
        return self._bus

    # -- lifecycle (owned by the base) ----------------------------------------------------

    async def start(self) -> None:
        self._set_state(ServiceState.STARTING)
        self._shutdown_requested = asyncio.Event()
        try:
            await asyncio.wait_for(self._start_phases(), self.start_timeout_s)
        except TimeoutError:
            await self._fail_start(f"start-up took longer than {self.start_timeout_s:g}s")
            raise OperationalError(
                f"{self.name}: start-up took longer than {self.start_timeout_s:g}s"
            ) from None
        except BaseException as exc:
            await self._fail_start(str(exc) or type(exc).__name__)
            raise
        self._set_state(ServiceState.RUNNING)

    async def _start_phases(self) -> None:
        self.home.create()
        if self.uses_database:
            log.info("opening database %s", self.home.database(self.name))
            self.db = open_service_database(self.home, self.name, synchronous=self.database_synchronous)
            self.db.on_failure = self._storage_failed
        if self._bus is None:
            self._bus = EventBus(
                redis_url(self.settings),
                source=self.name,
                clock=self.clock,
                redis_config=self.settings.redis,
                config=self.settings.events,
                outbox_db=self.db,
                metrics=self.stats,
                synthetic=self.home.synthetic,
            )
        log.info("starting service-specific parts")
        await self._start()
        # The event bus never blocks start-up: without Redis the service runs degraded.
        await self._bus.start()
        log.info("listening on %s", self.rpc.socket_path)
        await self.rpc.start()

    async def _fail_start(self, reason: str) -> None:
        log.error("start-up failed: %s", reason)
        self._set_state(ServiceState.FAILED, reason=reason)
        await self._release()

    async def stop(self) -> None:
        if self.state is not ServiceState.RUNNING:
            return
        self._set_state(ServiceState.STOPPING)
        drain = self.settings.rpc.drain_timeout_s
        try:
            await self.rpc.close(drain)
            await asyncio.wait_for(self._stop(), drain)
        except Exception as exc:
            log.exception("stop failed")
            self._set_state(ServiceState.FAILED, reason=str(exc))
            await self._release()
            return
        self._set_state(ServiceState.STOPPED)
        await self._release()

    async def _release(self) -> None:
        await self.rpc.close(0)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=self.settings.rpc.drain_timeout_s)
        if self._state_event is not None:  # publish() never raises; it gives up when Redis is away
            await asyncio.wait([self._state_event], timeout=self.settings.redis.connect_timeout_s)
        if self._bus is not None:
            await self._bus.close()
        if self.db is not None:
            self.db.close()
            self.db = None

    async def _start(self) -> None:
        """Open what the service needs (clients, caches, subscriptions). Override."""

    async def _db(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work(conn)`` on the service's database (``uses_database``), off the event loop."""
        if self.db is None:
            raise RuntimeError(f"{self.name}: no database open (uses_database, after start)")
        return await self.db.run(work)

    def peer(self, service: str, *, timeout: float, connect_attempts: int | None = None) -> RpcClient:
        """A client for another service of this home. A call to a peer that is restarting tries
        to connect ``connect_attempts`` (default ``rpc.connect_attempts``) times, backing off,
        before it fails."""
        if connect_attempts is None:
            connect_attempts = self.settings.rpc.connect_attempts
        return RpcClient(
            self.home.socket_path(service),
            timeout=timeout,
            connect_attempts=connect_attempts,
            on_call=self._on_call,
        )

    async def call_service(self, service: str, method: str, **params: Any) -> Any:
        """Call ``method`` of another service of this home with named parameters, as the design
        document does: ``await svc.call_service("prediction", "generate_predictions",
        symbols=["CBA.AX"])``. Over the real client: it retries connecting to a restarting peer
        and resends only idempotent calls."""
        async with self.peer(service.replace("-", "_"), timeout=self.settings.rpc.call_timeout_s) as client:
            return await client.call(method, params or None)

    async def _stop(self) -> None:
        """Flush and close what ``_start`` opened. Override."""

    def request_shutdown(self, reason: str = "requested") -> None:
        """Ask the service to stop; safe to call from a signal handler."""
        log.info("shutdown requested: %s", reason)
        if self._shutdown_requested is not None:
            self._shutdown_requested.set()

    async def wait_for_shutdown(self) -> None:
        assert self._shutdown_requested is not None, "start() first"
        await self._shutdown_requested.wait()

    def spawn(
        self, coroutine: Coroutine[Any, Any, Any], *, name: str, on_clock: bool = False
    ) -> asyncio.Task[Any]:
        """Run a background task that is tracked, named, cancelled at stop, and logged if it fails.

        ``on_clock``: the task is work for the clock's timers (a loop that works, then sleeps on the
        clock): ``timer_work`` counts it from now, so what a process does as it starts (a restarted
        one included) is waited for like what a timer starts."""
        task = asyncio.create_task(coroutine, name=f"{self.name}:{name}")
        if on_clock:
            self.timer_work.track(task)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.stats.incr("tasks.failed")
            log.error("task %s failed", task.get_name(), exc_info=exc)

    def _storage_failed(self, failure: str) -> None:
        """The database file became unusable: say so in the log and as an alert (once)."""
        log.error("database failing: %s", failure)
        self.stats.incr("database.failures")
        message = f"{self.name}: its database is failing: {failure}"
        self.spawn(self.bus.publish(EventType.STORAGE_ALERT, {"service": self.name, "message": message}),
                   name="storage-alert")  # fmt: skip

    def _set_state(self, new: ServiceState, *, reason: str | None = None) -> None:
        old = self.state
        if new not in _TRANSITIONS[old]:
            raise RuntimeError(f"{self.name}: no transition from {old} to {new}")
        self.state = new
        log.info(
            "state %s -> %s", old, new, extra={"state": str(new), "previous": str(old), "reason": reason}
        )
        if self._bus is not None and self._bus.connected:
            self._state_event = asyncio.create_task(
                self._publish_state(self._state_event, old, new, reason), name=f"{self.name}:state"
            )

    async def _publish_state(
        self, before: asyncio.Task[None] | None, old: ServiceState, new: ServiceState, reason: str | None
    ) -> None:
        if before is not None:
            await asyncio.wait([before])
        await self.bus.publish(
            EventType.SERVICE_STATE,
            {
                "service": self.name,
                "state": str(new),
                "previous": str(old),
                "reason": reason,
                "pid": os.getpid(),
            },
        )

    # -- health ---------------------------------------------------------------------------

    def health_checks(self) -> dict[str, Check]:
        """Named checks; subclasses add theirs to ``super().health_checks()``."""
        checks: dict[str, Check] = {}
        if self._bus is not None:
            bus = self._bus
            checks["redis"] = (
                {"status": "ok", "detail": "connected"}
                if bus.connected
                else {"status": "degraded", "detail": f"unreachable: {bus.last_error or 'not connected yet'}"}
            )
        checks["state"] = {
            "status": "ok" if self.state is ServiceState.RUNNING else "failing",
            "detail": str(self.state),
        }
        if self.db is not None:
            failure = self.db.failure
            checks["database"] = (
                {"status": "failing", "detail": failure[:500]}
                if failure
                else {"status": "ok", "detail": str(self.db.path)}
            )
        return checks

    def health_figures(self) -> dict[str, Any]:
        """Service-specific figures for ``health`` (e.g. cache_size). Override."""
        return {}

    # -- built-in RPC methods -------------------------------------------------------------

    @rpc_method(idempotent=True)
    def health(self) -> dict[str, Any]:
        """Status (ok, degraded or failing), uptime, process figures and named checks. From memory only."""
        checks = self.health_checks()
        statuses = {check["status"] for check in checks.values()}
        status: Status = (
            "failing" if "failing" in statuses else "degraded" if "degraded" in statuses else "ok"
        )
        memory = self._process.memory_info()
        report: dict[str, Any] = {
            "service": self.name,
            "status": status,
            "state": str(self.state),
            "uptime_s": round(time.monotonic() - self._started_monotonic, 3),
            "pid": os.getpid(),
            "memory_rss": memory.rss,
            "cpu_percent": self._process.cpu_percent(None),
            "checks": checks,
            "time": utc_iso(self.clock.now()),
        }
        report.update(self.health_figures())
        return report

    @rpc_method(idempotent=True)
    def metrics(self) -> dict[str, Any]:
        """Per-method calls, errors and latency p50/p99; events in and out; counters; RSS and CPU."""
        counters = dict(self.stats.counters)
        cpu = self._process.cpu_times()
        return {
            "service": self.name,
            "methods": self.stats.methods(),
            "events": {
                "published": counters.pop("events.published", 0),
                "received": counters.pop("events.received", 0),
                "consumed": counters.pop("events.consumed", 0),
                "dropped": counters.pop("events.dropped", 0),
                "durable_sent": counters.pop("events.durable_sent", 0),
            },
            "counters": counters,
            "rpc": {"connections": self.rpc.connection_count, "in_flight": self.rpc.in_flight},
            "memory_rss": self._process.memory_info().rss,
            "cpu_seconds": round(cpu.user + cpu.system, 3),
            "cpu_percent": self._process.cpu_percent(None),
        }

    @rpc_method
    def shutdown(self) -> dict[str, Any]:
        """Stop the service gracefully after answering: calls in flight get a bounded drain."""
        self.request_shutdown("shutdown RPC")
        return {"service": self.name, "stopping": True}

    @rpc_method(name="rpc.discover", idempotent=True)
    def discover(self) -> dict[str, Any]:
        """The callable methods with their parameters, types and documentation."""
        return {"service": self.name, "methods": [spec.describe() for spec in self.rpc.methods]}
