"""The supervisor's optional Prometheus exporter: every service's metrics in the text format.

The manager's sampler keeps the latest ``StackStatus`` and each running service's ``metrics`` RPC
result in memory. This module does no RPC of its own: at every scrape it reads a ``MetricsSnapshot``
through a callable and turns it into metric families. The snapshot comes from another thread (the
HTTP server's), so the callable should only hand over references the manager replaces wholesale.

A snapshot is read defensively: a missing key, a None or a value of the wrong type drops that one
sample and never fails the scrape.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from services.base.errors import ConfigError
from services.management.states import ProcessState
from services.management.wire import StackStatus

_Family = GaugeMetricFamily | CounterMetricFamily

# (quantile label, key of a method's stats in the metrics result)
_LATENCY_QUANTILES = (("0.5", "p50_ms"), ("0.99", "p99_ms"))

_CLOSE_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """What one scrape exposes: the stack status and each service's latest ``metrics`` result."""

    status: StackStatus | None
    # Service name -> the result of its ``metrics`` RPC method.
    services: Mapping[str, Mapping[str, Any]]


class StackCollector:
    """A prometheus_client custom collector that reads a fresh snapshot at every ``collect()``."""

    def __init__(self, snapshot: Callable[[], MetricsSnapshot]) -> None:
        self._snapshot = snapshot

    def describe(self) -> list[Metric]:
        """Nothing: registering the collector must not take a snapshot."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The process families (from the stack status), then the per-service families."""
        snapshot = self._snapshot()
        yield from _process_families(snapshot.status)
        yield from _service_families(snapshot.services)


def render_text(snapshot: MetricsSnapshot) -> bytes:
    """The snapshot in the Prometheus text format, as a scrape of the exporter would return it."""
    return generate_latest(_registry(lambda: snapshot))


class Exporter:
    """Serves a ``StackCollector`` over HTTP on ``host:port`` (loopback by default), in a thread.

    ``start()`` binds at once, so an unusable port is reported at start-up. ``close()`` blocks for
    up to half a second (the server's poll interval); call it from a thread in async code.
    """

    def __init__(
        self, snapshot: Callable[[], MetricsSnapshot], *, port: int, host: str = "127.0.0.1"
    ) -> None:
        if not host:
            # An empty address would make the server listen on every interface.
            raise ConfigError("the metrics exporter needs an address to listen on, not an empty one")
        self._registry = _registry(snapshot)
        self._host = host
        self._requested_port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The bound port once started (the real one when asked for port 0), else the requested one."""
        if self._server is not None:
            return int(self._server.server_port)
        return self._requested_port

    def start(self) -> None:
        """Listen and serve in a daemon thread; ``ConfigError`` names the port if it cannot listen."""
        if self._server is not None:
            raise RuntimeError("the metrics exporter is already started")
        try:
            self._server, self._thread = start_http_server(
                self._requested_port, addr=self._host, registry=self._registry
            )
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ConfigError(
                f"manager.metrics_port {self._requested_port}: cannot listen on "
                f"{self._host}:{self._requested_port}: {reason}",
                port=self._requested_port,
                host=self._host,
            ) from exc

    def close(self) -> None:
        """Stop serving, free the port and join the server thread. Safe to call more than once."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(_CLOSE_TIMEOUT_S)


def _registry(snapshot: Callable[[], MetricsSnapshot]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StackCollector(snapshot))
    return registry


