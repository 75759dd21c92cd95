"""The scheduler service: calls service methods at ASX-aware times, in dependency order, with retries.

One loop sleeps on the injected clock until the earliest planned fire time, starts the runs that
are due, and plans each task's next fire time (persisted, so a restart knows what it missed).
Runs due at the same instant start in dependency order, and a run whose dependency is still
running waits for it, so "refresh prices, then predict" holds even when both fire at 10:15.

A fire time found late (the scheduler was down, or the machine slept) runs once if it is within
the task's ``misfire_grace_s``; every other missed fire time is recorded as ``missed``.
"""

from __future__ import annotations

import asyncio
import graphlib
import logging
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from itertools import takewhile
from typing import Any

from services.asx.calendar import SYDNEY, AsxCalendar
from services.asx.market_hours import market_status, phase_at
from services.base.clock import utc_iso
from services.base.config import Settings
from services.base.db import migrate
from services.base.errors import (
    InvalidParams,
    MethodNotFound,
    NotFound,
    Rejected,
    RequestError,
    TradingError,
)
from services.base.events import EventType
from services.base.logs import trace_var
from services.base.rpc import rpc_method
from services.base.rpc.client import RpcClient
from services.base.service import BaseService, Check
from services.scheduler.config import SchedulerConfig, check_task_set
from services.scheduler.history import RAN, RunStore, RunSummary, consecutive_failures
from services.scheduler.schema import MIGRATIONS
from services.scheduler.tasks import Task, parse_task

log = logging.getLogger("services.scheduler")

# A task failing this many times in a row makes health say degraded.
FAILING_AFTER = 3
MAX_HISTORY_LIMIT = 1000
STOPPED_DURING_RUN = "the scheduler stopped during this run"


@dataclass(slots=True)
class Entry:
    """A scheduled task and what the scheduler knows about it now."""

    task: Task
    origin: str  # default, config or rpc
    next_run: datetime | None = None
    last_run: RunSummary | None = None  # the newest run of any outcome
    last_ran: RunSummary | None = None  # the newest run that tried (succeeded, failed, blocked, ...)
    consecutive_failures: int = 0
    running: asyncio.Task[RunSummary] | None = None

    @property
    def is_running(self) -> bool:
        return self.running is not None and not self.running.done()


