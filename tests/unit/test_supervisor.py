"""The supervisor's whole state machine, driven by a fake ProcessControl and a simulated clock.

No real process is started and no test waits in real time: ``FakeControl`` stands in for the
operating system, ``FakeProber`` for each service's health socket, and ``Rig.run_until`` lets the
event loop run and then moves the simulated clock to the next pending timer, again and again,
until the scenario reaches the point the test asks for.

The graph is ``a <- b <- c`` plus an independent ``d``.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import signal
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

import pytest

from services.base.clock import SimulatedClock
from services.management.catalog import (
    DEFAULT_GRAPH,
    ManagerConfig,
    ServiceConfig,
    ServiceSpec,
    catalog_from_config,
)
from services.management.processes import FoundProcess, ProcessHandle, Sample
from services.management.states import ProcessState
from services.management.supervisor import StateChange, Supervisor, last_line

S = ProcessState
T = TypeVar("T")

START = datetime(2026, 11, 23, tzinfo=UTC)
LOGGER = "services.supervisor"
GRAPH: dict[str, tuple[str, ...]] = {"a": (), "b": ("a",), "c": ("b",), "d": ()}
NAMES = tuple(GRAPH)
SIGTERM = int(signal.SIGTERM)


def command_of(name: str) -> tuple[str, ...]:
    return ("fake-service", name)


def append_line(path: Path, line: str) -> None:
    with path.open("a", encoding="utf-8") as out:
        out.write(line + "\n")


# -- fakes ------------------------------------------------------------------------------------


@dataclass
class Behaviour:
    """How the processes of one service behave; a test may change it between attempts."""

    crash_at_start: bool = False  # exits with ``crash_code`` as soon as it is spawned
    crash_code: int = 1
    spawn_error: OSError | None = None  # spawn raises this (say, a missing executable)
    probes_before_healthy: int = 0  # health probes refused before the first "ok"
    healthy: bool = True  # False: health answers "failing" for ever
    ignore_shutdown: bool = False  # the shutdown request is accepted, then ignored
    shutdown_fails: bool = False  # the shutdown request cannot be delivered
    ignore_sigterm: bool = False
    output: str | None = None  # a line the process writes to its output file when it starts


class Event(NamedTuple):
    at: float  # simulated seconds since START
    what: str  # spawn, shutdown, SIGTERM, kill, or the state entered
    name: str


class Mark(NamedTuple):
    index: int  # events before it
    at: float


class FakeProcess:
    """A ``ProcessHandle`` whose life the test (or a fake signal) ends."""

    def __init__(
        self,
        name: str,
        pid: int,
        command: Sequence[str],
        *,
        started_at: float,  # simulated seconds since START (negative: before it)
        session: int | None = None,
        output: Path | None = None,
    ) -> None:
        self.name = name
        self.pid = pid
        self.command = tuple(command)
        self.session = pid if session is None else session
        self.started_at = started_at
        self.output = output
        self.probes = 0
        self._ended: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    @property
    def leader(self) -> bool:
        return self.session == self.pid

    @property
    def exit_code(self) -> int | None:
        return self._ended.result() if self._ended.done() else None

    def alive(self) -> bool:
        return not self._ended.done()

    async def wait(self) -> int | None:
        # Shielded like the real handle: the supervisor cancels a wait that loses to a timeout.
        return await asyncio.shield(self._ended)

    def exit(self, code: int, output: str | None = None) -> None:
        if output is not None and self.output is not None:
            append_line(self.output, output)
        if not self._ended.done():
            self._ended.set_result(code)


class FakeControl:
    """The operating system as the supervisor sees it, with every call recorded."""

    def __init__(self, clock: SimulatedClock, events: list[Event]) -> None:
        self.clock = clock
        self.events = events
        self.behaviour: defaultdict[str, Behaviour] = defaultdict(Behaviour)
        self.spawn_attempts: Counter[str] = Counter()
        self.spawned: defaultdict[str, list[FakeProcess]] = defaultdict(list)
        # Every process that ever existed, spawned or left by "a previous manager", by pid.
        self.processes: dict[int, FakeProcess] = {}
        self.signals: list[tuple[int, int]] = []
        self.forced_kills: list[int] = []  # pids that kill_tree found alive and killed
        self.kill_tree_calls: list[int] = []  # the pid of every handle kill_tree was given
        self._pids = itertools.count(1001)

    def elapsed(self) -> float:
        return (self.clock.now() - START).total_seconds()

    def record(self, what: str, name: str) -> None:
        self.events.append(Event(self.elapsed(), what, name))

    def _new(self, name: str, command: Sequence[str], **kwargs: Any) -> FakeProcess:
        process = FakeProcess(name, next(self._pids), command, started_at=self.elapsed(), **kwargs)
        self.processes[process.pid] = process
        return process

    def orphan(
        self, name: str, command: Sequence[str], *, session: int | None = None, age_s: float = 0.0
    ) -> FakeProcess:
        """A process an earlier manager left running (a helper when ``session`` names its leader)."""
        process = self._new(name, command, session=session)
        process.started_at -= age_s
        return process

    def leader(self, name: str) -> FakeProcess | None:
        """The live main process of ``name`` (what its health socket would belong to)."""
        live = [p for p in self.processes.values() if p.name == name and p.leader and p.alive()]
        return live[-1] if live else None

    def live(self) -> list[FakeProcess]:
        return [p for p in self.processes.values() if p.alive()]

    # ProcessControl

    def spawn(self, name: str, command: Sequence[str], output: Path) -> ProcessHandle:
        self.spawn_attempts[name] += 1
        behaviour = self.behaviour[name]
        if behaviour.spawn_error is not None:
            raise behaviour.spawn_error
        process = self._new(name, command, output=output)
        self.spawned[name].append(process)
        self.record("spawn", name)
        if behaviour.output is not None:
            append_line(output, behaviour.output)
        if behaviour.crash_at_start:
            process.exit(behaviour.crash_code)
        return process

    def adopt(self, pid: int) -> ProcessHandle | None:
        process = self.processes.get(pid)
        return process if process is not None and process.alive() else None

    def signal(self, handle: ProcessHandle, signum: int) -> None:
        assert isinstance(handle, FakeProcess)
        self.signals.append((handle.pid, signum))
        self.record(signal.Signals(signum).name, handle.name)
        if signum == SIGTERM and not self.behaviour[handle.name].ignore_sigterm:
            handle.exit(-SIGTERM)

    def kill_tree(self, handle: ProcessHandle) -> None:
        self.kill_tree_calls.append(handle.pid)
        for process in self.live():
            if process.pid == handle.pid or process.session == handle.pid:
                self.forced_kills.append(process.pid)
                self.record("kill", process.name)
                process.exit(-int(signal.SIGKILL))

    def find_managed(self) -> list[FoundProcess]:
        return [
            FoundProcess(
                name=p.name,
                pid=p.pid,
                command=p.command,
                session=p.session,
                age_s=self.elapsed() - p.started_at,
            )
            for p in self.live()
        ]

    def sample(self, pid: int) -> Sample | None:
        return None


class FakeProber:
    """Each service's health socket: it answers while the service's main process is alive."""

    def __init__(self, control: FakeControl) -> None:
        self.control = control

    async def health(self, spec: ServiceSpec) -> str:
        process = self.control.leader(spec.name)
        if process is None:
            raise ConnectionRefusedError(f"{spec.name}.sock: connection refused")
        behaviour = self.control.behaviour[spec.name]
        process.probes += 1
        if process.probes <= behaviour.probes_before_healthy:
            raise ConnectionRefusedError(f"{spec.name}.sock: not listening yet")
        return "ok" if behaviour.healthy else "failing"

    async def request_shutdown(self, spec: ServiceSpec) -> None:
        self.control.record("shutdown", spec.name)
        process = self.control.leader(spec.name)
        behaviour = self.control.behaviour[spec.name]
        if process is None or behaviour.shutdown_fails:
            raise ConnectionRefusedError(f"{spec.name}.sock: connection refused")
        if not behaviour.ignore_shutdown:
            process.exit(0)


# -- the rig -----------------------------------------------------------------------------------


async def let_loop_run(rounds: int = 50) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


@dataclass
class Rig:
    """A supervisor over fakes, and the means to run a scenario in simulated time."""

    clock: SimulatedClock
    control: FakeControl
    events: list[Event]
    sup: Supervisor = field(init=False)
    changes: list[StateChange] = field(default_factory=list)
    # Seconds from entering BACKOFF to the scheduled retry, per service, read at that moment.
    delays: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    def on_change(self, change: StateChange) -> None:
        self.changes.append(change)
        self.control.record(str(change.state), change.name)
        if change.state is S.BACKOFF:
            retry_at = self.sup.children[change.name].retry_at
            assert retry_at is not None
            self.delays[change.name].append((retry_at - change.at).total_seconds())

    # Reading the scene

    def elapsed(self) -> float:
        return self.control.elapsed()

    def state(self, name: str) -> ProcessState:
        return self.sup.children[name].state

    def states(self) -> dict[str, str]:
        return {name: str(self.state(name)) for name in self.sup.names}

    def process(self, name: str) -> FakeProcess:
        """The latest process spawned for ``name``."""
        return self.control.spawned[name][-1]

    def pids(self) -> dict[str, int | None]:
        return {name: self.sup.children[name].pid for name in self.sup.names}

    def reasons(self, name: str, state: ProcessState) -> list[str | None]:
        return [c.reason for c in self.changes if c.name == name and c.state is state]

    def mark(self) -> Mark:
        return Mark(len(self.events), self.elapsed())

    def timeline(self, name: str, since: Mark, whats: Sequence[str]) -> list[tuple[float, str]]:
        """``name``'s events of the kinds ``whats`` after ``since``, timed from it."""
        return [
            (round(e.at - since.at, 3), e.what)
            for e in self.events[since.index :]
            if e.name == name and e.what in whats
        ]

    def order(self) -> list[tuple[str, str]]:
        return [(e.what, e.name) for e in self.events]

    # Moving the scene on

    async def run_until(self, predicate: Callable[[], bool], *, within: float = 600.0) -> None:
        """Run the loop, jumping the clock from timer to timer, until ``predicate`` holds."""
        limit = self.clock.now() + timedelta(seconds=within)
        while True:
            await let_loop_run()
            if predicate():
                return
            deadline = self.clock.next_deadline()
            if deadline is None or deadline > limit:
                raise AssertionError(
                    f"condition not met within {within:g}s of simulated time "
                    f"(at {self.elapsed():g}s; states {self.states()}; next timer {deadline})"
                )
            await self.clock.advance_to(deadline)

    def launch(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.create_task(work)
        self.tasks.append(task)
        return task

    async def drive(self, work: Awaitable[T], *, within: float = 600.0) -> T:
        """Await ``work`` while simulated time passes as it needs."""
        task = asyncio.ensure_future(work)
        self.tasks.append(task)
        await self.run_until(task.done, within=within)
        return task.result()

    async def crash(self, name: str, code: int = 1, output: str | None = None) -> None:
        """End the running process of ``name``; return once the supervisor has reacted."""
        self.process(name).exit(code, output)
        await self.run_until(lambda: self.state(name) is not S.RUNNING, within=0)

    async def running(self, name: str, *, within: float = 600.0) -> None:
        await self.run_until(lambda: self.state(name) is S.RUNNING, within=within)

    async def close(self) -> None:
        try:
            await self.drive(self.sup.stop())
        finally:
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
        assert self.control.live() == [], "a fake process outlived the supervisor"


class MakeRig(Protocol):
    def __call__(self, *, services: dict[str, ServiceConfig] | None = None, **config: Any) -> Rig: ...


def manager_config(services: dict[str, ServiceConfig] | None = None, **config: Any) -> ManagerConfig:
    """GRAPH with fake commands (the default services left out), overridden by ``services``."""
    table = {name: ServiceConfig(enabled=False) for name in DEFAULT_GRAPH}
    table.update(
        {name: ServiceConfig(command=command_of(name), depends_on=deps) for name, deps in GRAPH.items()}
    )
    table.update(services or {})
    return ManagerConfig(services=table, **config)


@pytest.fixture
async def make_rig(tmp_path: Path) -> AsyncIterator[MakeRig]:
    rigs: list[Rig] = []

    def make(
        *, services: dict[str, ServiceConfig] | None = None, restarts_file: Path | None = None, **config: Any
    ) -> Rig:
        settings = manager_config(services, **config)
        clock = SimulatedClock(START)
        events: list[Event] = []
        rig = Rig(clock=clock, control=FakeControl(clock, events), events=events)
        rig.sup = Supervisor(
            catalog_from_config(settings, installed=lambda name: True),
            config=settings,
            control=rig.control,
            prober=FakeProber(rig.control),
            clock=clock,
            output_dir=tmp_path,
            on_change=rig.on_change,
            restarts_file=restarts_file,
        )
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        await rig.close()


# -- start --------------------------------------------------------------------------------------


async def test_the_catalog_is_the_test_graph_in_dependency_order(make_rig: MakeRig) -> None:
    rig = make_rig()
    names = rig.sup.names
    assert sorted(names) == ["a", "b", "c", "d"]
    assert names.index("a") < names.index("b") < names.index("c")
    assert rig.states() == dict.fromkeys(names, "stopped")


async def test_start_brings_everything_up_in_dependency_order(make_rig: MakeRig) -> None:
    rig = make_rig()
    # a and d take a few probes to answer, so a start that serialised them would show.
    rig.control.behaviour["a"].probes_before_healthy = 3
    rig.control.behaviour["d"].probes_before_healthy = 3

    result = await rig.drive(rig.sup.start())

    assert result == {"ok": True, "states": dict.fromkeys(rig.sup.names, "running"), "failed": {}}
    order = rig.order()
    assert order.index(("running", "a")) < order.index(("spawn", "b"))
    assert order.index(("running", "b")) < order.index(("spawn", "c"))
    independent_spawns = [order.index(("spawn", "a")), order.index(("spawn", "d"))]
    independent_healthy = [order.index(("running", "a")), order.index(("running", "d"))]
    assert max(independent_spawns) < min(independent_healthy)
    assert rig.process("a").started_at == rig.process("d").started_at == 0
    for name in rig.sup.names:
        transitions = [(c.previous, c.state) for c in rig.changes if c.name == name]
        assert transitions == [(S.STOPPED, S.STARTING), (S.STARTING, S.RUNNING)]
        assert rig.control.spawn_attempts[name] == 1
        assert rig.sup.children[name].pid == rig.process(name).pid
        assert rig.process(name).command == command_of(name)
        assert rig.process(name).output == rig.sup.output_path(name)


async def test_starting_what_already_runs_spawns_nothing(make_rig: MakeRig) -> None:
    rig = make_rig()
    await rig.drive(rig.sup.start())
    pids = rig.pids()

    result = await rig.drive(rig.sup.start(["c"]), within=0)

    assert result == {"ok": True, "states": dict.fromkeys(["a", "b", "c"], "running"), "failed": {}}
    assert rig.pids() == pids
    assert sum(rig.control.spawn_attempts.values()) == 4


async def test_overlapping_concurrent_starts_spawn_each_service_once(make_rig: MakeRig) -> None:
    rig = make_rig()
    for name in NAMES:
        rig.control.behaviour[name].probes_before_healthy = 2
    starts = [
        rig.launch(rig.sup.start(["c"])),
        rig.launch(rig.sup.start(["b", "d"])),
        rig.launch(rig.sup.start()),
    ]

    await rig.run_until(lambda: all(task.done() for task in starts))

    first, second, third = (task.result() for task in starts)
    assert first == {"ok": True, "states": dict.fromkeys("abc", "running"), "failed": {}}
    assert second == {"ok": True, "states": {"a": "running", "b": "running", "d": "running"}, "failed": {}}
    assert third["ok"] is True
    assert rig.control.spawn_attempts == Counter(dict.fromkeys(NAMES, 1))
    assert len(rig.control.live()) == 4


# -- crashes, backoff, FATAL ----------------------------------------------------------------------


async def test_a_crash_is_restarted_after_the_initial_backoff_and_dependents_are_left_alone(
    make_rig: MakeRig,
) -> None:
    rig = make_rig()
    await rig.drive(rig.sup.start())
    before = rig.pids()
    worker = rig.control.orphan("a", ("a-worker",), session=before["a"])  # something a started
    await rig.clock.advance(30)

    await rig.crash("a", output="ZeroDivisionError: division by zero")

    assert worker.exit_code == -signal.SIGKILL  # nothing a started outlives it

    child = rig.sup.children["a"]
    assert rig.state("a") is S.BACKOFF
    assert child.pid is None
    assert child.retry_at == rig.clock.now() + timedelta(seconds=1)
    assert child.last_error == "exited with code 1 after 30.0s: ZeroDivisionError: division by zero"
    assert rig.reasons("a", S.BACKOFF) == [f"{child.last_error}; restarting in 1s"]
    crashed_at = rig.elapsed()

    await rig.running("a")

    assert rig.process("a").started_at == pytest.approx(crashed_at + 1)
    assert rig.control.spawn_attempts["a"] == 2
    assert child.restarts == 1
    assert child.retry_at is None
    assert rig.pids() == {**before, "a": rig.process("a").pid}
    assert rig.process("a").pid != before["a"]
    assert [c.state for c in rig.changes if c.name == "a"][-3:] == [S.BACKOFF, S.STARTING, S.RUNNING]
    assert rig.changes[-2].reason == "automatic restart"
    assert rig.changes[-2].restarts == 1
    # Nothing happened to the dependents: no new process, no signal, no shutdown, no state change.
    for name in ("b", "c"):
        assert rig.control.spawn_attempts[name] == 1
        assert [c.state for c in rig.changes if c.name == name] == [S.STARTING, S.RUNNING]
        assert rig.process(name).alive()
    assert not any(e.name in ("b", "c") and e.what in ("shutdown", "SIGTERM", "kill") for e in rig.events)


async def test_a_crash_reason_quotes_only_the_output_of_the_process_that_crashed(make_rig: MakeRig) -> None:
    rig = make_rig()
    await rig.drive(rig.sup.start(["d"]))
    await rig.crash("d", output="KeyError: 'ASX:BHP'")
    assert rig.sup.children["d"].last_error == "exited with code 1 after 0.0s: KeyError: 'ASX:BHP'"
    await rig.running("d")

    await rig.crash("d", code=-int(signal.SIGSEGV))

    assert rig.sup.children["d"].last_error == "killed by SIGSEGV after 0.0s"


async def test_backoff_doubles_up_to_the_cap_and_resets_after_a_stable_run(make_rig: MakeRig) -> None:
    rig = make_rig(backoff_max_s=8, max_failures=100, stable_after_s=60)
    await rig.drive(rig.sup.start(["d"]))

    for _ in range(6):
        await rig.crash("d")
        crashed_at = rig.elapsed()
        await rig.running("d")
        # The retry happens exactly when it was scheduled.
        assert rig.process("d").started_at == pytest.approx(crashed_at + rig.delays["d"][-1])
    assert rig.delays["d"] == [1, 2, 4, 8, 8, 8]
    assert [reason.rsplit("; ", 1)[-1] for reason in rig.reasons("d", S.BACKOFF) if reason] == [
        f"restarting in {delay}s" for delay in (1, 2, 4, 8, 8, 8)
    ]

    await rig.clock.advance(59.9)  # not quite stable
    await rig.crash("d")
    assert rig.delays["d"][-1] == 8
    await rig.running("d")

    await rig.clock.advance(60)  # stable: the backoff starts again from the beginning
    await rig.crash("d")
    assert rig.delays["d"][-1] == 1
    await rig.running("d")
    await rig.crash("d")
    assert rig.delays["d"][-1] == 2
    await rig.running("d")
    assert rig.sup.children["d"].restarts == 9


async def test_repeated_start_up_crashes_make_a_service_fatal_until_a_user_starts_it(
    make_rig: MakeRig,
) -> None:
    rig = make_rig()  # five failures within 300 s
    rig.control.behaviour["d"] = Behaviour(crash_at_start=True, output="RuntimeError: no API key")

    result = await rig.drive(rig.sup.start())

    assert result["ok"] is False
    assert result["states"] == {**dict.fromkeys("abc", "running"), "d": "fatal"}
    assert result["failed"] == {"d": "exited with code 1 during start-up: RuntimeError: no API key"}
    assert rig.control.spawn_attempts["d"] == 5
    assert [p.started_at for p in rig.control.spawned["d"]] == [0, 1, 3, 7, 15]
    assert rig.delays["d"] == [1, 2, 4, 8]
    assert rig.reasons("d", S.FATAL) == [
        "exited with code 1 during start-up: RuntimeError: no API key; "
        "5 failures within 300s; left stopped until started again"
    ]
    assert rig.sup.children["d"].pid is None
    # Left stopped: no timer, no further attempt however long we wait.
    assert rig.clock.pending_timers == 3  # the health watches of a, b and c alone
    await rig.clock.advance(3600)
    assert rig.control.spawn_attempts["d"] == 5
    others = {name: pid for name, pid in rig.pids().items() if name != "d"}

    rig.control.behaviour["d"] = Behaviour()
    result = await rig.drive(rig.sup.start(["d"]))

    assert result == {"ok": True, "states": {"d": "running"}, "failed": {}}
    assert rig.control.spawn_attempts["d"] == 6
    assert {name: pid for name, pid in rig.pids().items() if name != "d"} == others
    # The user start forgot the old failures: a new crash backs off from 1 s, not FATAL.
    await rig.crash("d")
    assert rig.state("d") is S.BACKOFF
    assert rig.delays["d"][-1] == 1
    await rig.running("d")


@pytest.mark.parametrize("code", [2, 3])
async def test_a_start_up_refused_for_a_reason_no_restart_fixes_is_fatal_at_once(
    make_rig: MakeRig, code: int
) -> None:
    rig = make_rig()
    reason = "d could not start: /h/data/d.db is empty, but this home created it on 2026-11-01"
    rig.control.behaviour["d"] = Behaviour(crash_at_start=True, crash_code=code, output=reason)

    result = await rig.drive(rig.sup.start())

    assert result["states"]["d"] == "fatal"
    assert rig.control.spawn_attempts["d"] == 1  # not four more tries
    assert result["failed"] == {"d": f"exited with code {code} during start-up: {reason}"}
    assert rig.reasons("d", S.FATAL) == [
        f"exited with code {code} during start-up: {reason}; not restarted: a restart cannot fix this"
    ]
    assert rig.clock.pending_timers == 3  # the health watches of a, b and c alone


async def test_the_last_error_clears_once_the_service_is_healthy_again(make_rig: MakeRig) -> None:
    rig = make_rig()
    await rig.drive(rig.sup.start())
    await rig.crash("a", output="ZeroDivisionError: division by zero")
    assert rig.sup.children["a"].last_error is not None
    await rig.running("a")
    assert rig.sup.children["a"].last_error is None
    assert rig.sup.children["a"].restarts == 1  # the crash is still counted


@pytest.mark.parametrize(("window_s", "fatal"), [(300.0, False), (1000.0, True)])
async def test_only_failures_within_the_window_count_towards_fatal(
    make_rig: MakeRig, window_s: float, fatal: bool
) -> None:
    # The backoff keeps growing (never stable), so only the window keeps the service alive.
    rig = make_rig(failure_window_s=window_s, stable_after_s=10_000)
    await rig.drive(rig.sup.start(["d"]))

    crash = 0
    while crash < 8:
        crash += 1
        await rig.clock.advance(100)
        await rig.crash("d")
        if rig.state("d") is S.FATAL:
            break
        await rig.running("d")

    if fatal:
        assert crash == 5
        assert rig.state("d") is S.FATAL
    else:
        assert rig.state("d") is S.RUNNING
        assert rig.sup.children["d"].restarts == 8
        assert rig.delays["d"] == [1, 2, 4, 8, 16, 32, 60, 60]
        assert len(rig.sup.children["d"].failures) < 5


@pytest.mark.parametrize("ignores_sigterm", [False, True])
async def test_a_process_that_never_gets_healthy_is_terminated_when_its_start_times_out(
    make_rig: MakeRig, ignores_sigterm: bool
) -> None:
    rig = make_rig(
        max_failures=2,
        services={"d": ServiceConfig(command=command_of("d"), start_timeout_s=5)},
    )
    rig.control.behaviour["d"] = Behaviour(healthy=False, ignore_sigterm=ignores_sigterm)
    start = rig.launch(rig.sup.start(["d"]))

    await rig.run_until(lambda: rig.state("d") is S.BACKOFF)

    first = rig.control.spawned["d"][0]
    reason = "not healthy within 5s (health is failing)"
    assert rig.sup.children["d"].last_error == reason
    assert not first.alive()
    assert rig.control.signals == [(first.pid, SIGTERM)]
    [sigterm_at] = [e.at for e in rig.events if e.what == "SIGTERM"]
    assert 5 <= sigterm_at < 5.25  # the deadline, give or take one health poll
    if ignores_sigterm:
        assert first.exit_code == -signal.SIGKILL
        assert [e.at for e in rig.events if e.what == "kill"] == [pytest.approx(sigterm_at + 2)]
    else:
        assert first.exit_code == -SIGTERM
        assert rig.control.forced_kills == []

    result = await rig.drive(start)

    assert result == {"ok": False, "states": {"d": "fatal"}, "failed": {"d": reason}}
    assert rig.control.spawn_attempts["d"] == 2
    assert rig.control.live() == []


async def test_a_missing_executable_is_a_failure_with_backoff_then_fatal(make_rig: MakeRig) -> None:
    rig = make_rig()
    missing = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), "fake-service")
    rig.control.behaviour["d"].spawn_error = missing

    result = await rig.drive(rig.sup.start(["d"]))

    reason = f"cannot run fake-service: {os.strerror(errno.ENOENT)}"
    assert result == {"ok": False, "states": {"d": "fatal"}, "failed": {"d": reason}}
    assert rig.control.spawn_attempts["d"] == 5
    assert rig.delays["d"] == [1, 2, 4, 8]
    assert rig.reasons("d", S.BACKOFF)[0] == f"{reason}; restarting in 1s"
    assert rig.control.spawned["d"] == []


