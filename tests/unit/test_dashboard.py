"""The dashboard: rendered headless to text, and collecting from real RPC servers on Unix sockets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from rich.console import Console

from services.base.config import TradingHome
from services.base.rpc import MethodTable, RpcServer, rpc_method
from services.management import dashboard
from services.management.dashboard import (
    MANAGER_DOWN,
    DashboardSnapshot,
    collect_snapshot,
    human_duration,
    megabytes,
    money,
    percent,
    render,
    run_dashboard,
)
from services.management.wire import Alert, ProcessStatus, StackStatus, blank_process_status

NOW = datetime(2024, 6, 3, 1, 15, 2, tzinfo=UTC)  # 11:15:02 in Sydney (AEST)
MB = 1024 * 1024


def process(name: str, state: str = "running", **fields: Any) -> ProcessStatus:
    status = blank_process_status(name, state, since="2024-06-03T01:00:00+00:00")
    status.update(fields)  # type: ignore[typeddict-item]
    return status


def stack_status(*processes: ProcessStatus, redis_url: str = "unix:///h/run/redis.sock") -> StackStatus:
    return {
        "manager": {
            "pid": 4242,
            "home": "/tmp/at-home",
            "uptime_s": 7500.0,
            "redis_url": redis_url,
            "redis_embedded": True,
            "adoptions": [],
            "not_installed": [],
        },
        "processes": list(processes),
        "total_memory_rss": 300 * MB,
        "total_memory_pss": 250 * MB,
    }


def full_status() -> StackStatus:
    return stack_status(
        process("redis", pid=1001, uptime_s=7400, memory_rss=8 * MB, health="ok"),
        process(
            "market_data",
            pid=1002,
            uptime_s=192,
            restarts=1,
            memory_rss=90 * MB,
            memory_pss=61.5 * MB,
            cpu_percent=2.5,
            health="ok",
        ),
        process("prediction", pid=1003, uptime_s=7500, memory_rss=120 * MB, health="degraded"),
        process(
            "paper_trading",
            "fatal",
            restarts=5,
            last_error="exited with status 1: [Errno 2] No such file or directory: 'x.db'",
        ),
        process("scheduler", pid=1005, uptime_s=42, health="ok"),
    )


ALERT: Alert = {
    "ts": "2024-06-03T01:10:00+00:00",
    "type": "risk_alert",
    "source": "paper_trading",
    "message": "drawdown 6.2% exceeds limit 5%",
    "data": {},
}


def full_snapshot(**changes: Any) -> DashboardSnapshot:
    fields: dict[str, Any] = {
        "taken_at": NOW,
        "home": "/tmp/at-home",
        "status": full_status(),
        "alerts": [
            ALERT,
            {**ALERT, "ts": "2024-06-03T00:10:00+00:00", "type": "service_state", "message": "older one"},
        ],
        "market": {
            "phase": "open",
            "reason": None,
            "is_trading_day": True,
            "next_open_local": "2024-06-04T10:00:00+10:00",
            "next_close_local": "2024-06-03T16:00:00+10:00",
        },
        "signals": [
            {
                "symbol": "CBA.AX",
                "signal": "BUY",
                "probability": 0.73,
                "cases": 812,
                "confidence": 0.4,
                "ts": "2024-06-03T01:00:00+00:00",
            },
            {
                "symbol": "WBC.AX",
                "signal": "SELL",
                "probability": None,
                "cases": 0,
                "confidence": 0.61,
                "ts": "2024-06-03T01:00:00Z",
            },
        ],
        "buy_rate": {"latest": 0.5, "rolling": 0.35, "threshold": 0.6, "alert_active": False},
        "portfolio": {
            "equity": "101234.56",
            "cash": "51234.56",
            "market_value": 50000,
            "day_pnl": "-234.50",
            "total_pnl": "1234.56",
            "exposure": 0.494,
        },
        "positions": [
            {
                "symbol": "NAB.AX",
                "quantity": 100,
                "avg_price": "35.10",
                "market_price": 36.2,
                "market_value": "3620.00",
                "unrealised_pnl": "110.00",
            }
        ],
    }
    fields.update(changes)
    return DashboardSnapshot(**fields)


def as_text(snapshot: DashboardSnapshot, width: int = 160) -> str:
    console = Console(record=True, width=width, force_terminal=False)
    console.print(render(snapshot))
    return console.export_text()


def line_with(text: str, needle: str) -> str:
    return next(line for line in text.splitlines() if needle in line)


# -- render ---------------------------------------------------------------------------------


def test_render_shows_every_panel() -> None:
    text = as_text(full_snapshot())

    assert "/tmp/at-home" in text
    assert "manager pid 4242" in text
    assert "up 2h 05m" in text
    assert "11:15:02" in text  # the snapshot time, in Sydney

    market = line_with(text, "market_data")
    for cell in ("running", "1002", "3m 12s", "61.5 MB", "2.5%", "ok"):
        assert cell in market  # PSS preferred over RSS
    assert "120.0 MB" in line_with(text, "prediction ")
    assert "42s" in line_with(text, "scheduler")
    paper = next(line for line in text.splitlines() if "paper_trading" in line and "fatal" in line)
    assert "exited with status 1" in paper  # brackets in the error are not taken for markup
    assert "Errno 2" in paper

    assert "Redis running" in text
    assert "embedded unix:///h/run/redis.sock" in text
    assert "Stack memory 250.0 MB (PSS)" in text

    assert "open" in line_with(text, "Phase")
    assert "yes" in line_with(text, "Trading day")
    assert "Tue 04 Jun 10:00" in line_with(text, "Next open")

    buy = line_with(text, "CBA.AX")
    assert "BUY" in buy
    assert "73% n=812" in buy  # the calibrated probability and its cases, not the confidence
    assert "11:00" in buy  # 01:00 UTC shown in Sydney time
    assert "SELL" in line_with(text, "WBC.AX")
    assert "uncalibrated" in line_with(text, "WBC.AX")
    assert "latest 50%  rolling 35%  threshold 60%" in text
    assert "ALERT" not in line_with(text, "Buy rate")

    assert "$101,234.56" in line_with(text, "Equity")
    assert "-$234.50" in line_with(text, "Day P&L")
    assert "+$1,234.56" in line_with(text, "Total P&L")
    assert "49.4%" in line_with(text, "Exposure")
    position = line_with(text, "NAB.AX")
    for cell in ("100", "$35.10", "$36.20", "$3,620.00", "+$110.00"):
        assert cell in position

    assert "drawdown 6.2% exceeds limit 5%" in text
    assert text.index("drawdown") < text.index("older one")  # newest first
    assert "SYNTHETIC" not in text
    assert "cannot show" not in text


def test_render_orders_alerts_newest_first_and_keeps_eight() -> None:
    alerts = [
        {**ALERT, "ts": f"2024-06-03T00:{minute:02d}:00+00:00", "message": f"alert number {minute}"}
        for minute in range(12)
    ]
    text = as_text(full_snapshot(alerts=alerts))

    shown = [line for line in text.splitlines() if "alert number" in line]
    assert len(shown) == 8
    assert "alert number 11" in shown[0]
    assert "alert number 4" in shown[-1]


@pytest.mark.parametrize("panel", ["market", "signals", "buy_rate", "portfolio", "positions"])
def test_synthetic_label_when_any_payload_says_so(panel: str) -> None:
    snapshot = full_snapshot()
    payload = getattr(snapshot, panel)
    marked = (
        [{**payload[0], "synthetic": True}] if isinstance(payload, list) else {**payload, "synthetic": True}
    )
    synthetic = full_snapshot(**{panel: marked})

    assert synthetic.synthetic
    assert "SYNTHETIC DATA" in line_with(as_text(synthetic), "ASX trading")


def test_no_synthetic_label_for_false_or_absent_flags() -> None:
    snapshot = full_snapshot(market={"phase": "open", "synthetic": False}, portfolio=None)

    assert not snapshot.synthetic
    assert "SYNTHETIC" not in as_text(snapshot)


def test_render_with_the_manager_down() -> None:
    snapshot = DashboardSnapshot(
        taken_at=NOW,
        home="/tmp/at-x",
        status_error=MANAGER_DOWN,
        errors={"market": "scheduler: state unknown (no status from the manager)", "alerts": MANAGER_DOWN},
    )

    text = as_text(snapshot)

    assert "manager is not running; start it with: tradingctl start" in text
    assert "/tmp/at-x" in text
    assert "scheduler: state unknown (no status from the manager)" in text
    assert "cannot show" not in text


def test_render_shows_panel_errors_instead_of_data() -> None:
    snapshot = full_snapshot(
        market=None,
        buy_rate=None,
        portfolio=None,
        positions=None,
        errors={
            "market": "scheduler: get_market_status did not answer within 1s",
            "buy_rate": "not available",
            "portfolio": "paper_trading is not running (state: fatal)",
            "positions": "paper_trading is not running (state: fatal)",
        },
    )

    text = as_text(snapshot)

    assert "get_market_status did not answer within 1s" in text
    assert "Buy rate not available" in text
    assert text.count("paper_trading is not running (state: fatal)") == 2
    assert "Equity" not in text
    assert "BUY" in line_with(text, "CBA.AX")


def test_render_redacts_a_redis_password() -> None:
    status = stack_status(process("redis", "external"), redis_url="redis://app:hunter2@db.local:6380/0")
    status["manager"]["redis_embedded"] = False

    text = as_text(full_snapshot(status=status))

    assert "hunter2" not in text
    assert "external redis://app:***@db.local:6380/0" in text


GARBAGE: dict[str, dict[str, Any]] = {
    "nones everywhere": {
        "status": {"manager": None, "processes": None, "total_memory_rss": None, "total_memory_pss": None},
        "alerts": [None, {"ts": None, "type": None, "source": None, "message": None}],
        "market": {"phase": None, "reason": None, "is_trading_day": None, "next_open_local": None},
        "signals": [None, {"symbol": None, "signal": None, "confidence": None, "ts": None}],
        "buy_rate": {"latest": None, "rolling": None, "threshold": None, "alert_active": None},
        "portfolio": {key: None for key in ("equity", "cash", "day_pnl", "total_pnl", "exposure")},
        "positions": [{"symbol": None, "quantity": None, "avg_price": None, "unrealised_pnl": None}],
    },
    "missing keys": {
        "status": {},
        "alerts": [{}],
        "market": {},
        "signals": [{}],
        "buy_rate": {},
        "portfolio": {},
        "positions": [{}],
    },
    "wrong types": {
        "status": {
            "manager": {"pid": "x", "uptime_s": "soon", "redis_url": 5, "not_installed": "ml_model"},
            "processes": [
                "redis",
                {
                    "name": 7,
                    "state": ["running"],
                    "pid": {"a": 1},
                    "uptime_s": "abc",
                    "memory_pss": "lots",
                    "memory_rss": -3,
                    "cpu_percent": "NaN",
                    "restarts": None,
                    "health": 3,
                    "last_error": {"nested": "[bold]markup[/bold]"},
                },
            ],
            "total_memory_pss": "inf",
        },
        "alerts": ["not an alert", {"ts": 12, "message": ["a", "b"]}],
        "market": {"phase": 3, "next_open_local": "not a time", "next_close_utc": 1717376400},
        "signals": [{"symbol": 1, "signal": 0.5, "confidence": "high", "ts": "yesterday", "degraded": "x"}],
        "buy_rate": {"latest": "x", "rolling": [], "threshold": {}, "alert_active": "yes"},
        "portfolio": {"equity": "lots", "cash": [], "day_pnl": "1e999999", "exposure": "1/2"},
        "positions": [{"symbol": [], "quantity": "1.5", "avg_price": "abc", "market_price": 1e308}],
    },
    "payloads of the wrong shape": {
        "status": ["not", "a", "dict"],
        "alerts": "nope",
        "market": [1, 2],
        "signals": {"symbol": "CBA.AX"},
        "buy_rate": 0.5,
        "portfolio": "100000.00",
        "positions": 3,
    },
}


@pytest.mark.parametrize("fields", GARBAGE.values(), ids=GARBAGE.keys())
def test_render_never_raises_on_odd_payloads(fields: dict[str, Any]) -> None:
    snapshot = DashboardSnapshot(taken_at=NOW, **fields)

    text = as_text(snapshot, width=100)

    assert "ASX trading" in text
    # Every panel handled the odd fields itself rather than falling back to its error box.
    assert "cannot show" not in text


def test_render_with_a_naive_time_and_a_narrow_console() -> None:
    text = as_text(full_snapshot(taken_at=datetime(2024, 6, 3, 1, 15)), width=40)

    assert "ASX trading" in text


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0s"), (42.9, "42s"), (192, "3m 12s"), (7500, "2h 05m"), (273600, "3d 04h"), (None, "—"), (-1, "—")],
)
def test_human_duration(seconds: object, shown: str) -> None:
    assert human_duration(seconds) == shown


def test_number_formats() -> None:
    assert money("100000.00") == "$100,000.00"
    assert money(-12.5) == "-$12.50"
    assert money(None) == "—"
    assert money("n/a") == "n/a"
    assert money(True) == "True"  # a bool is not a number
    assert percent(0.734) == "73%"
    assert percent("0.25", 1) == "25.0%"
    assert megabytes(1536 * 1024) == "1.5 MB"
    assert megabytes("NaN") == "—"


# -- collect_snapshot against real sockets ----------------------------------------------------


class Manager:
    def __init__(self, status: StackStatus) -> None:
        self._status = status

    @rpc_method(idempotent=True)
    def status(self) -> dict[str, Any]:
        return dict(self._status)

    @rpc_method(idempotent=True)
    def alerts(self, limit: int = 20) -> list[dict[str, Any]]:
        return [dict(ALERT)][:limit]


class Scheduler:
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.block = False

    @rpc_method(idempotent=True)
    async def get_market_status(self) -> dict[str, Any]:
        if self.block:
            await self.release.wait()
        return {
            "phase": "closed",
            "reason": "weekend",
            "is_trading_day": False,
            "next_open_local": "2024-06-03T10:00:00+10:00",
            "synthetic": True,
        }


class Prediction:
    """An early prediction service: it has a history but no ``get_buy_rate`` yet."""

    def __init__(self) -> None:
        self.limits: list[int] = []

    @rpc_method(idempotent=True)
    def get_prediction_history(self, limit: int = 8) -> list[dict[str, Any]]:
        self.limits.append(limit)
        return [{"symbol": "CBA.AX", "signal": "BUY", "confidence": 0.73, "ts": "2024-06-03T01:00:00Z"}]


class PaperTrading:
    def __init__(self) -> None:
        self.calls = 0

    @rpc_method
    def get_portfolio_status(self) -> dict[str, Any]:
        self.calls += 1
        return {"equity": "1.00"}

    @rpc_method
    def get_positions(self) -> list[dict[str, Any]]:
        self.calls += 1
        return []


@contextlib.asynccontextmanager
async def serving(home: TradingHome, **targets: object) -> AsyncIterator[None]:
    servers = [
        RpcServer(MethodTable.from_object(obj), home.socket_path(name)) for name, obj in targets.items()
    ]
    try:
        for server in servers:
            await server.start()
        yield
    finally:
        for server in servers:
            await server.close(0.5)


def three_service_status() -> StackStatus:
    return stack_status(
        process("redis", pid=1),
        process("prediction", pid=2),
        process("paper_trading", "stopped"),
        process("scheduler", pid=3),
    )


async def test_collect_snapshot_from_real_sockets(home: TradingHome) -> None:
    prediction, paper = Prediction(), PaperTrading()
    targets = {
        "manager": Manager(three_service_status()),
        "scheduler": Scheduler(),
        "prediction": prediction,
        # Listening, but stopped in the manager's eyes: the dashboard must not ask it.
        "paper_trading": paper,
    }
    async with serving(home, **targets):
        snapshot = await collect_snapshot(home, timeout=5.0, clock_now=lambda: NOW)

    assert snapshot.taken_at == NOW
    assert snapshot.home == str(home.root)
    assert snapshot.status_error is None
    assert snapshot.status is not None
    assert [p["name"] for p in snapshot.status["processes"]] == [
        "redis",
        "prediction",
        "paper_trading",
        "scheduler",
    ]
    assert snapshot.alerts == [ALERT]
    assert snapshot.market is not None
    assert snapshot.market["phase"] == "closed"
    assert snapshot.market["reason"] == "weekend"
    assert snapshot.synthetic
    assert snapshot.signals == [
        {"symbol": "CBA.AX", "signal": "BUY", "confidence": 0.73, "ts": "2024-06-03T01:00:00Z"}
    ]
    assert prediction.limits == [8]
    assert snapshot.buy_rate is None
    assert snapshot.errors["buy_rate"] == "not available"
    assert snapshot.portfolio is None
    assert snapshot.positions is None
    assert "paper_trading is not running" in snapshot.errors["portfolio"]
    assert "paper_trading is not running" in snapshot.errors["positions"]
    assert paper.calls == 0
    assert set(snapshot.errors) == {"buy_rate", "portfolio", "positions", "orders"}

    text = as_text(snapshot)
    assert "SYNTHETIC DATA" in text
    assert "Buy rate not available" in text
    assert "weekend" in text


async def test_collect_snapshot_without_a_manager(home: TradingHome) -> None:
    snapshot = await collect_snapshot(home, timeout=1.0)

    assert snapshot.status is None
    assert snapshot.status_error == MANAGER_DOWN
    assert snapshot.alerts == []
    assert snapshot.market is None
    assert snapshot.errors["market"] == "scheduler: state unknown (no status from the manager)"
    assert snapshot.errors["alerts"] == MANAGER_DOWN
    assert MANAGER_DOWN in as_text(snapshot)


async def test_collect_snapshot_records_a_slow_service_and_an_unreachable_one(home: TradingHome) -> None:
    scheduler = Scheduler()
    scheduler.block = True
    # The manager says prediction runs, but nothing listens on its socket.
    async with serving(home, manager=Manager(three_service_status()), scheduler=scheduler):
        try:
            snapshot = await collect_snapshot(home, timeout=0.3)
        finally:
            scheduler.release.set()

    assert snapshot.status_error is None
    assert "did not answer within 0.3s" in snapshot.errors["market"]
    assert snapshot.errors["signals"] == "prediction is not reachable"
    assert snapshot.errors["buy_rate"] == "prediction is not reachable"


async def test_collect_snapshot_rejects_an_answer_of_the_wrong_shape(home: TradingHome) -> None:
    class OddScheduler:
        @rpc_method
        def get_market_status(self) -> list[int]:
            return [1, 2]

    status = stack_status(process("scheduler"))
    async with serving(home, manager=Manager(status), scheduler=OddScheduler()):
        snapshot = await collect_snapshot(home, timeout=5.0)

    assert snapshot.market is None
    assert snapshot.errors["market"] == "scheduler: get_market_status answered list, expected an object"
    assert snapshot.errors["signals"] == "prediction is not running"


# -- run_dashboard ----------------------------------------------------------------------------


def test_run_dashboard_once_without_a_manager(home: TradingHome) -> None:
    console = Console(record=True, width=160, force_terminal=False)

    assert run_dashboard(home, console=console, once=True) == 0

    assert "manager is not running; start it with: tradingctl start" in console.export_text()


def test_run_dashboard_live_loop_exits_0_on_ctrl_c(
    home: TradingHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    frames: list[float] = []

    async def fake_collect(home: TradingHome, *, timeout: float = 1.0, **_: Any) -> DashboardSnapshot:
        frames.append(timeout)
        if len(frames) == 3:
            raise KeyboardInterrupt
        return full_snapshot()

    monkeypatch.setattr(dashboard, "collect_snapshot", fake_collect)
    console = Console(record=True, width=160, force_terminal=False)

    assert run_dashboard(home, refresh_s=0, console=console) == 0

    assert len(frames) == 3
    assert "drawdown 6.2% exceeds limit 5%" in console.export_text()


def test_the_header_says_at_a_glance_how_the_stack_is_and_why() -> None:
    healthy = stack_status(
        process("market_data", pid=1, health="ok"), process("prediction", pid=2, health="ok")
    )
    degraded = stack_status(
        process("market_data", pid=1, health="ok"), process("prediction", pid=2, health="degraded")
    )
    down = stack_status(process("market_data", "fatal"), process("prediction", pid=2, health="failing"))
    first = {name: as_text(full_snapshot(status=s)).splitlines()[1] for name, s in
             (("healthy", healthy), ("degraded", degraded), ("down", down))}  # fmt: skip
    assert "🟢 all services healthy" in first["healthy"]
    assert "🟡 degraded: prediction" in first["degraded"]
    assert "🔴 attention: not running: market_data; failing: prediction" in first["down"]
    assert "🔴 stack unknown" in as_text(full_snapshot(status=None, status_error="manager is not running"))


def test_positions_show_their_exits_and_orders_show_fills_waits_and_refusals() -> None:
    position = {"symbol": "NAB.AX", "quantity": 100, "avg_price": "35.10", "market_price": "36.20",
                "stop_price": "31.59", "take_profit_price": "42.12", "market_value": "3620.00",
                "unrealised_pnl": "110.00"}  # fmt: skip
    orders = [
        {"order_id": 3, "symbol": "CBA.AX", "side": "SELL", "status": "filled", "quantity": 40,
         "price": "93.9530", "origin": "stop_loss", "realised_pnl": -243.88, "time": "2024-06-03T00:30:00Z"},
        {"order_id": 2, "symbol": "WBC.AX", "side": "BUY", "status": "pending", "quantity": 50,
         "reason": "the market is closed: waits for the next session's first price",
         "time": "2024-06-02T00:30:00Z"},
        {"order_id": 1, "symbol": "ANZ.AX", "side": "BUY", "status": "rejected", "quantity": 900,
         "reason": "max_position_value: $27,000.00 would exceed $10,000.00", "time": "2024-06-01T00:30:00Z"},
    ]  # fmt: skip
    text = as_text(full_snapshot(positions=[position], orders=orders))
    row = line_with(text, "NAB.AX")
    assert "$31.59" in row
    assert "$42.12" in row
    assert "Stop" in text
    assert "Target" in text
    filled = line_with(text, "SELL 40 CBA.AX")
    assert "filled" in filled
    assert "$93.95" in filled
    assert "stop_loss" in filled
    assert "-$243.88" in filled
    assert "waits for the next session" in line_with(text, "BUY 50 WBC.AX")
    assert "max_position_value" in line_with(text, "BUY 900 ANZ.AX")


def test_a_signal_shows_its_price_and_the_day_of_the_data_it_was_made_on() -> None:
    signal = {"symbol": "ANZ.AX", "signal": "HOLD", "probability": 0.51, "cases": 4000, "price": 27.5,
              "price_time": "2022-09-20", "ts": "2024-06-03T01:00:00Z"}  # fmt: skip
    row = line_with(as_text(full_snapshot(signals=[signal])), "ANZ.AX")
    assert "$27.50" in row
    assert "2022-09-20" in row  # not only when it was made (03 Jun)
    assert "03 Jun 11:00" in row


def test_the_signals_panel_says_why_nothing_trades() -> None:
    from services.management.dashboard import why_nothing_trades

    limits = {"buy_confidence": 0.61, "min_cases": 200}

    def buy(symbol: str, probability: float | None, cases: int = 3000) -> dict[str, Any]:
        return {"symbol": symbol, "signal": "BUY", "probability": probability, "cases": cases}

    said = why_nothing_trades([buy("CBA.AX", 0.55), buy("WBC.AX", 0.57)], limits)
    assert said == "no BUY at the bar: best P(right) 0.57 (WBC.AX, 3000 cases) < 0.61 with 200 cases"
    assert why_nothing_trades([buy("CBA.AX", 0.62)], limits) is None  # one reached it
    assert "0.62 (CBA.AX, 12 cases)" in str(why_nothing_trades([buy("CBA.AX", 0.62, 12)], limits))
    assert "none calibrated" in str(why_nothing_trades([buy("CBA.AX", None)], limits))
    assert (
        why_nothing_trades([{"signal": "HOLD"}], limits)
        == "no BUY among the last 1 signals: nothing to trade"
    )
    assert why_nothing_trades([buy("CBA.AX", 0.5)], {}) is None  # the bar unknown: nothing said
    portfolio = {"equity": "1.00", "limits": limits}
    text = as_text(full_snapshot(signals=[buy("CBA.AX", 0.55)], portfolio=portfolio))
    assert "no BUY at the bar: best P(right) 0.55" in text