def _process_families(status: StackStatus | None) -> Iterator[Metric]:
    """One sample per process of the stack status (Redis included), and the stack totals."""
    up = GaugeMetricFamily("asx_up", "1 if the process is running, else 0.", labels=["service"])
    state = GaugeMetricFamily(
        "asx_process_state",
        "1 for the process's current state, 0 for the others.",
        labels=["service", "state"],
    )
    restarts = CounterMetricFamily(
        "asx_restarts", "Automatic restarts after crashes since the manager started.", labels=["service"]
    )
    rss = GaugeMetricFamily(
        "asx_memory_rss_bytes", "Resident memory of the process and its children.", labels=["service"]
    )
    pss = GaugeMetricFamily(
        "asx_memory_pss_bytes", "Proportional memory of the process and its children.", labels=["service"]
    )
    cpu = GaugeMetricFamily("asx_cpu_percent", "CPU use of the process, in percent.", labels=["service"])
    uptime = GaugeMetricFamily("asx_uptime_seconds", "Seconds since the process started.", labels=["service"])
    stack_rss = GaugeMetricFamily("asx_stack_memory_rss_bytes", "Resident memory of the whole stack.")
    stack_pss = GaugeMetricFamily("asx_stack_memory_pss_bytes", "Proportional memory of the whole stack.")

    status_fields = _mapping(status)
    for entry in _sequence(status_fields.get("processes")):
        process = _mapping(entry)
        name = process.get("name")
        if not isinstance(name, str):
            continue
        current = process.get("state")
        if isinstance(current, str):
            up.add_metric([name], 1.0 if current == ProcessState.RUNNING else 0.0)
            for known in _states_with(current):
                state.add_metric([name, known], 1.0 if known == current else 0.0)
        _add(restarts, [name], process.get("restarts"))
        _add(rss, [name], process.get("memory_rss"))
        _add(pss, [name], process.get("memory_pss"))
        _add(cpu, [name], process.get("cpu_percent"))
        _add(uptime, [name], process.get("uptime_s"))
    _add(stack_rss, [], status_fields.get("total_memory_rss"))
    _add(stack_pss, [], status_fields.get("total_memory_pss"))
    yield from (up, state, restarts, rss, pss, cpu, uptime, stack_rss, stack_pss)


def _service_families(services: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
    """Families from each service's own ``metrics`` result."""
    labels = ["service", "method"]
    calls = CounterMetricFamily("asx_rpc_calls", "RPC calls handled, per method.", labels=labels)
    errors = CounterMetricFamily("asx_rpc_errors", "RPC calls that failed, per method.", labels=labels)
    latency = GaugeMetricFamily(
        "asx_rpc_latency_seconds",
        "RPC latency quantile over the most recent calls, per method.",
        labels=[*labels, "quantile"],
    )
    events = CounterMetricFamily(
        "asx_events",
        "Events published, received, consumed, dropped or sent durably.",
        labels=["service", "kind"],
    )
    counters = CounterMetricFamily(
        "asx_service_counter", "The service's own counters.", labels=["service", "name"]
    )
    connections = GaugeMetricFamily("asx_rpc_connections", "Open RPC connections.", labels=["service"])
    in_flight = GaugeMetricFamily("asx_rpc_in_flight", "RPC calls being handled.", labels=["service"])
    cpu_seconds = CounterMetricFamily("asx_cpu_seconds", "CPU time used (user + system).", labels=["service"])

    for service, result in _str_items(services):
        fields = _mapping(result)
        for method, entry in _str_items(fields.get("methods")):
            stats = _mapping(entry)
            _add(calls, [service, method], stats.get("calls"))
            _add(errors, [service, method], stats.get("errors"))
            for quantile, key in _LATENCY_QUANTILES:
                milliseconds = _number(stats.get(key))
                if milliseconds is not None:
                    latency.add_metric([service, method, quantile], milliseconds / 1000)
        for kind, value in _str_items(fields.get("events")):
            _add(events, [service, kind], value)
        for name, value in _str_items(fields.get("counters")):
            _add(counters, [service, name], value)
        rpc = _mapping(fields.get("rpc"))
        _add(connections, [service], rpc.get("connections"))
        _add(in_flight, [service], rpc.get("in_flight"))
        _add(cpu_seconds, [service], fields.get("cpu_seconds"))
    yield from (calls, errors, latency, events, counters, connections, in_flight, cpu_seconds)


def _states_with(current: str) -> list[str]:
    """Every known process state, plus ``current`` if the manager reports one this module lacks."""
    known = [str(state) for state in ProcessState]
    return known if current in known else [*known, current]


def _add(family: _Family, labels: Sequence[str], value: object) -> None:
    """Add a sample if ``value`` is a number; skip it otherwise."""
    number = _number(value)
    if number is not None:
        family.add_metric(labels, number)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value)
    except OverflowError:  # an int too large for a float
        return None


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _sequence(value: object) -> Sequence[Any]:
    return value if isinstance(value, list | tuple) else ()


def _str_items(value: object) -> Iterator[tuple[str, Any]]:
    """The items of a mapping whose keys are strings (label values must be)."""
    for key, item in _mapping(value).items():
        if isinstance(key, str):
            yield key, item
