"""The supervisor's Prometheus exporter: families, values, malformed snapshots and a real scrape."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.base.errors import ConfigError
from services.management.prometheus import Exporter, MetricsSnapshot, StackCollector, render_text
from services.management.wire import ProcessStatus, StackStatus, blank_process_status


def _process(name: str, state: str, **fields: Any) -> ProcessStatus:
    process = blank_process_status(name, state, since="2024-05-01T00:00:00+00:00")
    process.update(fields)  # type: ignore[typeddict-item]
    return process


def _status() -> StackStatus:
    return {
        "manager": {
            "pid": 100,
            "home": "/home/trader/.asx-trading",
            "uptime_s": 3600.0,
            "redis_url": "unix:///home/trader/.asx-trading/run/redis.sock",
            "redis_embedded": True,
            "adoptions": [],
            "not_installed": [],
        },
        "processes": [
            _process(
                "redis", "running", pid=101, uptime_s=3599.5, memory_rss=8_000_000, memory_pss=6_000_000
            ),
            _process(
                "market_data",
                "running",
                pid=102,
                uptime_s=3590.25,
                restarts=2,
                memory_rss=60_000_000,
                memory_pss=45_000_000,
                cpu_percent=3.5,
                health="ok",
                depends_on=["redis"],
            ),
            _process("sentiment", "fatal", restarts=5, last_error="exited with code 1", depends_on=["redis"]),
        ],
        "total_memory_rss": 68_000_000,
        "total_memory_pss": 51_000_000,
    }


def _market_data_metrics(health_calls: int = 12) -> dict[str, Any]:
    """A ``metrics`` result shaped as BaseService.metrics returns it."""
    return {
        "service": "market_data",
        "methods": {
            "health": {"calls": health_calls, "errors": 0, "p50_ms": 0.25, "p99_ms": 1.5},
            "prices.latest": {"calls": 40, "errors": 3, "p50_ms": 12.0, "p99_ms": None},
        },
        "events": {"published": 17, "received": 0, "consumed": 0, "dropped": 1, "durable_sent": 0},
        "counters": {"yahoo.fetches": 9, "cache.hits": 31},
        "rpc": {"connections": 2, "in_flight": 1},
        "memory_rss": 60_000_000,
        "cpu_seconds": 12.75,
        "cpu_percent": 3.5,
    }


def _snapshot() -> MetricsSnapshot:
    return MetricsSnapshot(status=_status(), services={"market_data": _market_data_metrics()})


def _samples(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Sample (name, labels) -> value, from parsing the text format back."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    }


def _key(sample: str, /, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return sample, frozenset(labels.items())


def test_render_text_exposes_exact_sample_lines() -> None:
    lines = render_text(_snapshot()).decode().splitlines()
    for expected in (
        'asx_up{service="redis"} 1.0',
        'asx_up{service="market_data"} 1.0',
        'asx_up{service="sentiment"} 0.0',
        'asx_process_state{service="sentiment",state="fatal"} 1.0',
        'asx_process_state{service="sentiment",state="running"} 0.0',
        'asx_restarts_total{service="sentiment"} 5.0',
        'asx_memory_rss_bytes{service="market_data"} 6e+07',
        'asx_uptime_seconds{service="market_data"} 3590.25',
        'asx_rpc_calls_total{method="health",service="market_data"} 12.0',
        'asx_rpc_errors_total{method="prices.latest",service="market_data"} 3.0',
        'asx_rpc_latency_seconds{method="health",quantile="0.5",service="market_data"} 0.00025',
        'asx_rpc_latency_seconds{method="health",quantile="0.99",service="market_data"} 0.0015',
        'asx_rpc_latency_seconds{method="prices.latest",quantile="0.5",service="market_data"} 0.012',
        'asx_events_total{kind="published",service="market_data"} 17.0',
        'asx_service_counter_total{name="cache.hits",service="market_data"} 31.0',
        'asx_rpc_in_flight{service="market_data"} 1.0',
        'asx_cpu_seconds_total{service="market_data"} 12.75',
        "asx_stack_memory_pss_bytes 5.1e+07",
        "# TYPE asx_rpc_calls_total counter",
        "# TYPE asx_rpc_latency_seconds gauge",
    ):
        assert expected in lines
    # A p99 of None and memory the OS does not report are skipped, not exposed as 0 or NaN.
    assert not any(
        line.startswith('asx_rpc_latency_seconds{method="prices.latest",quantile="0.99"') for line in lines
    )
    assert not any(line.startswith('asx_memory_pss_bytes{service="sentiment"') for line in lines)


def test_parsed_families_and_values() -> None:
    text = render_text(_snapshot())
    families = {family.name: family for family in text_string_to_metric_families(text.decode())}
    # The parser reports counter families without their _total suffix.
    assert families.keys() == {
        "asx_up",
        "asx_process_state",
        "asx_restarts",
        "asx_memory_rss_bytes",
        "asx_memory_pss_bytes",
        "asx_cpu_percent",
        "asx_uptime_seconds",
        "asx_stack_memory_rss_bytes",
        "asx_stack_memory_pss_bytes",
        "asx_rpc_calls",
        "asx_rpc_errors",
        "asx_rpc_latency_seconds",
        "asx_events",
        "asx_service_counter",
        "asx_rpc_connections",
        "asx_rpc_in_flight",
        "asx_cpu_seconds",
    }
    assert families["asx_rpc_calls"].type == "counter"
    assert families["asx_up"].type == "gauge"

    samples = _samples(text)
    assert samples[_key("asx_memory_pss_bytes", service="redis")] == 6_000_000
    assert samples[_key("asx_cpu_percent", service="market_data")] == 3.5
    assert samples[_key("asx_restarts_total", service="market_data")] == 2
    assert samples[_key("asx_stack_memory_rss_bytes")] == 68_000_000
    assert samples[_key("asx_rpc_calls_total", service="market_data", method="prices.latest")] == 40
    assert samples[_key("asx_rpc_connections", service="market_data")] == 2
    assert samples[_key("asx_service_counter_total", service="market_data", name="yahoo.fetches")] == 9
    for kind, value in (
        ("published", 17),
        ("received", 0),
        ("consumed", 0),
        ("dropped", 1),
        ("durable_sent", 0),
    ):
        assert samples[_key("asx_events_total", service="market_data", kind=kind)] == value
    # Exactly one state is 1 per process, and every process of the status is listed, Redis included.
    states = families["asx_process_state"].samples
    assert sorted(s.labels["service"] for s in states if s.value == 1) == [
        "market_data",
        "redis",
        "sentiment",
    ]
    assert {s.labels["service"] for s in families["asx_up"].samples} == {"redis", "market_data", "sentiment"}
    # The fatal service has no metrics result, so it has no per-method samples.
    assert all(s.labels["service"] == "market_data" for s in families["asx_rpc_calls"].samples)


def test_unknown_state_is_still_exposed() -> None:
    status = _status()
    status["processes"] = [_process("paper_trading", "paused")]
    samples = _samples(render_text(MetricsSnapshot(status=status, services={})))
    assert samples[_key("asx_up", service="paper_trading")] == 0
    assert samples[_key("asx_process_state", service="paper_trading", state="paused")] == 1
    assert samples[_key("asx_process_state", service="paper_trading", state="running")] == 0


def test_empty_snapshot_renders_families_without_samples() -> None:
    text = render_text(MetricsSnapshot(status=None, services={}))
    families = list(text_string_to_metric_families(text.decode()))
    assert families
    assert all(not family.samples for family in families)


def test_malformed_snapshot_still_renders_what_it_can() -> None:
    status: Any = {
        "manager": None,
        "processes": [
            None,
            "redis",
            {"state": "running"},  # no name
            {"name": 7, "state": "running"},  # name of the wrong type
            {"name": "market_data", "state": None, "restarts": "two", "memory_rss": [1], "uptime_s": True},
            {"name": "prediction", "state": "running", "memory_rss": 10**400, "cpu_percent": float("nan")},
        ],
        "total_memory_rss": None,
        # total_memory_pss missing
    }
    services: Any = {
        "market_data": {
            "methods": {
                "health": None,
                "quote": {"calls": "3", "errors": None, "p50_ms": "fast"},
                5: {"calls": 1},
                "ok": {"calls": 4},
            },
            "events": ["published"],
            "counters": {"good": 2, "bad": {"nested": 1}, None: 3},
            "rpc": None,
            "cpu_seconds": None,
        },
        "sentiment": None,
        "prediction": "not a mapping",
        None: {"cpu_seconds": 1.0},
    }
    text = render_text(MetricsSnapshot(status=status, services=services))
    samples = _samples(text)
    assert samples[_key("asx_up", service="prediction")] == 1
    assert samples[_key("asx_rpc_calls_total", service="market_data", method="ok")] == 4
    assert samples[_key("asx_service_counter_total", service="market_data", name="good")] == 2
    assert _key("asx_memory_rss_bytes", service="prediction") not in samples
    assert _key("asx_up", service="market_data") not in samples  # its state is unreadable
    assert not [
        key for key in samples if key[0] in {"asx_stack_memory_rss_bytes", "asx_stack_memory_pss_bytes"}
    ]
    assert {name for name, _ in samples} == {
        "asx_up",
        "asx_process_state",
        "asx_cpu_percent",
        "asx_rpc_calls_total",
        "asx_service_counter_total",
    }


def test_status_of_the_wrong_type_renders() -> None:
    bad: Any = ["not", "a", "status"]
    text = render_text(MetricsSnapshot(status=bad, services=bad))
    assert b"# TYPE asx_up gauge" in text


def test_registration_does_not_take_a_snapshot() -> None:
    calls = 0

    def snapshot() -> MetricsSnapshot:
        nonlocal calls
        calls += 1
        return _snapshot()

    collector = StackCollector(snapshot)
    assert collector.describe() == []
    exporter = Exporter(snapshot, port=0)
    assert calls == 0
    assert len(list(collector.collect())) == 17
    assert calls == 1
    exporter.close()  # never started: nothing to do


# --- over real HTTP ---------------------------------------------------------------------------


class _Source:
    """Stands in for the manager: the latest snapshot, changed between scrapes."""

    def __init__(self) -> None:
        self.health_calls = 12
        self.reads = 0

    def __call__(self) -> MetricsSnapshot:
        self.reads += 1
        metrics = _market_data_metrics(self.health_calls)
        return MetricsSnapshot(status=_status(), services={"market_data": metrics})


@pytest.fixture
def exporter() -> Iterator[tuple[Exporter, _Source]]:
    source = _Source()
    exporter = Exporter(source, port=0)
    exporter.start()
    yield exporter, source
    exporter.close()


def _scrape(port: int, path: str = "/metrics") -> tuple[str, str]:
    # No proxy: an http_proxy in the environment must not intercept a loopback scrape.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return response.headers["Content-Type"], response.read().decode()


def test_scrape_over_http_reads_a_fresh_snapshot(exporter: tuple[Exporter, _Source]) -> None:
    server, source = exporter
    assert server.port > 0
    assert source.reads == 0

    content_type, body = _scrape(server.port)
    assert content_type.startswith("text/plain")
    assert 'asx_rpc_calls_total{method="health",service="market_data"} 12.0' in body.splitlines()
    assert source.reads == 1

    source.health_calls = 13
    _, body = _scrape(server.port)
    assert 'asx_rpc_calls_total{method="health",service="market_data"} 13.0' in body.splitlines()
    assert source.reads == 2


def test_listens_on_loopback_only(exporter: tuple[Exporter, _Source]) -> None:
    server, _ = exporter
    listening = [
        conn.laddr
        for conn in psutil.Process().net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == server.port
    ]
    assert [address.ip for address in listening] == ["127.0.0.1"]


def test_close_frees_the_port(exporter: tuple[Exporter, _Source]) -> None:
    server, source = exporter
    port = server.port
    _scrape(port)
    server.close()
    server.close()  # idempotent
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    again = Exporter(source, port=port)
    again.start()
    try:
        assert again.port == port
        _, body = _scrape(port)
        assert "asx_up" in body
    finally:
        again.close()


def test_port_in_use_is_a_config_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        exporter = Exporter(_Source(), port=port)
        with pytest.raises(ConfigError, match=rf"\b{port}\b") as caught:
            exporter.start()
    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.data["port"] == port


def test_empty_host_is_refused() -> None:
    with pytest.raises(ConfigError, match="address"):
        Exporter(_Source(), port=0, host="")


def test_start_twice_is_refused(exporter: tuple[Exporter, _Source]) -> None:
    server, _ = exporter
    with pytest.raises(RuntimeError, match="already started"):
        server.start()
