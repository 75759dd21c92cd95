"""Per-method counts, errors and latency percentiles."""

from __future__ import annotations

import random

import pytest

from services.base.metrics import LATENCY_WINDOW, Metrics


def test_empty_metrics() -> None:
    metrics = Metrics()
    assert metrics.methods() == {}
    assert metrics.counters == {}


def test_counts_calls_and_errors_per_method() -> None:
    metrics = Metrics()
    for ok in (True, True, False, True, False):
        metrics.record_call("orders.place", 0.010, ok)
    metrics.record_call("quotes.get", 0.001, True)
    stats = metrics.methods()
    assert list(stats) == ["orders.place", "quotes.get"]  # sorted by name
    assert stats["orders.place"]["calls"] == 5
    assert stats["orders.place"]["errors"] == 2
    assert stats["quotes.get"]["calls"] == 1
    assert stats["quotes.get"]["errors"] == 0


def test_single_call_percentiles() -> None:
    metrics = Metrics()
    metrics.record_call("m", 0.0125, True)
    stats = metrics.methods()["m"]
    assert stats["p50_ms"] == pytest.approx(12.5)
    assert stats["p99_ms"] == pytest.approx(12.5)


def test_percentiles_on_known_latencies() -> None:
    metrics = Metrics()
    latencies_ms = list(range(1, 102))  # 1 ms .. 101 ms
    shuffled = latencies_ms[:]
    random.Random(7).shuffle(shuffled)  # order of arrival must not matter
    for ms in shuffled:
        metrics.record_call("m", ms / 1000, True)
    stats = metrics.methods()["m"]
    assert stats["calls"] == 101
    assert stats["p50_ms"] == pytest.approx(51.0)
    assert stats["p99_ms"] == pytest.approx(100.0)


def test_p99_sees_a_slow_tail() -> None:
    metrics = Metrics()
    for _ in range(980):
        metrics.record_call("m", 0.002, True)
    for _ in range(20):
        metrics.record_call("m", 0.500, True)
    stats = metrics.methods()["m"]
    assert stats["p50_ms"] == pytest.approx(2.0)
    assert stats["p99_ms"] == pytest.approx(500.0)


def test_failed_calls_count_in_latency() -> None:
    metrics = Metrics()
    metrics.record_call("m", 0.004, False)
    metrics.record_call("m", 0.004, False)
    stats = metrics.methods()["m"]
    assert stats["errors"] == 2
    assert stats["p50_ms"] == pytest.approx(4.0)


def test_latency_window_is_bounded_but_counts_are_not() -> None:
    metrics = Metrics()
    # A window full of slow calls, then a window full of fast ones: only the fast ones remain.
    for _ in range(LATENCY_WINDOW):
        metrics.record_call("m", 1.0, False)
    for _ in range(LATENCY_WINDOW):
        metrics.record_call("m", 0.001, True)
    stats = metrics.methods()["m"]
    assert stats["calls"] == 2 * LATENCY_WINDOW
    assert stats["errors"] == LATENCY_WINDOW
    assert stats["p50_ms"] == pytest.approx(1.0)
    assert stats["p99_ms"] == pytest.approx(1.0)


def test_window_keeps_the_most_recent_calls() -> None:
    metrics = Metrics()
    for _ in range(LATENCY_WINDOW):
        metrics.record_call("m", 0.001, True)
    # One more slow call than 1% of the window: it must show at p99 once it is in the window.
    for _ in range(LATENCY_WINDOW // 50):
        metrics.record_call("m", 0.250, True)
    assert metrics.methods()["m"]["p99_ms"] == pytest.approx(250.0)
    assert metrics.methods()["m"]["p50_ms"] == pytest.approx(1.0)


def test_counters() -> None:
    metrics = Metrics()
    metrics.incr("events.published")
    metrics.incr("events.published")
    metrics.incr("events.dropped", 5)
    assert metrics.counters["events.published"] == 2
    assert metrics.counters["events.dropped"] == 5
    assert metrics.counters["never"] == 0