class SchedulerService(BaseService):
    name = "scheduler"
    uses_database = True

    def __init__(self, settings: Settings, *, calendar: AsxCalendar | None = None, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self.config = settings.section("scheduler", SchedulerConfig)
        self.calendar = calendar or AsxCalendar()
        self.entries: dict[str, Entry] = {}
        self._clients: dict[str, RpcClient] = {}
        self._runs: set[asyncio.Task[RunSummary]] = set()  # every run in flight, unscheduled tasks' too
        self._changed = asyncio.Event()
        # What the loop and the runs are waiting for, so ``idle`` can tell a replay when to step.
        self._loop_waiting = False
        self._loop_wakes_at: datetime | None = None
        self._backoffs: list[datetime] = []  # wake times of runs sleeping between attempts
        self._waiting_on: dict[str, Entry] = {}  # run's task id -> the dependency it waits for
        self._pruned_on: date | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def _start(self) -> None:
        assert self.db is not None
        await self.db.run(lambda conn: migrate(conn, MIGRATIONS))
        self.store = RunStore(self.db)
        now = self.clock.now()
        interrupted = await self.store.interrupt_running(now, STOPPED_DURING_RUN)
        if interrupted:
            log.warning("%d run(s) were cut short when the scheduler last stopped", interrupted)
        planned = await self._load_tasks(now)
        recent = await self.store.recent(list(self.entries))
        for task_id, entry in self.entries.items():
            runs = recent.get(task_id, [])
            entry.last_run = runs[0] if runs else None
            entry.last_ran = next((run for run in runs if run.outcome in RAN), None)
            entry.consecutive_failures = consecutive_failures(runs)
        self.spawn(self._run_loop(planned), name="loop")

    async def _load_tasks(self, now: datetime) -> dict[str, datetime]:
        """Build the task set from config and the stored changes; returns the stored next runs."""
        rows = await self.store.load_tasks()
        configured = self.config.configured_tasks()
        for task_id, task in configured.items():
            row = rows.get(task_id)
            if row is not None and (row.removed or row.origin == "rpc"):
                continue  # a change made over RPC outlives the config until it is changed again
            origin = "config" if task_id in self.config.tasks else "default"
            self.entries[task_id] = Entry(task, origin)
            await self.store.save_task(task.to_wire(), origin, now)
        for row in rows.values():
            if row.origin == "rpc" and not row.removed:
                try:
                    self.entries[row.id] = Entry(
                        parse_task(row.definition, where=f"stored task {row.id}"), "rpc"
                    )
                except InvalidParams as exc:
                    log.error(
                        "stored task %s is no longer valid (%s); it is not scheduled", row.id, exc.message
                    )
        gone = [r.id for r in rows.values() if r.origin != "rpc" and not r.removed and r.id not in configured]
        await self.store.forget_tasks(gone)
        try:
            check_task_set(entry.task for entry in self.entries.values())
        except InvalidParams as exc:  # the dependent's runs will say so each time they are blocked
            log.error("task set: %s", exc.message)
        return {
            row.id: datetime.fromisoformat(row.next_run)
            for row in rows.values()
            if row.next_run is not None and row.id in self.entries
        }

    async def _stop(self) -> None:
        running = list(self._runs)
        for run in running:
            run.cancel()
        if running:
            await asyncio.wait(running)
        for client in self._clients.values():
            await client.close()

    # -- the loop -------------------------------------------------------------------------

    async def _run_loop(self, planned: dict[str, datetime]) -> None:
        await self._catch_up(planned)
        while True:
            self._changed.clear()
            now = self.clock.now()
            due = [e for e in self.entries.values() if e.next_run is not None and e.next_run <= now]
            for entry in self._in_dependency_order(due):
                if self.entries.get(entry.task.id) is entry:  # not unscheduled meanwhile
                    await self._fire_due(entry, now, trigger="schedule")
            await self._prune_daily(now)
            upcoming = [e.next_run for e in self.entries.values() if e.next_run is not None]
            await self._wait(min(upcoming) if upcoming else None)

    async def _catch_up(self, planned: dict[str, datetime]) -> None:
        """Fire times that passed while the scheduler was down: one run if recent enough, else missed."""
        now = self.clock.now()
        for entry in self._in_dependency_order(list(self.entries.values())):
            since = planned.get(entry.task.id)
            if since is not None and since <= now:
                entry.next_run = since
                await self._fire_due(entry, now, trigger="misfire")
            else:
                await self._plan(entry, now)

    async def _wait(self, until: datetime | None) -> None:
        """Sleep on the clock until ``until``, or until the task set changes."""
        waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._changed.wait())]
        if until is not None:
            waiters.append(asyncio.ensure_future(self.clock.sleep_until(until)))
        await asyncio.sleep(0)  # let the sleeper reach the clock, so a simulated clock sees its timer
        self._loop_waiting, self._loop_wakes_at = True, until
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._loop_waiting = False
            for waiter in waiters:
                waiter.cancel()

    @property
    def idle(self) -> bool:
        """Everything is waiting for a later time on the clock: what a replay waits for before stepping."""
        now = self.clock.now()
        running = sum(1 for run in self._runs if not run.done())
        return (
            self._loop_waiting
            and not self._changed.is_set()
            and (self._loop_wakes_at is None or self._loop_wakes_at > now)
            and all(wake > now for wake in self._backoffs)
            and running == len(self._backoffs) + sum(1 for e in self._waiting_on.values() if e.is_running)
        )

    async def _fire_due(self, entry: Entry, now: datetime, *, trigger: str) -> None:
        """Handle the fire times of ``entry`` up to ``now``: run the latest if on time, record misses."""
        assert entry.next_run is not None
        task = entry.task
        due = [entry.next_run, *takewhile(lambda t: t <= now, task.fire_times(self.calendar, entry.next_run))]
        latest = due[-1]
        on_time = (now - latest).total_seconds() <= task.misfire_grace_s
        missed = due[:-1] if on_time else due
        if missed:
            await self._record_missed(entry, missed, now)
        await self._plan(entry, now)
        if on_time:
            await self._launch(entry, trigger if latest < now else "schedule", latest)

    async def _record_missed(self, entry: Entry, missed: list[datetime], now: datetime) -> None:
        kept = missed[-self.config.max_missed_records :]
        grace = entry.task.misfire_grace_s
        reason = f"not run: the scheduler was down or asleep at this time and for {grace:g}s after it"
        log.warning(
            "task %s missed %d fire time(s), %s to %s",
            entry.task.id, len(missed), utc_iso(missed[0]), utc_iso(missed[-1]),
        )  # fmt: skip
        runs = await self.store.add_missed(entry.task.id, kept, now, reason)
        entry.last_run = runs[-1]
        for run in runs:
            await self._publish_outcome(entry, run)

    async def _plan(self, entry: Entry, now: datetime) -> None:
        entry.next_run = entry.task.next_fire(self.calendar, now)
        await self.store.set_next_run(entry.task.id, entry.next_run)

    async def _prune_daily(self, now: datetime) -> None:
        today = now.astimezone(SYDNEY).date()
        if self._pruned_on == today:
            return
        self._pruned_on = today
        dropped = await self.store.prune(now - timedelta(days=self.config.history_days))
        if dropped:
            log.info("dropped %d runs older than %d days from the history", dropped, self.config.history_days)

    def _in_dependency_order(self, entries: list[Entry]) -> list[Entry]:
        by_id = {entry.task.id: entry for entry in entries}
        graph = {task_id: [d for d in e.task.depends_on if d in by_id] for task_id, e in by_id.items()}
        try:
            order = list(graphlib.TopologicalSorter(graph).static_order())
        except graphlib.CycleError:
            order = list(by_id)
        return [by_id[task_id] for task_id in order]

    # -- runs -----------------------------------------------------------------------------

    async def _launch(
        self, entry: Entry, trigger: str, scheduled_for: datetime | None, *, force: bool = False
    ) -> asyncio.Task[RunSummary] | None:
        """Record a run and start it; a run still going from before makes this one ``skipped``."""
        now = self.clock.now()
        task = entry.task
        if entry.is_running:
            assert entry.running is not None
            reason = "the previous run of this task was still going"
            skipped = await self.store.add_run(
                task.id, trigger=trigger, scheduled_for=scheduled_for, started_at=now,
                outcome="skipped", error=reason,
            )  # fmt: skip
            entry.last_run = skipped
            await self._publish_outcome(entry, skipped)
            return None
        run = await self.store.add_run(task.id, trigger=trigger, scheduled_for=scheduled_for, started_at=now)
        entry.last_run = run
        entry.running = asyncio.create_task(self._execute(entry, task, run, force), name=f"run:{task.id}")
        self._runs.add(entry.running)
        entry.running.add_done_callback(self._runs.discard)
        return entry.running

    async def _execute(self, entry: Entry, task: Task, run: RunSummary, force: bool) -> RunSummary:
        trace_var.set(f"task-{task.id}-{run.id}")
        try:
            blocked = None if force else await self._unmet_dependency(task)
            outcome: str
            error: str | None
            if blocked is not None:
                outcome, error, result = "blocked", blocked, None
            else:
                outcome, error, result = await self._attempts(task, run)
        except asyncio.CancelledError:
            finished = await self.store.interrupt_run(run, self.clock.now(), STOPPED_DURING_RUN)
            entry.last_run = entry.last_ran = finished
            raise
        except Exception as exc:  # a fault of the scheduler's own: the run must not stay "running"
            log.exception("task %s: run %d failed inside the scheduler", task.id, run.id)
            outcome, error, result = "failed", f"internal error in the scheduler: {exc}", None
        finished = await self.store.finish_run(run, self.clock.now(), outcome, error, result)
        entry.last_run = entry.last_ran = finished
        entry.consecutive_failures = 0 if outcome == "succeeded" else entry.consecutive_failures + 1
        self.stats.incr(f"runs.{outcome}")
        log.log(
            logging.INFO if outcome == "succeeded" else logging.WARNING,
            "task %s %s%s", task.id, outcome, f": {error}" if error else "",
            extra={"task": task.id, "run": run.id, "outcome": outcome},
        )  # fmt: skip
        await self._publish_outcome(entry, finished)
        return finished

    async def _unmet_dependency(self, task: Task) -> str | None:
        """Why ``task`` may not run now, or None: each dependency's latest run today succeeded."""
        for dependency in task.depends_on:
            other = self.entries.get(dependency)
            if other is None:
                return f"depends on {dependency!r}, which is not scheduled"
            if other.is_running:  # due at the same time: wait for it, retries included
                assert other.running is not None
                self._waiting_on[task.id] = other
                try:
                    await asyncio.wait([other.running])
                finally:
                    del self._waiting_on[task.id]
            today = self.clock.now().astimezone(SYDNEY).date()
            last = other.last_ran
            if last is None or datetime.fromisoformat(last.started_at).astimezone(SYDNEY).date() != today:
                return f"depends on {dependency!r}, which has not run today"
            if last.outcome != "succeeded":
                detail = f": {last.error}" if last.error else ""
                return f"depends on {dependency!r}, whose last run today {last.outcome}{detail}"
        return None

    async def _attempts(self, task: Task, run: RunSummary) -> tuple[str, str | None, Any]:
        """Call the task's method, retrying with back-off; (outcome, error, result).

        The last attempt is left open: ``finish_run`` closes it with the run, in one transaction.
        """
        attempt = 0
        while True:
            attempt += 1
            await self.store.start_attempt(run.id, attempt, self.clock.now())
            try:
                result = await self._call(task)
            except TradingError as exc:
                error = _describe(task, exc)
                if isinstance(exc, RequestError) or attempt > task.retries:
                    return "failed", error, None
                await self.store.fail_attempt(run.id, attempt, self.clock.now(), error)
                delay = task.backoff(attempt)
                log.info("task %s attempt %d failed (%s); retrying in %gs", task.id, attempt, error, delay)
                wake = self.clock.now() + timedelta(seconds=delay)
                self._backoffs.append(wake)
                try:
                    await self.clock.sleep_until(wake)
                finally:
                    self._backoffs.remove(wake)
                continue
            return "succeeded", None, result

    async def _call(self, task: Task) -> Any:
        client = self._clients.get(task.service)
        if client is None:
            # One connection attempt per call: the task's own retries do the waiting.
            client = RpcClient(
                self.home.socket_path(task.service), timeout=task.timeout_s, connect_attempts=1
            )
            self._clients[task.service] = client
        return await client.call(
            task.method, dict(task.params), timeout=task.timeout_s, idempotent=False, trace=trace_var.get()
        )

    async def _publish_outcome(self, entry: Entry, run: RunSummary) -> None:
        task = entry.task
        data = {
            "task_id": task.id,
            "service": task.service,
            "method": task.method,
            **run.to_wire(),
            "consecutive_failures": entry.consecutive_failures,
        }
        kind = EventType.TASK_COMPLETED if run.outcome == "succeeded" else EventType.TASK_FAILED
        await self.bus.publish(kind, data, trace=trace_var.get())

    # -- RPC ------------------------------------------------------------------------------

    @rpc_method(idempotent=True)
    def get_market_status(self) -> dict[str, Any]:
        """The ASX phase now (pre_open, open, closing_auction, post_market, closed), why, next open/close."""
        return market_status(self.calendar, self.clock.now())

    @rpc_method(idempotent=True)
    def list_tasks(self) -> list[dict[str, Any]]:
        """Every task with its next run (Sydney and UTC), last run, last status and failure streak."""
        entries = sorted(
            self.entries.values(), key=lambda e: (e.next_run is None, e.next_run or 0, e.task.id)
        )
        return [self._describe(entry) for entry in entries]

    @rpc_method
    async def schedule_task(self, config: dict[str, Any]) -> dict[str, Any]:
        """Add a task, or replace the one with the same id; it is stored and outlives restarts."""
        task = parse_task(config, where="config")
        missing = [task_id for task_id in task.depends_on if task_id not in self.entries]
        if missing:
            raise InvalidParams(
                f"depends on {missing[0]!r}, which is not scheduled", field="config.depends_on"
            )
        others = [e.task for task_id, e in self.entries.items() if task_id != task.id]
        check_task_set([*others, task], where="config")
        now = self.clock.now()
        await self.store.save_task(task.to_wire(), "rpc", now)
        previous = self.entries.get(task.id)
        entry = replace(previous, task=task, origin="rpc") if previous is not None else Entry(task, "rpc")
        self.entries[task.id] = entry
        await self._plan(entry, now)
        self._changed.set()
        log.info("scheduled task %s: %s.%s, %s", task.id, task.service, task.method, task.schedule.describe())
        return self._describe(entry)

    @rpc_method
    async def unschedule_task(self, task_id: str) -> dict[str, Any]:
        """Remove a task (a run in progress finishes; the history stays); refused while others need it."""
        entry = self._entry(task_id)
        dependents = sorted(e.task.id for e in self.entries.values() if task_id in e.task.depends_on)
        if dependents:
            raise Rejected(
                f"{', '.join(dependents)} depend(s) on {task_id!r}; unschedule or change them first",
                reason="has_dependents",
                dependents=dependents,
            )
        await self.store.mark_removed(task_id, self.clock.now())
        del self.entries[task_id]
        self._changed.set()
        log.info("unscheduled task %s", task_id)
        return {"task_id": task_id, "removed": True, "origin": entry.origin}

    @rpc_method
    async def execute_task(self, task_id: str, force: bool = False, wait: bool = True) -> dict[str, Any]:
        """Run a task now, respecting its dependencies and phase unless ``force``; ``wait``: until done."""
        entry = self._entry(task_id)
        now = self.clock.now()
        if entry.is_running:
            raise Rejected(f"task {task_id!r} is already running", reason="already_running")
        if not force and not entry.task.allowed_in(self.calendar, now):
            phase = phase_at(self.calendar, now).phase
            allowed = ", ".join(sorted(entry.task.phases))
            raise Rejected(
                f"task {task_id!r} runs only in {allowed}; the market is {phase} (force to run anyway)",
                reason="phase",
                phase=str(phase),
            )
        running = await self._launch(entry, "manual", None, force=force)
        assert running is not None
        if not wait:
            assert entry.last_run is not None
            return {"task_id": task_id, **entry.last_run.to_wire()}
        finished = await asyncio.shield(running)  # a caller that gives up leaves the run going
        return {"task_id": task_id, **finished.to_wire()}

    @rpc_method(idempotent=True)
    async def get_task_history(self, task_id: str, limit: int = 20) -> dict[str, Any]:
        """Runs of a task, newest first, each with its attempts (start, end, outcome, error)."""
        if not 1 <= limit <= MAX_HISTORY_LIMIT:
            raise InvalidParams(f"limit must be from 1 to {MAX_HISTORY_LIMIT}", field="limit")
        if task_id not in self.entries and not await self.store.has_runs(task_id):
            raise NotFound(f"no task {task_id!r} and no history for it", task_id=task_id)
        return {"task_id": task_id, "runs": await self.store.history(task_id, limit)}

    def _entry(self, task_id: str) -> Entry:
        entry = self.entries.get(task_id)
        if entry is None:
            raise NotFound(f"no task {task_id!r}; list_tasks shows those scheduled", task_id=task_id)
        return entry

    def _describe(self, entry: Entry) -> dict[str, Any]:
        next_run = entry.next_run
        return {
            **entry.task.to_wire(),
            "schedule_text": entry.task.schedule.describe(),
            "origin": entry.origin,
            "next_run_local": next_run.astimezone(SYDNEY).isoformat() if next_run else None,
            "next_run_utc": utc_iso(next_run) if next_run else None,
            "last_run": entry.last_run.to_wire() if entry.last_run else None,
            "last_status": entry.last_run.outcome if entry.last_run else None,
            "consecutive_failures": entry.consecutive_failures,
            "running": entry.is_running,
        }

    # -- health ---------------------------------------------------------------------------

    def health_checks(self) -> dict[str, Check]:
        checks = super().health_checks()
        failing = sorted(e.task.id for e in self.entries.values() if e.consecutive_failures >= FAILING_AFTER)
        checks["tasks"] = (
            {"status": "degraded", "detail": f"failing {FAILING_AFTER}+ times in a row: {', '.join(failing)}"}
            if failing
            else {"status": "ok", "detail": f"{len(self.entries)} tasks scheduled"}
        )
        return checks

    def health_figures(self) -> dict[str, Any]:
        upcoming = [e for e in self.entries.values() if e.next_run is not None]
        first = min(upcoming, key=lambda e: e.next_run or 0) if upcoming else None
        return {
            "task_count": len(self.entries),
            "running": sorted(e.task.id for e in self.entries.values() if e.is_running),
            "next_task": first.task.id if first else None,
            "next_run_utc": utc_iso(first.next_run) if first and first.next_run else None,
            "idle": self.idle,
            "market_phase": str(phase_at(self.calendar, self.clock.now()).phase),
        }


def _describe(task: Task, exc: TradingError) -> str:
    if isinstance(exc, MethodNotFound):
        return f"{task.service}.{task.method} does not exist: {exc.message}"
    return exc.message
