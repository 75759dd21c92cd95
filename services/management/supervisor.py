"""The supervisor: starts processes in dependency order, watches them, restarts them with backoff.

A process counts as started only when it answers a health probe with ok or degraded. Processes
whose dependencies are all up start in parallel. A crash or failed start is retried after 1 s,
2 s, 4 s ... (capped); the backoff resets once a process has run for ``stable_after_s``; too
many failures within ``failure_window_s`` mark it FATAL, and it stays stopped until a user starts
it again. Restarting one process never restarts its dependents. Stopping goes in reverse
dependency order: a ``shutdown`` request, then SIGTERM, then SIGKILL of the whole process tree.

Time comes from the injected clock and processes from the injected ``ProcessControl``, so the
whole state machine runs in unit tests without real processes or real waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

import orjson

from services.base.clock import Clock
from services.management.catalog import Catalog, ManagerConfig, ServiceSpec
from services.management.processes import FoundProcess, ProcessControl, ProcessHandle
from services.management.states import LIVE, SETTLED, ProcessState, allowed
from services.management.wire import Adoption, AdoptionAction, StartResult

log = logging.getLogger("services.supervisor")

S = ProcessState
_HEALTHY = ("ok", "degraded")
# Exit statuses of a start-up that no restart can fix (runner.EXIT_CONFIG, runner.EXIT_NEEDS_HUMAN).
NEEDS_HUMAN_CODES = (2, 3)


class Prober(Protocol):
    async def health(self, spec: ServiceSpec) -> str:
        """The process's health status (ok, degraded, failing); raises when it does not answer."""
        ...

    async def request_shutdown(self, spec: ServiceSpec) -> None:
        """Ask the process to stop by itself; raises when it cannot be asked."""
        ...


@dataclass(frozen=True, slots=True)
class StateChange:
    name: str
    previous: ProcessState
    state: ProcessState
    reason: str | None
    pid: int | None
    restarts: int
    at: datetime


@dataclass(eq=False)
class Child:
    """What the supervisor knows about one supervised process."""

    spec: ServiceSpec
    since: datetime
    backoff_s: float
    state: ProcessState = S.STOPPED
    handle: ProcessHandle | None = None
    running_since: datetime | None = None
    restarts: int = 0
    last_error: str | None = None
    retry_at: datetime | None = None
    # Size of the output file when the current process started: older lines are not its own.
    output_offset: int = 0
    failures: deque[datetime] = field(default_factory=deque)
    # The last start-up ended with an exit status that says no restart will help.
    needs_human: bool = False
    runner: asyncio.Task[None] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def running(self) -> bool:
        return self.state is S.RUNNING

    @property
    def pid(self) -> int | None:
        return self.handle.pid if self.handle is not None and self.state in LIVE else None