async def test_a_failed_spawn_leaves_the_previous_process_alone(make_rig: MakeRig) -> None:
    rig = make_rig()
    await rig.drive(rig.sup.start(["d"]))
    old = rig.process("d")
    rig.control.behaviour["d"].spawn_error = FileNotFoundError(errno.ENOENT, "No such file", "fake-service")
    await rig.crash("d")
    calls = rig.control.kill_tree_calls.count(old.pid)  # the sweep after the crash itself

    await rig.run_until(lambda: rig.control.spawn_attempts["d"] == 2 and rig.state("d") is S.BACKOFF)

    assert rig.sup.children["d"].last_error == "cannot run fake-service: No such file"
    assert rig.control.kill_tree_calls.count(old.pid) == calls


# -- dependencies -------------------------------------------------------------------------------


async def test_dependents_of_a_fatal_service_are_never_spawned(make_rig: MakeRig) -> None:
    rig = make_rig()
    rig.control.behaviour["a"].crash_at_start = True

    result = await rig.drive(rig.sup.start())

    assert result["ok"] is False
    assert result["states"] == {"a": "fatal", "b": "stopped", "c": "stopped", "d": "running"}
    assert result["failed"] == {
        "a": "exited with code 1 during start-up",
        "b": "not started: a is not running",
        "c": "not started: b is not running",
    }

    # Starting b starts what b needs: a gets a fresh round of attempts, and fails again.
    result = await rig.drive(rig.sup.start(["b"]))

    assert result == {
        "ok": False,
        "states": {"a": "fatal", "b": "stopped"},
        "failed": {"a": "exited with code 1 during start-up", "b": "not started: a is not running"},
    }
    assert rig.sup.children["b"].last_error == "not started: a is not running"
    assert rig.control.spawn_attempts["b"] == rig.control.spawn_attempts["c"] == 0
    assert [c.name for c in rig.changes if c.name in ("b", "c")] == []


