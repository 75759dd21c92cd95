"""Per-method call counts, error counts and latency percentiles, plus free-form counters."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TypedDict

# Percentiles come from the most recent calls, so memory per method stays fixed.
LATENCY_WINDOW = 2048


class MethodStats(TypedDict):
    calls: int
    errors: int
    p50_ms: float | None
    p99_ms: float | None


@dataclass(slots=True)
class _MethodRecord:
    calls: int = 0
    errors: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))


class Metrics:
    def __init__(self) -> None:
        self._methods: dict[str, _MethodRecord] = {}
        self.counters: Counter[str] = Counter()

    def record_call(self, method: str, seconds: float, ok: bool) -> None:
        record = self._methods.get(method)
        if record is None:
            record = self._methods[method] = _MethodRecord()
        record.calls += 1
        if not ok:
            record.errors += 1
        record.latencies.append(seconds)

    def incr(self, name: str, amount: int = 1) -> None:
        self.counters[name] += amount

    def methods(self) -> dict[str, MethodStats]:
        return {name: _stats(record) for name, record in sorted(self._methods.items())}


def _stats(record: _MethodRecord) -> MethodStats:
    ordered = sorted(record.latencies)
    return {
        "calls": record.calls,
        "errors": record.errors,
        "p50_ms": _percentile_ms(ordered, 0.50),
        "p99_ms": _percentile_ms(ordered, 0.99),
    }


def _percentile_ms(ordered: list[float], fraction: float) -> float | None:
    if not ordered:
        return None
    index = min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))
    return round(ordered[index] * 1000, 3)
