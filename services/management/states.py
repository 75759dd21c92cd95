"""The states a supervised process goes through, and which changes are allowed.

STOPPED -> STARTING -> RUNNING is a normal start: a process counts as RUNNING only once its
socket answers ``health`` with ok or degraded. A crash or a failed start goes to BACKOFF (a
retry is scheduled) or, after too many failures in the window, to FATAL (left stopped until a
user starts it again). Adopting a process a previous manager left running goes straight from
STOPPED to RUNNING.
"""

from __future__ import annotations

from enum import StrEnum


class ProcessState(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    FATAL = "fatal"
    # Redis run by someone else (REDIS_URL): watched, never started or stopped.
    EXTERNAL = "external"


S = ProcessState

TRANSITIONS: dict[ProcessState, frozenset[ProcessState]] = {
    S.STOPPED: frozenset({S.STARTING, S.RUNNING}),
    S.STARTING: frozenset({S.RUNNING, S.BACKOFF, S.FATAL, S.STOPPING}),
    S.RUNNING: frozenset({S.BACKOFF, S.FATAL, S.STOPPING}),
    S.BACKOFF: frozenset({S.STARTING, S.STOPPING}),
    S.STOPPING: frozenset({S.STOPPED}),
    S.FATAL: frozenset({S.STARTING, S.STOPPING}),
    S.EXTERNAL: frozenset(),
}

# States in which a process of ours may exist.
LIVE = frozenset({S.STARTING, S.RUNNING, S.STOPPING})
# States a start request waits for.
SETTLED = frozenset({S.RUNNING, S.FATAL, S.STOPPED})


def allowed(old: ProcessState, new: ProcessState) -> bool:
    return new in TRANSITIONS[old]