async def test_one_start_gives_a_failing_dependency_only_max_failures_attempts(make_rig: MakeRig) -> None:
    rig = make_rig()  # max_failures = 5
    rig.control.behaviour["a"].crash_at_start = True

    await rig.drive(rig.sup.start())

    assert rig.control.spawn_attempts["a"] == 5
    assert len(rig.reasons("a", S.FATAL)) == 1


# -- stop and restart -----------------------------------------------------------------------------


async def test_stop_goes_in_reverse_dependency_order_and_kills_what_will_not_stop(make_rig: MakeRig) -> None:
    rig = make_rig()  # stop_timeout_s = 10
    await rig.drive(rig.sup.start())
    processes = {name: rig.process(name) for name in NAMES}
    rig.control.behaviour["c"].ignore_shutdown = True
    rig.control.behaviour["c"].ignore_sigterm = True
    t0 = rig.mark()

    result = await rig.drive(rig.sup.stop())

    assert result == dict.fromkeys(rig.sup.names, "stopped")
    steps = ("stopping", "shutdown", "SIGTERM", "kill", "stopped")
    # c is asked, then SIGTERMed after 10 s, then killed after another 10 s.
    assert rig.timeline("c", t0, steps) == [
        (0, "stopping"),
        (0, "shutdown"),
        (10, "SIGTERM"),
        (20, "kill"),
        (20, "stopped"),
    ]
    # d depends on nothing and nothing on it: it stops at once, in parallel with c.
    assert rig.timeline("d", t0, steps) == [(0, "stopping"), (0, "shutdown"), (0, "stopped")]
    # b waits for c, and a for b; both obey the shutdown request.
    assert rig.timeline("b", t0, steps) == [(20, "stopping"), (20, "shutdown"), (20, "stopped")]
    assert rig.timeline("a", t0, steps) == [(20, "stopping"), (20, "shutdown"), (20, "stopped")]
    order = rig.order()
    assert order.index(("stopped", "c")) < order.index(("shutdown", "b"))
    assert order.index(("stopped", "b")) < order.index(("shutdown", "a"))
    assert {name: p.exit_code for name, p in processes.items()} == {
        "a": 0,
        "b": 0,
        "c": -signal.SIGKILL,
        "d": 0,
    }
    assert rig.control.live() == []
    assert rig.pids() == dict.fromkeys(rig.sup.names)


