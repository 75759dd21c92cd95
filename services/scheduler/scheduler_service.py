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
from dataclasses import dataclass
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
from services.base.service import BaseService, Check, ServiceState
from services.scheduler.config import SchedulerConfig, check_task_set
from services.scheduler.history import FAILURES, RAN, NewRun, RunStore, RunSummary, consecutive_failures
from services.scheduler.schema import MIGRATIONS
from services.scheduler.tasks import Task, parse_task

log = logging.getLogger("services.scheduler")

# A task failing this many times in a row makes health say degraded.
FAILING_AFTER = 3
MAX_HISTORY_LIMIT = 1000
STOPPED_DURING_RUN = "the scheduler stopped during this run"
SKIPPED = "the previous run of this task was still going"


@dataclass(slots=True)
class Entry:
    """A scheduled task and what the scheduler knows about it now."""

    task: Task
    origin: str  # default, config or rpc
    next_run: datetime | None = None
    last_run: RunSummary | None = None  # the newest run of any outcome
    last_ran: RunSummary | None = None  # the newest run that tried (succeeded, failed, blocked, ...)
    consecutive_failures: int = 0


class SchedulerService(BaseService):
    name = "scheduler"
    uses_database = True

    def __init__(self, settings: Settings, *, calendar: AsxCalendar | None = None, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self.config = settings.section("scheduler", SchedulerConfig)
        self.calendar = calendar or AsxCalendar()
        self.entries: dict[str, Entry] = {}
        self._clients: dict[str, RpcClient] = {}
        # Task id -> a future that completes when its run ends. Taken before the first await of a
        # launch, so one task never has two runs at once, whatever interleaves. A claim is work
        # for the clock's timers until its run ends (``self.timer_work``), as is the loop.
        self._claims: dict[str, asyncio.Future[None]] = {}
        self._runs: set[asyncio.Task[RunSummary]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._pruned_on: date | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def _start(self) -> None:
        assert self.db is not None
        await self.db.run(lambda conn: migrate(conn, MIGRATIONS))
        self.store = RunStore(self.db)
        now = self.clock.now()
        interrupted = await self.store.interrupt_running(now, STOPPED_DURING_RUN)
        if interrupted:
            log.warning("%d run(s) were cut short when the scheduler last stopped", len(interrupted))
        planned = await self._load_tasks(now)
        recent = await self.store.recent(list(self.entries))
        for task_id, entry in self.entries.items():
            runs = recent.get(task_id, [])
            entry.last_run = runs[0] if runs else None
            entry.last_ran = next((run for run in runs if run.outcome in RAN), None)
            entry.consecutive_failures = consecutive_failures(runs)
        self._loop_task = self.spawn(self._run_loop(planned, interrupted), name="loop", on_clock=True)

    async def _load_tasks(self, now: datetime) -> dict[str, datetime]:
        """Build the task set from config and the stored changes; returns the stored next runs."""
        rows = await self.store.load_tasks()
        configured = self.config.configured_tasks()
        for task_id, task in configured.items():
            row = rows.get(task_id)
            if row is not None and (row.removed or row.origin == "rpc"):
                continue  # a change made over RPC outlives the config until it is changed again
            self.entries[task_id] = Entry(task, "config" if task_id in self.config.tasks else "default")
        await self.store.save_tasks([(e.task.to_wire(), e.origin) for e in self.entries.values()], now)
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
        self._drop_cycles()
        planned = {}
        for row in rows.values():
            entry = self.entries.get(row.id)
            if entry is None or row.next_run is None:
                continue
            since = datetime.fromisoformat(row.next_run)
            # A time the task's schedule no longer has (its definition changed) is not a misfire.
            if entry.task.next_fire(self.calendar, since - timedelta(microseconds=1)) == since:
                planned[row.id] = since
        return planned

    def _drop_cycles(self) -> None:
        """Leave out tasks whose dependencies loop back to them (stored RPC tasks plus config can)."""
        while True:
            graph = {i: [d for d in e.task.depends_on if d in self.entries] for i, e in self.entries.items()}
            try:
                graphlib.TopologicalSorter(graph).prepare()
                return
            except graphlib.CycleError as exc:
                cycle = exc.args[1]
                log.error(
                    "tasks %s depend on each other in a cycle; they are not scheduled", " -> ".join(cycle)
                )
                for task_id in cycle:
                    self.entries.pop(task_id, None)

    async def _stop(self) -> None:
        if self._loop_task is not None:  # first, so no new run starts
            self._loop_task.cancel()
            await asyncio.wait([self._loop_task])
        running = list(self._runs)
        for run in running:
            run.cancel()
        if running:
            await asyncio.wait(running)
        for client in self._clients.values():
            await client.close()

    # -- the loop -------------------------------------------------------------------------

    async def _run_loop(
        self, planned: dict[str, datetime], interrupted: list[tuple[str, RunSummary]]
    ) -> None:
        # Catch up once start-up is over, so the events it publishes find the bus connected.
        while self.state is ServiceState.STARTING:
            await asyncio.sleep(0.01)
        for task_id, run in interrupted:
            await self._publish_outcome(task_id, run)
        for entry in list(self.entries.values()):
            await self._resume(entry)
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

    async def _resume(self, entry: Entry) -> None:
        """Run again the task's latest run if the scheduler's last stop cut it short, while its
        fire time is within the task's misfire grace: tasks are idempotent, and without this a
        crash at 09:30 would lose that morning's predictions."""
        cut_short, task_id = entry.last_run, entry.task.id
        if cut_short is None or cut_short.outcome != "interrupted" or cut_short.scheduled_for is None:
            return
        now = self.clock.now()
        fired = datetime.fromisoformat(cut_short.scheduled_for)
        if (now - fired).total_seconds() > entry.task.misfire_grace_s:
            return
        claim = self._claim(task_id)
        if claim is None:
            return
        try:
            run = await self.store.start_run(task_id, trigger="resume", at=now, scheduled_for=fired)
        except BaseException:
            claim.set_result(None)
            raise
        log.warning("task %s: again its run of %s, cut short by the last stop", task_id, utc_iso(fired))
        entry.last_run = run
        self._start_run(entry.task, run, claim, force=False)

    async def _wait(self, until: datetime | None) -> None:
        """Sleep on the clock until ``until``, or until the task set changes."""
        loop_task = asyncio.current_task()
        assert loop_task is not None
        waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._changed.wait())]
        if until is not None:
            waiters.append(asyncio.ensure_future(self.clock.sleep_until(until)))
        await asyncio.sleep(0)  # let the sleeper reach the clock, so a simulated clock sees its timer
        try:
            with self.timer_work.resting(loop_task, until=until, wake=[self._changed]):
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    @property
    def idle(self) -> bool:
        """The loop and every run are waiting, for a later time on the clock or for another run."""
        return not self.timer_work.busy

    async def _fire_due(self, entry: Entry, now: datetime, *, trigger: str) -> None:
        """Handle the fire times of ``entry`` up to ``now``: run the latest if on time, record misses.

        The missed runs, the next planned time and the new run are written in one transaction, so
        a crash in between neither loses a fire time nor records one twice.
        """
        assert entry.next_run is not None
        task = entry.task
        due = [entry.next_run, *takewhile(lambda t: t <= now, task.fire_times(self.calendar, entry.next_run))]
        latest = due[-1]
        on_time = (now - latest).total_seconds() <= task.misfire_grace_s
        missed = (due[:-1] if on_time else due)[-self.config.max_missed_records :]
        next_run = task.next_fire(self.calendar, now)
        claim = self._claim(task.id) if on_time else None
        start = None
        if on_time:
            outcome, error = ("running", None) if claim is not None else ("skipped", SKIPPED)
            start = NewRun(trigger if latest < now else "schedule", latest, outcome, error)
        grace = task.misfire_grace_s
        reason = f"not run: the scheduler was down or asleep at this time and for {grace:g}s after it"
        try:
            missed_runs, run = await self.store.record_fire(
                task.id, missed=missed, missed_reason=reason, next_run=next_run, new_run=start, at=now
            )
        except BaseException:
            if claim is not None:
                claim.set_result(None)
            raise
        entry.next_run = next_run
        if missed_runs:
            log.warning(
                "task %s missed %d fire time(s), up to %s",
                task.id,
                len(due) - bool(on_time),
                utc_iso(missed[-1]),
            )
            entry.last_run = missed_runs[-1]
            for missed_run in missed_runs:
                await self._publish_outcome(task.id, missed_run)
        if run is None:
            return
        entry.last_run = run
        if claim is None:
            await self._publish_outcome(task.id, run)
        else:
            self._start_run(task, run, claim, force=False)

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
        order = graphlib.TopologicalSorter(graph).static_order()  # cycles were refused or dropped
        return [by_id[task_id] for task_id in order]

    # -- runs -----------------------------------------------------------------------------

    def _is_running(self, task_id: str) -> bool:
        claim = self._claims.get(task_id)
        return claim is not None and not claim.done()

    def _claim(self, task_id: str) -> asyncio.Future[None] | None:
        """Reserve ``task_id`` for one run; None when a run of it is already going."""
        if self._is_running(task_id):
            return None
        claim: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._claims[task_id] = claim
        self.timer_work.track(claim)

        def release(done: asyncio.Future[None]) -> None:
            if self._claims.get(task_id) is done:
                del self._claims[task_id]

        claim.add_done_callback(release)
        return claim

    def _start_run(
        self, task: Task, run: RunSummary, claim: asyncio.Future[None], *, force: bool
    ) -> asyncio.Task[RunSummary]:
        running = asyncio.create_task(self._execute(task, run, claim, force), name=f"run:{task.id}")
        self._runs.add(running)

        def finished(done: asyncio.Task[RunSummary]) -> None:
            self._runs.discard(done)
            if not claim.done():
                claim.set_result(None)

        running.add_done_callback(finished)
        return running

    async def _execute(
        self, task: Task, run: RunSummary, claim: asyncio.Future[None], force: bool
    ) -> RunSummary:
        trace_var.set(f"task-{task.id}-{run.id}")
        outcome: str
        error: str | None
        try:
            blocked = None if force else await self._unmet_dependency(task, claim)
            if blocked is not None:
                outcome, error, result = "blocked", blocked, None
            else:
                outcome, error, result = await self._attempts(task, run, claim)
        except asyncio.CancelledError:
            finished = await self.store.interrupt_run(run, self.clock.now(), STOPPED_DURING_RUN)
            self._remember(task.id, finished)
            await self._publish_outcome(task.id, finished)
            raise
        except Exception as exc:  # a fault of the scheduler's own: the run must not stay "running"
            log.exception("task %s: run %d failed inside the scheduler", task.id, run.id)
            outcome, error, result = "failed", f"internal error in the scheduler: {exc}", None
        finished = await self.store.finish_run(run, self.clock.now(), outcome, error, result)
        self._remember(task.id, finished)
        self.stats.incr(f"runs.{outcome}")
        log.log(
            logging.INFO if outcome == "succeeded" else logging.WARNING,
            "task %s %s%s", task.id, outcome, f": {error}" if error else "",
            extra={"task": task.id, "run": run.id, "outcome": outcome},
        )  # fmt: skip
        await self._publish_outcome(task.id, finished)
        return finished

    def _remember(self, task_id: str, run: RunSummary) -> None:
        """Record a finished run on the task as it is scheduled now (it may have been replaced)."""
        entry = self.entries.get(task_id)
        if entry is None:
            return
        entry.last_run = entry.last_ran = run
        if run.outcome == "succeeded":
            entry.consecutive_failures = 0
        elif run.outcome in FAILURES:
            entry.consecutive_failures += 1

    async def _unmet_dependency(self, task: Task, claim: asyncio.Future[None]) -> str | None:
        """Why ``task`` may not run now, or None: each dependency's latest run today succeeded."""
        for dependency in task.depends_on:
            other = self.entries.get(dependency)
            if other is None:
                return f"depends on {dependency!r}, which is not scheduled"
            theirs = self._claims.get(dependency)
            if theirs is not None and not theirs.done():  # due at the same time: wait, retries included
                with self.timer_work.resting(claim, wake=[theirs]):
                    await asyncio.wait([theirs])
            today = self.clock.now().astimezone(SYDNEY).date()
            last = other.last_ran
            if last is None or datetime.fromisoformat(last.started_at).astimezone(SYDNEY).date() != today:
                return f"depends on {dependency!r}, which has not run today"
            if last.outcome != "succeeded":
                detail = f": {last.error}" if last.error else ""
                return f"depends on {dependency!r}, whose last run today {last.outcome}{detail}"
        return None

    async def _attempts(
        self, task: Task, run: RunSummary, claim: asyncio.Future[None]
    ) -> tuple[str, str | None, Any]:
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
                error = _error_text(task, exc)
                if isinstance(exc, RequestError) or attempt > task.retries:
                    return "failed", error, None
                await self.store.fail_attempt(run.id, attempt, self.clock.now(), error)
                delay = task.backoff(attempt)
                log.info("task %s attempt %d failed (%s); retrying in %gs", task.id, attempt, error, delay)
                wake = self.clock.now() + timedelta(seconds=delay)
                with self.timer_work.resting(claim, until=wake):
                    await self.clock.sleep_until(wake)
                continue
            return "succeeded", None, result

    async def _call(self, task: Task) -> Any:
        client = self._clients.get(task.service)
        if client is None:
            # One connection attempt per call: the task's own retries do the waiting.
            client = self.peer(task.service, timeout=task.timeout_s, connect_attempts=1)
            self._clients[task.service] = client
        return await client.call(
            task.method, dict(task.params), timeout=task.timeout_s, idempotent=False, trace=trace_var.get()
        )

    async def _publish_outcome(self, task_id: str, run: RunSummary) -> None:
        entry = self.entries.get(task_id)
        data: dict[str, Any] = {"task_id": task_id, **run.to_wire()}
        if entry is not None:
            task = entry.task
            data.update(
                service=task.service, method=task.method, consecutive_failures=entry.consecutive_failures
            )
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
        await self.store.save_tasks([(task.to_wire(), "rpc")], now)
        entry = self.entries.get(task.id)
        if entry is None:
            entry = self.entries[task.id] = Entry(task, "rpc")
        else:  # changed in place: a run in progress reports to the same entry
            entry.task, entry.origin = task, "rpc"
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
        if not force and not entry.task.allowed_in(self.calendar, now):
            phase = phase_at(self.calendar, now).phase
            allowed = ", ".join(sorted(entry.task.phases))
            raise Rejected(
                f"task {task_id!r} runs only in {allowed}; the market is {phase} (force to run anyway)",
                reason="phase",
                phase=str(phase),
            )
        claim = self._claim(task_id)
        if claim is None:
            raise Rejected(f"task {task_id!r} is already running", reason="already_running")
        try:
            run = await self.store.start_run(task_id, trigger="manual", at=now)
        except BaseException:
            claim.set_result(None)
            raise
        entry.last_run = run
        running = self._start_run(entry.task, run, claim, force=force)
        if not wait:
            return {"task_id": task_id, **run.to_wire()}
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
            "running": self._is_running(entry.task.id),
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
            "running": sorted(task_id for task_id in self._claims if self._is_running(task_id)),
            "next_task": first.task.id if first else None,
            "next_run_utc": utc_iso(first.next_run) if first and first.next_run else None,
            "idle": self.idle,
            "market_phase": str(phase_at(self.calendar, self.clock.now()).phase),
        }


def _error_text(task: Task, exc: TradingError) -> str:
    if isinstance(exc, MethodNotFound):
        return f"{task.service}.{task.method} does not exist: {exc.message}"
    return exc.message
