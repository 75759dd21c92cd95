"""Process control behind one replaceable object: spawn, signal, wait for, find and measure.

The supervisor never calls ``os.kill`` or ``subprocess`` itself; it goes through a
``ProcessControl``. ``OsProcessControl`` is the real one; unit tests pass a fake.

Every process the manager starts runs in a session of its own (so a signal to the manager's
terminal does not reach it, and killing its process group kills its helpers too) and carries two
environment variables naming the home and the service. They are inherited by anything the service
starts, so after a manager crash the next manager finds every process it left, helpers included.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import psutil

ENV_HOME = "TRADING_MANAGED_HOME"
ENV_NAME = "TRADING_MANAGED_NAME"
# Tells the runner that stderr goes to a file, so it logs to logs/<service>.log only.
ENV_SUPERVISED = "TRADING_SUPERVISED"

# glibc gives each thread its own malloc arena (up to 8 per core); our daemons have a few helper
# threads and gain nothing from that but memory (about 1 MB of PSS each). A user's value wins.
SMALL_DAEMON_ENV = {"MALLOC_ARENA_MAX": "2"}

# The secrets in the manager's environment, and the one process each is for: every other process
# (redis-server included) starts without them.
SECRET_VARIABLES: dict[str, str] = {
    "IG_USERNAME": "paper_trading",
    "IG_PASSWORD": "paper_trading",
    "IG_API_KEY": "paper_trading",
    "MARKETAUX_API_TOKEN": "sentiment",
}

# The directory holding the ``services`` package, so ``python -m services.x`` works in children
# even when the manager itself was started as a script from a checkout.
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class ProcessHandle(Protocol):
    pid: int

    def alive(self) -> bool: ...

    async def wait(self) -> int | None:
        """Wait for the process to end; its exit status, or None when it is not our child."""
        ...


@dataclass(frozen=True, slots=True)
class FoundProcess:
    """A process carrying our markers: a service's main process, or something it started."""

    name: str
    pid: int
    command: tuple[str, ...]
    # The session it belongs to: the service's main process leads its own; helpers are in it.
    session: int
    # How long it has been running.
    age_s: float = 0.0

    @property
    def leader(self) -> bool:
        return self.session == self.pid


@dataclass(frozen=True, slots=True)
class Sample:
    memory_rss: int
    memory_pss: int | None
    cpu_percent: float


class ProcessControl(Protocol):
    def spawn(self, name: str, command: Sequence[str], output: Path) -> ProcessHandle: ...

    def adopt(self, pid: int) -> ProcessHandle | None:
        """A handle on a running process that is not our child; None if it is gone."""
        ...

    def signal(self, handle: ProcessHandle, signum: int) -> None: ...

    def kill_tree(self, handle: ProcessHandle) -> None:
        """SIGKILL the process, its process group and every process carrying its markers."""
        ...

    def find_managed(self) -> list[FoundProcess]: ...

    def sample(self, pid: int, *, children: bool = True) -> Sample | None:
        """Memory and CPU figures; None if the process is gone. Called from worker threads."""
        ...