async def test_stop_sends_sigterm_at_once_when_the_shutdown_request_fails(make_rig: MakeRig) -> None:
    rig = make_rig()
    await rig.drive(rig.sup.start(["d"]))
    rig.control.behaviour["d"].shutdown_fails = True
    t0 = rig.mark()

    assert await rig.drive(rig.sup.stop(["d"])) == {"d": "stopped"}

    steps = ("shutdown", "SIGTERM", "kill", "stopped")
    assert rig.timeline("d", t0, steps) == [(0, "shutdown"), (0, "SIGTERM"), (0, "stopped")]
    assert rig.process("d").exit_code == -SIGTERM


async def test_stopping_a_service_in_backoff_cancels_its_restart(make_rig: MakeRig) -> None:
    rig = make_rig()
    await rig.drive(rig.sup.start(["d"]))
    await rig.crash("d")
    assert rig.state("d") is S.BACKOFF

    assert await rig.drive(rig.sup.stop(["d"]), within=0) == {"d": "stopped"}

    assert rig.sup.children["d"].retry_at is None
    assert rig.clock.pending_timers == 0
    await rig.clock.advance(120)
    await let_loop_run()
    assert rig.state("d") is S.STOPPED
    assert rig.control.spawn_attempts["d"] == 1
    assert rig.sup.children["d"].restarts == 0


