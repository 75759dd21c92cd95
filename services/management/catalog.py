"""Which services the manager runs, how to start each one, and what each depends on.

The default graph is DESIGN.md's. ``[manager.services.<name>]`` in ``config.toml`` changes a
service (its command, dependencies, timeouts) or adds a new one; ``enabled = false`` leaves one
out. Redis is not in the graph: it is the root every service implicitly depends on.
"""

from __future__ import annotations

import graphlib
import importlib.util
import logging
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from services.base.config import Settings, register_section
from services.base.errors import ConfigError

log = logging.getLogger("services.management")

# DESIGN.md: market_data, sentiment and ml_model are independent; prediction uses all three;
# the scheduler calls prediction (and anything else) on a schedule; paper trading takes
# prediction's signals and market_data's prices.
DEFAULT_GRAPH: Mapping[str, tuple[str, ...]] = {
    "market_data": (),
    "sentiment": (),
    "ml_model": (),
    "prediction": ("market_data", "sentiment", "ml_model"),
    "paper_trading": ("prediction", "market_data"),
    "scheduler": ("prediction",),
}

REDIS = "redis"
MANAGER = "manager"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceConfig:
    """One ``[manager.services.<name>]`` table; unset fields keep the default."""

    enabled: bool = True
    # argv; default: this interpreter running ``-m services.<name>``.
    command: tuple[str, ...] = ()
    depends_on: tuple[str, ...] | None = None
    start_timeout_s: float | None = None
    stop_timeout_s: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ManagerConfig:
    services: Mapping[str, ServiceConfig] = field(default_factory=dict)
    # False: run only the services named in [manager.services], not DESIGN's default set.
    default_services: bool = True
    # Restart backoff after a crash: initial, doubling, capped.
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    # Running this long without a crash resets the backoff.
    stable_after_s: float = 60.0
    # This many failed starts or crashes within the window marks a service FATAL.
    max_failures: int = 5
    failure_window_s: float = 300.0
    start_timeout_s: float = 30.0
    # Each stop step (shutdown RPC, then SIGTERM) gets this long before the next; then SIGKILL.
    stop_timeout_s: float = 10.0
    health_timeout_s: float = 2.0
    # A running service whose health answers nothing this long is hung: logged, alerted, restarted.
    hung_after_s: float = 30.0
    # How often the manager samples every process's memory and CPU.
    sample_interval_s: float = 2.0
    backup_keep_days: int = 14
    # When set, Prometheus text metrics for every service on 127.0.0.1:<port>.
    metrics_port: int | None = None

    def __post_init__(self) -> None:
        if self.backoff_initial_s <= 0 or self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_initial_s must be > 0 and <= backoff_max_s")
        if self.max_failures < 1:
            raise ValueError("max_failures must be at least 1")
        durations = ("stable_after_s", "failure_window_s", "start_timeout_s", "stop_timeout_s",
                     "health_timeout_s", "sample_interval_s", "hung_after_s")  # fmt: skip
        for name in durations:
            if not 0 < getattr(self, name) <= 86_400:
                raise ValueError(f"{name} must be above 0 and at most 86400")
        if not 1 <= self.backup_keep_days <= 3650:
            raise ValueError("backup_keep_days must be between 1 and 3650")
        if self.metrics_port is not None and not 0 < self.metrics_port < 65536:
            raise ValueError(f"metrics_port {self.metrics_port} is not a TCP port")


register_section("manager", ManagerConfig)


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    name: str
    command: tuple[str, ...]
    depends_on: tuple[str, ...]
    start_timeout_s: float
    stop_timeout_s: float
    # A "service" answers JSON-RPC on run/<name>.sock; "redis" answers PING on run/redis.sock.
    kind: Literal["service", "redis"] = "service"


@dataclass(frozen=True, slots=True)
class Catalog:
    """The services to run, in a dependency order that is known to have no cycle."""

    specs: Mapping[str, ServiceSpec]
    # Default services whose package is not installed, so they cannot run here.
    missing: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        return list(self.specs)

    def with_dependencies(self, names: Iterable[str]) -> list[str]:
        """``names`` and everything they depend on, dependencies first."""
        wanted: set[str] = set()
        pending = list(names)
        while pending:
            name = pending.pop()
            if name not in wanted:
                wanted.add(name)
                pending.extend(self.specs[name].depends_on)
        return [name for name in self.specs if name in wanted]

    def dependents(self, name: str) -> list[str]:
        return [spec.name for spec in self.specs.values() if name in spec.depends_on]


def default_command(name: str) -> tuple[str, ...]:
    return (sys.executable, "-m", f"services.{name}")


def is_installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(f"services.{name}.__main__") is not None
    except ModuleNotFoundError:
        return False


def build_catalog(settings: Settings) -> Catalog:
    return catalog_from_config(settings.section("manager", ManagerConfig))


def catalog_from_config(config: ManagerConfig, *, installed: Callable[[str], bool] = is_installed) -> Catalog:
    """The configured services in dependency order; a cycle or unknown dependency is a ``ConfigError``."""
    for name in config.services:
        if name in (REDIS, MANAGER) or not name.isidentifier():
            raise ConfigError(f"[manager.services.{name}]: {name!r} cannot be a service name")

    graph: dict[str, tuple[str, ...]] = {}
    defaults = DEFAULT_GRAPH if config.default_services else {}
    for name in {**defaults, **config.services}:
        override = config.services.get(name, ServiceConfig())
        if not override.enabled:
            continue
        depends_on = override.depends_on
        if depends_on is None:
            depends_on = DEFAULT_GRAPH.get(name, ())
        graph[name] = tuple(depends_on)

    # A default service without its package (and no command of its own) cannot run here.
    missing = sorted(
        name
        for name in graph
        if name in DEFAULT_GRAPH
        and not config.services.get(name, ServiceConfig()).command
        and not installed(name)
    )
    for name in _close_over_dependents(graph, missing):
        if name in missing:
            log.info("service %s is not installed here; it will not be started", name)
        else:
            log.warning("service %s will not be started: a service it needs is not installed", name)
            missing.append(name)
        del graph[name]

    for name, depends_on in graph.items():
        for dependency in depends_on:
            if dependency == REDIS:
                continue
            if dependency == name:
                raise ConfigError(f"[manager.services.{name}]: a service cannot depend on itself")
            if dependency not in graph:
                raise ConfigError(
                    f"[manager.services.{name}]: depends on unknown or disabled service {dependency!r}"
                )
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        cycle = " -> ".join(exc.args[1])
        raise ConfigError(f"[manager.services]: dependency cycle {cycle}") from None

    specs = {}
    for name in order:
        override = config.services.get(name, ServiceConfig())
        specs[name] = ServiceSpec(
            name=name,
            command=override.command or default_command(name),
            depends_on=tuple(d for d in graph[name] if d != REDIS),
            start_timeout_s=override.start_timeout_s or config.start_timeout_s,
            stop_timeout_s=override.stop_timeout_s or config.stop_timeout_s,
        )
    return Catalog(specs=specs, missing=tuple(sorted(missing)))


def _close_over_dependents(graph: Mapping[str, tuple[str, ...]], missing: list[str]) -> list[str]:
    """``missing`` plus every service that (transitively) depends on one of them."""
    result = set(missing)
    changed = True
    while changed:
        changed = False
        for name, depends_on in graph.items():
            if name not in result and result.intersection(depends_on):
                result.add(name)
                changed = True
    return sorted(result)
