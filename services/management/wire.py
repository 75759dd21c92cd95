"""The manager's wire types: what ``status``, ``health``, ``alerts`` and ``backup`` return."""

from __future__ import annotations

from typing import Any, Literal, TypedDict


class ProcessStatus(TypedDict):
    name: str
    state: str  # a ProcessState value
    pid: int | None
    uptime_s: float | None
    # Automatic restarts after crashes since the manager started.
    restarts: int
    # Memory of the process and its children: RSS, and PSS where the OS reports it.
    memory_rss: int | None
    memory_pss: int | None
    cpu_percent: float | None
    # The latest health status from the sampler: ok, degraded, failing, or None if not asked yet.
    health: str | None
    last_error: str | None
    depends_on: list[str]
    # UTC ISO time of the last state change.
    since: str
    # Seconds until the next automatic start, while in BACKOFF.
    retry_in_s: float | None


AdoptionAction = Literal["adopted", "replaced", "stopped"]


def blank_process_status(name: str, state: str, *, since: str) -> ProcessStatus:
    """A status with nothing known yet beyond the name and state; fill in what is."""
    return {
        "name": name,
        "state": state,
        "pid": None,
        "uptime_s": None,
        "restarts": 0,
        "memory_rss": None,
        "memory_pss": None,
        "cpu_percent": None,
        "health": None,
        "last_error": None,
        "depends_on": [],
        "since": since,
        "retry_in_s": None,
    }


class Adoption(TypedDict):
    name: str
    pid: int
    action: AdoptionAction
    reason: str


class ManagerInfo(TypedDict):
    pid: int
    home: str
    uptime_s: float
    redis_url: str
    redis_embedded: bool
    # What the manager did with processes an earlier manager left behind.
    adoptions: list[Adoption]
    # Default services whose package is not installed here.
    not_installed: list[str]
    memory_rss: int | None
    memory_pss: int | None


class StackStatus(TypedDict):
    manager: ManagerInfo
    # Redis first (when embedded or external), then every service in dependency order.
    processes: list[ProcessStatus]
    total_memory_rss: int
    total_memory_pss: int


class HealthEntry(TypedDict):
    name: str
    status: Literal["ok", "degraded", "failing", "down"]
    # The service's own health report, or None when it could not be asked.
    report: dict[str, Any] | None
    error: str | None


class Alert(TypedDict):
    ts: str
    type: str  # service_state, buy_rate_alert, risk_alert
    source: str
    message: str
    data: dict[str, Any]


class BackupResult(TypedDict):
    directory: str
    files: list[str]
    bytes: int
    removed: list[str]
    failed: dict[str, str]  # database file -> why it could not be backed up


class StartResult(TypedDict):
    ok: bool
    # name -> final state; failed -> name -> why.
    states: dict[str, str]
    failed: dict[str, str]