async def test_stopping_a_service_while_it_starts_ends_the_start(make_rig: MakeRig) -> None:
    rig = make_rig()
    rig.control.behaviour["d"].probes_before_healthy = 1_000
    start = rig.launch(rig.sup.start(["d"]))
    await rig.clock.advance(1)
    assert rig.state("d") is S.STARTING

    assert await rig.drive(rig.sup.stop(["d"])) == {"d": "stopped"}

    assert await rig.drive(start, within=0) == {
        "ok": False,
        "states": {"d": "stopped"},
        "failed": {"d": "stopped"},
    }
    assert rig.process("d").exit_code == 0  # it obeyed the shutdown request
    assert rig.control.spawn_attempts["d"] == 1


async def test_restart_replaces_only_that_process(make_rig: MakeRig) -> None:
    rig = make_rig()
    await rig.drive(rig.sup.start())
    before = rig.pids()
    t0 = rig.mark()

    result = await rig.drive(rig.sup.restart("b"))

    assert result == {"ok": True, "states": {"a": "running", "b": "running"}, "failed": {}}
    assert rig.pids() == {**before, "b": rig.process("b").pid}
    assert rig.process("b").pid != before["b"]
    assert rig.control.spawned["b"][0].exit_code == 0
    assert rig.control.spawn_attempts == Counter({"a": 1, "b": 2, "c": 1, "d": 1})
    assert {e.name for e in rig.events[t0.index :]} == {"b"}
    assert rig.timeline("b", t0, ("stopping", "shutdown", "stopped", "spawn", "starting", "running")) == [
        (0, "stopping"),
        (0, "shutdown"),
        (0, "stopped"),
        (0, "starting"),
        (0, "spawn"),
        (0, "running"),
    ]
    assert rig.sup.children["b"].restarts == 0  # a restart asked for is not a crash