class _Handle:
    """A process we can wait for without polling: a pidfd becomes readable when it exits."""

    def __init__(self, pid: int, popen: subprocess.Popen[bytes] | None) -> None:
        self.pid = pid
        self._popen = popen
        self._pidfd: int | None = _pidfd_open(pid)
        self._ended = self._pidfd is None and not psutil.pid_exists(pid)
        self._waiter: asyncio.Future[int | None] | None = None
        self.returncode: int | None = None

    def alive(self) -> bool:
        if self._ended:
            return False
        if self._popen is not None:
            return self._popen.poll() is None
        try:
            return psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    async def wait(self) -> int | None:
        # One watcher per process, however many callers wait (a second reader on the same fd
        # would replace the first).
        if self._waiter is None:
            self._waiter = asyncio.ensure_future(self._wait_once())
        return await asyncio.shield(self._waiter)

    async def _wait_once(self) -> int | None:
        if not self._ended:
            if self._pidfd is not None:
                await _readable(self._pidfd)
            else:
                while self.alive():
                    await asyncio.sleep(0.1)
            self._ended = True
            self._close()
        if self._popen is not None:
            # The pidfd said it ended, so this reaps without blocking.
            self.returncode = self._popen.wait()
        return self.returncode

    def _close(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def __del__(self) -> None:
        self._close()


class OsProcessControl:
    """The real thing: subprocesses, signals and /proc through psutil."""

    def __init__(self, home: Path) -> None:
        self.home = home
        # psutil.Process objects kept between samples: cpu_percent measures since the last call.
        self._sampled: dict[int, psutil.Process] = {}
        # sample() runs in worker threads (the manager's sampler and its RPCs may overlap); the
        # cache and each Process's CPU baseline are not safe to share between threads.
        self._sample_lock = threading.Lock()

    def environment(self, name: str) -> dict[str, str]:
        """The manager's environment for process ``name``: with the markers, without the secrets
        meant for other processes."""
        env = SMALL_DAEMON_ENV | {
            key: value for key, value in os.environ.items() if SECRET_VARIABLES.get(key, name) == name
        }
        path = env.get("PYTHONPATH")
        env.update(
            {
                "TRADING_HOME": str(self.home),
                ENV_HOME: str(self.home),
                ENV_NAME: name,
                ENV_SUPERVISED: "1",
                "PYTHONPATH": f"{PROJECT_ROOT}{os.pathsep}{path}" if path else str(PROJECT_ROOT),
            }
        )
        return env

    def spawn(self, name: str, command: Sequence[str], output: Path) -> ProcessHandle:
        output.parent.mkdir(parents=True, exist_ok=True)
        with output.open("ab") as out:
            popen = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.environment(name),
                cwd=self.home,
                start_new_session=True,
            )
        return _Handle(popen.pid, popen)

    def adopt(self, pid: int) -> ProcessHandle | None:
        handle = _Handle(pid, None)
        return handle if handle.alive() else None

    def signal(self, handle: ProcessHandle, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(handle.pid, signum)

    def kill_tree(self, handle: ProcessHandle) -> None:
        # Everything in the service's session carries its markers, including helpers that moved
        # to a process group of their own. A dead pid is not signalled: it may be reused.
        victims = {
            found.pid
            for found in self.find_managed()
            if found.session == handle.pid and found.pid != handle.pid
        }
        if handle.alive():
            victims.add(handle.pid)
            with contextlib.suppress(psutil.Error):
                victims.update(child.pid for child in psutil.Process(handle.pid).children(recursive=True))
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def find_managed(self) -> list[FoundProcess]:
        found = []
        me, home = os.getpid(), str(self.home)
        for process in psutil.process_iter(["pid", "uids"]):
            if process.pid == me or process.info["uids"] is None or process.info["uids"].real != os.getuid():
                continue
            try:
                environ = process.environ()
                if environ.get(ENV_HOME) != home or ENV_NAME not in environ:
                    continue
                if process.status() == psutil.STATUS_ZOMBIE:
                    continue
                found.append(
                    FoundProcess(
                        name=environ[ENV_NAME],
                        pid=process.pid,
                        command=tuple(process.cmdline()),
                        session=os.getsid(process.pid),
                        age_s=max(0.0, time.time() - process.create_time()),
                    )
                )
            except (psutil.Error, ProcessLookupError):
                continue
        return found

    def sample(self, pid: int, *, children: bool = True) -> Sample | None:
        """Memory (RSS, and PSS where the OS has it) and CPU of a process (and its children).

        None when the process is gone (it may end between the caller choosing it and this call).
        Safe to call from several threads at once.
        """
        with self._sample_lock:
            return self._sample(pid, children=children)

    def _sample(self, pid: int, *, children: bool) -> Sample | None:
        try:
            process = self._sampled.get(pid)
            if process is None:
                process = self._sampled[pid] = psutil.Process(pid)
            family = [process, *(process.children(recursive=True) if children else [])]
        except psutil.Error:
            self._sampled.pop(pid, None)
            return None
        rss, pss, cpu = 0, 0, 0.0
        pss_known = True
        for member in family:
            try:
                if member is not process:
                    member = self._sampled.setdefault(member.pid, member)
                cpu += member.cpu_percent(None)
                try:
                    info = member.memory_full_info()
                    rss += info.rss
                    pss += getattr(info, "pss", 0)
                    pss_known = pss_known and hasattr(info, "pss")
                except psutil.AccessDenied:
                    rss += member.memory_info().rss
                    pss_known = False
            except psutil.Error:
                continue
        self._forget_dead()
        return Sample(memory_rss=rss, memory_pss=pss if pss_known else None, cpu_percent=round(cpu, 1))

    def _forget_dead(self) -> None:
        for pid in [pid for pid, process in self._sampled.items() if not process.is_running()]:
            del self._sampled[pid]


def _pidfd_open(pid: int) -> int | None:
    if not hasattr(os, "pidfd_open") or not sys.platform.startswith("linux"):
        return None
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None


async def _readable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)
