"""``OsProcessControl.sample`` against real processes: gone pids and overlapping callers."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from services.management.processes import OsProcessControl, Sample


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def test_sampling_a_process_that_has_ended_gives_none(tmp_path: Path) -> None:
    # The manager picks the pids to sample, then samples them in a thread: one may end between.
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    control = OsProcessControl(tmp_path)
    assert control.sample(ended.pid) is None
    assert control.sample(ended.pid, children=False) is None


def test_sampling_a_process_that_ends_between_samples_gives_none(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    control = OsProcessControl(tmp_path)
    assert isinstance(control.sample(sleeper.pid), Sample)
    sleeper.kill()
    sleeper.wait()
    assert control.sample(sleeper.pid) is None
    assert isinstance(control.sample(os.getpid(), children=False), Sample)


def test_overlapping_samples_from_two_threads_do_not_fail(
    tmp_path: Path, sleeper: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sampler loop and the start RPC each sample in a worker thread; they may overlap.

    The first sample is held inside its sweep of the cache of known processes while a second
    thread samples a process not seen before. Unguarded, the second adds to the cache during the
    sweep and the first fails with "dictionary changed size during iteration".
    """
    control = OsProcessControl(tmp_path)
    first_inside, let_first_go = threading.Event(), threading.Event()
    is_running = psutil.Process.is_running

    def held_is_running(process: psutil.Process) -> bool:
        if threading.current_thread().name == "first" and not first_inside.is_set():
            first_inside.set()
            let_first_go.wait(10)
        return is_running(process)

    monkeypatch.setattr(psutil.Process, "is_running", held_is_running)
    results: dict[str, Sample | BaseException | None] = {}

    def sample(name: str, pid: int) -> None:
        try:
            results[name] = control.sample(pid, children=False)
        except BaseException as exc:
            results[name] = exc

    first = threading.Thread(target=sample, args=("first", os.getpid()), name="first")
    second = threading.Thread(target=sample, args=("second", sleeper.pid), name="second")
    first.start()
    assert first_inside.wait(10)
    second.start()
    second.join(0.5)  # unguarded, it is done within milliseconds; guarded, it waits for the first
    let_first_go.set()
    first.join(10)
    second.join(10)
    assert not first.is_alive()
    assert not second.is_alive()
    assert isinstance(results["first"], Sample), results["first"]
    assert isinstance(results["second"], Sample), results["second"]