# -- adopting what a previous manager left ----------------------------------------------------------


async def test_adopt_orphans_keeps_a_healthy_match_and_clears_out_the_rest(make_rig: MakeRig) -> None:
    rig = make_rig()
    control = rig.control
    kept = control.orphan("a", command_of("a"))
    duplicate = control.orphan("a", command_of("a"))
    outdated = control.orphan("b", ("python", "-m", "services.b", "--old-flag"))
    sick = control.orphan("c", command_of("c"))
    retired = control.orphan("retired", ("python", "-m", "services.retired"))
    kept_helper = control.orphan("a", ("redis-cli", "monitor"), session=kept.pid)
    stray_helper = control.orphan("b", ("tail", "-f"), session=outdated.pid)
    control.behaviour["c"].healthy = False

    actions = await rig.drive(rig.sup.adopt_orphans())

    assert len(actions) == 5
    assert {action["pid"]: (action["name"], action["action"], action["reason"]) for action in actions} == {
        kept.pid: ("a", "adopted", "healthy (ok)"),
        duplicate.pid: ("a", "stopped", f"a duplicate of pid {kept.pid}"),
        outdated.pid: ("b", "replaced", "its command differs from the configured one"),
        sick.pid: ("c", "replaced", "health: failing"),
        retired.pid: ("retired", "stopped", "no longer configured"),
    }
    assert rig.states() == {**dict.fromkeys(rig.sup.names, "stopped"), "a": "running"}
    assert rig.sup.children["a"].pid == kept.pid
    assert [(c.name, c.previous, c.state) for c in rig.changes] == [("a", S.STOPPED, S.RUNNING)]
    assert control.spawn_attempts == Counter()
    # Orphans get SIGTERM (their socket may belong to someone else), never a shutdown request.
    assert sorted(control.signals) == sorted((p.pid, SIGTERM) for p in (duplicate, outdated, sick, retired))
    assert not any(e.what == "shutdown" for e in rig.events)
    for process in (duplicate, outdated, sick, retired):
        assert process.exit_code == -SIGTERM
    assert kept.alive()
    assert kept_helper.alive()  # its service was adopted
    assert stray_helper.exit_code == -signal.SIGKILL  # its service was replaced

    control.behaviour["c"].healthy = True
    result = await rig.drive(rig.sup.start())

    assert result["ok"] is True
    assert control.spawn_attempts == Counter({"b": 1, "c": 1, "d": 1})
    assert rig.sup.children["a"].pid == kept.pid