class Supervisor:
    def __init__(
        self,
        catalog: Catalog,
        *,
        config: ManagerConfig,
        control: ProcessControl,
        prober: Prober,
        clock: Clock,
        output_dir: Path,
        on_change: Callable[[StateChange], None] | None = None,
        restarts_file: Path | None = None,
    ) -> None:
        """``restarts_file``: where each service's restart count is kept, so a manager that
        adopts a running service carries on counting from where the previous one stopped."""
        self.restarts_file = restarts_file
        self.catalog = catalog
        self.config = config
        self.control = control
        self.prober = prober
        self.clock = clock
        self.output_dir = output_dir
        self.on_change = on_change
        now = clock.now()
        self.children: dict[str, Child] = {
            spec.name: Child(spec=spec, since=now, backoff_s=config.backoff_initial_s)
            for spec in catalog.specs.values()
        }

    @property
    def names(self) -> list[str]:
        return list(self.children)

    def output_path(self, name: str) -> Path:
        """Where a process's stdout and stderr go (tracebacks from before logging starts)."""
        return self.output_dir / f"{name}.out"

    # -- start ----------------------------------------------------------------------------

    async def start(self, names: Iterable[str] | None = None) -> StartResult:
        """Start ``names`` (default: all) and what they need; return once each is RUNNING or FATAL."""
        targets = self.catalog.with_dependencies(self.names if names is None else names)
        # One start attempt per process per request, however many of the targets need it.
        attempts: dict[str, asyncio.Future[bool]] = {}

        def attempt(name: str) -> asyncio.Future[bool]:
            if name not in attempts:
                attempts[name] = asyncio.ensure_future(self._start_one(self.children[name], attempt))
            return attempts[name]

        results = await asyncio.gather(*(attempt(name) for name in targets))
        states = {name: str(self.children[name].state) for name in targets}
        failed = {
            name: self.children[name].last_error or str(self.children[name].state)
            for name, ok in zip(targets, results, strict=True)
            if not ok
        }
        return {"ok": not failed, "states": states, "failed": failed}

    async def _start_one(self, child: Child, attempt: Callable[[str], asyncio.Future[bool]]) -> bool:
        async with child.lock:
            if child.state is S.RUNNING:
                return True
            if child.state is not S.STARTING:
                needed = child.spec.depends_on
                results = await asyncio.gather(*(attempt(name) for name in needed))
                failed = next((name for name, ok in zip(needed, results, strict=True) if not ok), None)
                if failed:
                    child.last_error = f"not started: {failed} is not running"
                    log.warning("%s %s", child.name, child.last_error)
                    return False
                await self._cancel_runner(child)
                if child.state is S.FATAL:
                    child.failures.clear()
                    child.backoff_s = self.config.backoff_initial_s
                self._set(child, S.STARTING, "start requested")
                child.runner = self._run_task(child, adopted=False)
        await self._settled(child)
        return child.running

    def _run_task(self, child: Child, *, adopted: bool) -> asyncio.Task[None]:
        task = asyncio.create_task(self._run(child, adopted=adopted), name=f"supervise:{child.name}")
        task.add_done_callback(_log_failure)
        return task

    async def _run(self, child: Child, *, adopted: bool) -> None:
        """Keep ``child`` up: start it, watch it, and after a crash back off and start it again."""
        while True:
            error = None if adopted else await self._attempt_start(child)
            if error is None:
                child.last_error = None  # healthy again: an old error no longer describes it
                if not adopted:
                    child.running_since = self.clock.now()
                    self._set(child, S.RUNNING, "healthy")
                adopted = False
                error = await self._watch(child)
            else:
                await self._terminate(child, graceful=False)
            child.last_error = error
            if child.needs_human:
                self._set(child, S.FATAL, f"{error}; not restarted: a restart cannot fix this")
                return
            if self._record_failure(child):
                self._set(child, S.FATAL, f"{error}; {self._failures_text(child)}")
                return
            delay = child.backoff_s
            child.backoff_s = min(delay * 2, self.config.backoff_max_s)
            child.retry_at = self.clock.now() + timedelta(seconds=delay)
            self._set(child, S.BACKOFF, f"{error}; restarting in {delay:g}s")
            await self.clock.sleep(delay)
            child.retry_at = None
            child.restarts += 1
            self._save_restarts()
            self._set(child, S.STARTING, "automatic restart")

    async def _attempt_start(self, child: Child) -> str | None:
        """Spawn the process and wait until it is healthy; None on success, else why not."""
        spec = child.spec
        output = self.output_path(spec.name)
        child.output_offset = output.stat().st_size if output.exists() else 0
        child.handle = None  # the previous process's pid may belong to someone else by now
        child.needs_human = False
        try:
            child.handle = self.control.spawn(spec.name, spec.command, output)
        except OSError as exc:
            return f"cannot run {spec.command[0]}: {exc.strerror or exc}"
        log.info("%s spawned (pid %d)", spec.name, child.handle.pid)
        deadline = self.clock.now() + timedelta(seconds=spec.start_timeout_s)
        pause, last = 0.02, "no answer yet"
        while True:
            if not child.handle.alive():
                code = await child.handle.wait()
                child.needs_human = code in NEEDS_HUMAN_CODES
                return f"{_exit_text(code)} during start-up{self._output_hint(child)}"
            try:
                status = await self.prober.health(spec)
            except Exception as exc:
                last = str(exc) or type(exc).__name__
            else:
                if status in _HEALTHY:
                    return None
                last = f"health is {status}"
            if self.clock.now() >= deadline:
                return f"not healthy within {spec.start_timeout_s:g}s ({last})"
            await self.clock.sleep(pause)
            pause = min(pause * 2, 0.25)

    async def _watch(self, child: Child) -> str:
        """Wait for a RUNNING process to end, or to hang; the reason, for the log and status."""
        assert child.handle is not None
        assert child.running_since is not None
        ended = asyncio.ensure_future(child.handle.wait())
        hung = asyncio.ensure_future(self._until_hung(child))
        try:
            await asyncio.wait({ended, hung}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hung.cancel()
        if not ended.done():
            reason = f"hung: {hung.result()}"
            log.error("%s (pid %d) %s; restarting it", child.name, child.handle.pid, reason)
            await self._terminate(child, graceful=False)  # it answers nothing: SIGTERM, then SIGKILL
            ended.cancel()
            return reason
        code = ended.result()
        lived = (self.clock.now() - child.running_since).total_seconds()
        if lived >= self.config.stable_after_s:
            child.backoff_s = self.config.backoff_initial_s
        self._kill_leftovers(child)
        return f"{_exit_text(code)} after {lived:.1f}s{self._output_hint(child)}"

    async def _until_hung(self, child: Child) -> str:
        """Returns once the process's health has not answered for ``hung_after_s``: a stopped
        process (SIGSTOP) or a blocked event loop."""
        limit = self.config.hung_after_s
        interval = min(5.0, limit / 3)
        answered = self.clock.now()
        last = "no answer"
        while True:
            await self.clock.sleep(interval)
            try:
                await self.prober.health(child.spec)
            except Exception as exc:
                last = str(exc) or type(exc).__name__
                silent = (self.clock.now() - answered).total_seconds()
                if silent >= limit:
                    return f"health has not answered for {silent:.0f}s ({last})"
            else:
                answered = self.clock.now()

    def _save_restarts(self) -> None:
        if self.restarts_file is None:
            return
        counts = {name: child.restarts for name, child in self.children.items()}
        temporary = self.restarts_file.with_suffix(".tmp")
        try:
            temporary.write_bytes(orjson.dumps(counts))
            temporary.replace(self.restarts_file)
        except OSError as exc:  # a count is not worth stopping for
            log.warning("cannot keep the restart counts in %s: %s", self.restarts_file, exc)

    def _saved_restarts(self) -> dict[str, int]:
        try:
            counts = orjson.loads(self.restarts_file.read_bytes()) if self.restarts_file else {}
        except (OSError, orjson.JSONDecodeError):
            return {}
        if not isinstance(counts, dict):
            return {}
        return {str(k): v for k, v in counts.items() if isinstance(v, int) and not isinstance(v, bool)}

    def _record_failure(self, child: Child) -> bool:
        """Count a failure; True when there have been too many within the window."""
        now = self.clock.now()
        child.failures.append(now)
        window = timedelta(seconds=self.config.failure_window_s)
        while child.failures and now - child.failures[0] > window:
            child.failures.popleft()
        return len(child.failures) >= self.config.max_failures

    def _failures_text(self, child: Child) -> str:
        return (
            f"{len(child.failures)} failures within {self.config.failure_window_s:g}s; "
            f"left stopped until started again"
        )

    # -- adopt -------------------------------------------------------------------------------

    async def adopt_orphans(self) -> list[Adoption]:
        """Take over, or cleanly replace, processes a previous manager left running."""
        found = self.control.find_managed()
        actions: list[Adoption] = []
        for child in self.children.values():
            for orphan in (f for f in found if f.name == child.name and f.leader):
                handle = self.control.adopt(orphan.pid)
                if handle is None:
                    continue
                action, reason = await self._adopt_or_replace(child, handle, orphan)
                actions.append(_adoption(child.name, orphan.pid, action, reason))
        for orphan in found:
            if orphan.leader and orphan.name not in self.children:
                handle = self.control.adopt(orphan.pid)
                if handle is not None:
                    await self._stop_process(handle, None, timeout=self.config.stop_timeout_s)
                    actions.append(_adoption(orphan.name, orphan.pid, "stopped", "no longer configured"))
        # Helpers whose service is gone.
        running = {child.pid for child in self.children.values() if child.pid is not None}
        for orphan in self.control.find_managed():
            if not orphan.leader and orphan.session not in running:
                handle = self.control.adopt(orphan.pid)
                if handle is not None:
                    self.control.kill_tree(handle)
        for a in actions:
            log.warning(
                "%s %s (pid %d) left by a previous manager: %s", a["action"], a["name"], a["pid"], a["reason"]
            )
        return actions

    async def _adopt_or_replace(
        self, child: Child, handle: ProcessHandle, orphan: FoundProcess
    ) -> tuple[AdoptionAction, str]:
        # Orphans get SIGTERM, not a shutdown request: the socket may belong to another process.
        if child.state is not S.STOPPED:
            await self._stop_process(handle, None, timeout=child.spec.stop_timeout_s)
            return "stopped", f"a duplicate of pid {child.pid}"
        if orphan.command != child.spec.command:
            await self._stop_process(handle, None, timeout=child.spec.stop_timeout_s)
            return "replaced", "its command differs from the configured one"
        try:
            status = await self.prober.health(child.spec)
        except Exception as exc:
            status = f"no answer ({exc or type(exc).__name__})"
        if status not in _HEALTHY:
            await self._stop_process(handle, None, timeout=child.spec.stop_timeout_s)
            return "replaced", f"health: {status}"
        child.handle = handle
        child.restarts = self._saved_restarts().get(child.name, 0)
        child.running_since = self.clock.now() - timedelta(seconds=orphan.age_s)
        self._set(child, S.RUNNING, f"adopted from a previous manager (pid {handle.pid})")
        child.runner = self._run_task(child, adopted=True)
        return "adopted", f"healthy ({status})"

    # -- stop ---------------------------------------------------------------------------------

    async def stop(self, names: Iterable[str] | None = None) -> dict[str, str]:
        """Stop ``names`` (default: all), each only after those of its dependents being stopped."""
        targets = set(self.names if names is None else names)
        tasks: dict[str, asyncio.Task[None]] = {}
        for name in reversed(self.names):
            if name in targets:
                first = [tasks[other] for other in self.catalog.dependents(name) if other in tasks]
                tasks[name] = asyncio.create_task(self._stop_after(first, self.children[name]))
        if tasks:
            await asyncio.gather(*tasks.values())
        return {name: str(self.children[name].state) for name in self.names if name in targets}

    async def restart(self, name: str) -> StartResult:
        """Stop and start one process; its dependents keep running."""
        await self.stop([name])
        return await self.start([name])

    async def _stop_after(self, first: list[asyncio.Task[None]], child: Child) -> None:
        if first:
            await asyncio.wait(first)
        async with child.lock:
            await self._cancel_runner(child)
            if child.state is S.STOPPED:
                return
            self._set(child, S.STOPPING, "stop requested")
            await self._terminate(child, graceful=True)
            self._set(child, S.STOPPED, "stopped")

    async def _cancel_runner(self, child: Child) -> None:
        runner, child.runner = child.runner, None
        if runner is not None and not runner.done():
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        child.retry_at = None

    async def _terminate(self, child: Child, *, graceful: bool) -> None:
        if child.handle is not None:
            timeout = child.spec.stop_timeout_s if graceful else min(child.spec.stop_timeout_s, 2.0)
            await self._stop_process(child.handle, child.spec if graceful else None, timeout=timeout)
            self._kill_leftovers(child)

    async def _stop_process(self, handle: ProcessHandle, spec: ServiceSpec | None, *, timeout: float) -> None:
        """Ask (shutdown RPC), then SIGTERM, then SIGKILL the whole tree, waiting ``timeout`` each."""
        if not handle.alive():
            await handle.wait()
            return
        if spec is not None and spec.kind == "service":
            try:
                await self.prober.request_shutdown(spec)
            except Exception as exc:
                log.info("%s: shutdown request failed (%s); sending SIGTERM", spec.name, exc)
            else:
                if await self._exits_within(handle, timeout):
                    return
                log.warning("%s did not stop within %gs of shutdown; sending SIGTERM", spec.name, timeout)
        self.control.signal(handle, signal.SIGTERM)
        if await self._exits_within(handle, timeout):
            return
        log.warning("pid %d ignored SIGTERM for %gs; killing it", handle.pid, timeout)
        self.control.kill_tree(handle)
        await handle.wait()

    async def _exits_within(self, handle: ProcessHandle, seconds: float) -> bool:
        ended = asyncio.ensure_future(handle.wait())
        timer = asyncio.ensure_future(self.clock.sleep(seconds))
        try:
            await asyncio.wait({ended, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            if not ended.done():
                ended.cancel()
        return ended.done() and not ended.cancelled()

    def _kill_leftovers(self, child: Child) -> None:
        """After the main process ended, nothing it started may outlive it."""
        if child.handle is not None:
            self.control.kill_tree(child.handle)

    # -- state ---------------------------------------------------------------------------------

    def _set(self, child: Child, new: ProcessState, reason: str | None) -> None:
        old = child.state
        if not allowed(old, new):
            raise RuntimeError(f"{child.name}: no transition from {old} to {new}")
        child.state = new
        child.since = self.clock.now()
        pid = child.handle.pid if child.handle is not None else None
        level = logging.ERROR if new is S.FATAL else logging.WARNING if new is S.BACKOFF else logging.INFO
        extra = {"target": child.name, "state": str(new), "previous": str(old), "pid": pid}
        log.log(level, "%s %s -> %s: %s", child.name, old, new, reason, extra=extra)
        if new in SETTLED:
            waiters, child.waiters = child.waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        if self.on_change is not None:
            self.on_change(StateChange(child.name, old, new, reason, pid, child.restarts, child.since))

    async def _settled(self, child: Child) -> None:
        if child.state in SETTLED:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        child.waiters.append(waiter)
        await waiter

    def _output_hint(self, child: Child) -> str:
        line = last_line(self.output_path(child.name), since=child.output_offset)
        return f": {line}" if line else ""

    async def close(self) -> None:
        """Stop everything; for the manager's own shutdown."""
        await self.stop()


def last_line(path: Path, *, since: int = 0, limit: int = 4096, width: int = 600) -> str | None:
    """The last non-empty line written after offset ``since`` (often the exception of a crash)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(since, size - limit))
            tail = handle.read().decode("utf-8", "replace")
    except OSError:
        return None
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[-1][:width] if lines else None


def _adoption(name: str, pid: int, action: AdoptionAction, reason: str) -> Adoption:
    return {"name": name, "pid": pid, "action": action, "reason": reason}


def _exit_text(code: int | None) -> str:
    if code is None:
        return "exited"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("task %s failed", task.get_name(), exc_info=task.exception())