@pytest.mark.parametrize("age_s", [0.0, 3600.0])
async def test_an_adopted_process_that_crashes_is_restarted_with_backoff(
    make_rig: MakeRig, age_s: float
) -> None:
    rig = make_rig()
    orphan = rig.control.orphan("d", command_of("d"), age_s=age_s)
    await rig.drive(rig.sup.adopt_orphans())
    child = rig.sup.children["d"]
    assert child.state is S.RUNNING
    await let_loop_run()
    assert child.runner is not None
    assert not child.runner.done(), "nothing watches the adopted process"
    await rig.clock.advance(10)

    orphan.exit(1)
    await rig.run_until(lambda: child.state is S.BACKOFF, within=0)

    # Its uptime counts from when it really started, not from the adoption.
    assert child.last_error == f"exited with code 1 after {age_s + 10:.1f}s"
    assert rig.delays["d"] == [1]
    await rig.running("d")
    assert rig.process("d").started_at == 11
    assert rig.control.spawn_attempts["d"] == 1
    assert child.restarts == 1
    assert child.pid == rig.process("d").pid != orphan.pid


# -- logging ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", [logging.WARNING, logging.INFO])
async def test_state_changes_are_logged_and_a_crash_is_still_restarted(
    make_rig: MakeRig, caplog: pytest.LogCaptureFixture, level: int
) -> None:
    rig = make_rig()
    caplog.set_level(level, logger=LOGGER)
    await rig.drive(rig.sup.start(["d"]))

    await rig.crash("d")
    await rig.running("d", within=5)

    assert rig.sup.children["d"].restarts == 1
    logged = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER]
    assert (
        logging.WARNING,
        "d running -> backoff: exited with code 1 after 0.0s; restarting in 1s",
    ) in logged


# -- last_line ------------------------------------------------------------------------------------


def test_last_line_is_the_last_non_empty_line_written_after_the_offset(tmp_path: Path) -> None:
    output = tmp_path / "d.out"
    output.write_text("Traceback of an earlier run\nValueError: old\n")
    since = output.stat().st_size
    assert last_line(output, since=since) is None  # nothing new yet

    with output.open("a") as out:
        out.write("starting\n  Traceback (most recent call last):\nRuntimeError: no API key  \n\n   \n")

    assert last_line(output, since=since) == "RuntimeError: no API key"
    assert last_line(output) == "RuntimeError: no API key"
    assert last_line(output, since=output.stat().st_size) is None


def test_last_line_reads_only_the_tail_and_caps_the_length(tmp_path: Path) -> None:
    output = tmp_path / "d.out"
    output.write_text("first\n" + "x" * 10_000 + "\n" + "y" * 500)
    assert last_line(output, width=300) == "y" * 300
    assert last_line(output, since=0, limit=100) == "y" * 100  # only the last 100 bytes are read
    output.write_text("only line\n" + "z" * 5000 + "\n\n")
    assert last_line(output, limit=4096) == "z" * 600


def test_last_line_of_a_missing_or_empty_file_is_none(tmp_path: Path) -> None:
    assert last_line(tmp_path / "never-written.out") is None
    (tmp_path / "empty.out").write_bytes(b"")
    assert last_line(tmp_path / "empty.out") is None
    (tmp_path / "blank.out").write_text("\n \n\t\n")
    assert last_line(tmp_path / "blank.out") is None


async def test_a_service_whose_health_stops_answering_is_restarted_as_hung(make_rig: MakeRig) -> None:
    rig = make_rig()  # hung_after_s 30 by default
    await rig.drive(rig.sup.start(["d"]))
    first = rig.process("d")
    rig.control.behaviour["d"].probes_before_healthy = 10**9  # SIGSTOP: connects, answers nothing
    first.probes = 0
    await rig.run_until(lambda: rig.state("d") is S.BACKOFF, within=120)
    child = rig.sup.children["d"]
    assert child.last_error is not None
    assert child.last_error.startswith("hung: health has not answered for 3")
    assert rig.reasons("d", S.BACKOFF)[-1].startswith("hung: ")
    assert not first.alive()  # terminated: SIGTERM, then SIGKILL if it ignores that
    rig.control.behaviour["d"].probes_before_healthy = 0
    await rig.running("d")
    assert rig.process("d").pid != first.pid


async def test_a_manager_that_adopts_a_service_goes_on_counting_its_restarts(
    make_rig: MakeRig, tmp_path: Path
) -> None:
    counts = tmp_path / "restarts.json"
    first = make_rig(restarts_file=counts)
    await first.drive(first.sup.start(["d"]))
    for _ in range(2):
        await first.crash("d")
        await first.running("d")
    assert first.sup.children["d"].restarts == 2
    # The manager dies; a new one finds d running and adopts it.
    second = make_rig(restarts_file=counts)
    second.control.orphan("d", command_of("d"))
    await second.drive(second.sup.adopt_orphans())
    assert second.sup.children["d"].state is S.RUNNING
    assert second.sup.children["d"].restarts == 2
