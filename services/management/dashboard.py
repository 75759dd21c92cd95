"""The terminal dashboard: one snapshot of the stack, collected over RPC and drawn with rich.

``collect_snapshot`` asks the manager for ``status`` and ``alerts``, then asks the services the
manager reports as running for their figures, all at once, each call bounded by a timeout. A
source that fails is recorded in ``DashboardSnapshot.errors`` and its panel shows why; nothing is
raised. ``render`` turns a snapshot into a renderable and tolerates any payload shape.
``run_dashboard`` redraws it every ``refresh_s`` seconds until Ctrl-C.

The fields the dashboard reads (the contract for the services that answer these calls). Every
field is optional: a missing one is shown as a dash. Money is a decimal-dollar string
("100000.00") or a number. Fractions are 0..1 and are shown as percentages. Times are ISO-8601.
Any payload (or any item of a list payload) may carry ``"synthetic": true`` (demo mode on a
generated market), which puts a SYNTHETIC DATA label in the header.

=========  ====================================  ================================================
Panel      Service.method(params) -> shape       Fields read
=========  ====================================  ================================================
status     manager.status() -> StackStatus       manager: pid, home, uptime_s, redis_url,
                                                 redis_embedded, not_installed;
                                                 processes[]: name, state, pid, uptime_s,
                                                 restarts, memory_pss, memory_rss, cpu_percent,
                                                 health, last_error (process "redis" is Redis);
                                                 total_memory_pss, total_memory_rss
alerts     manager.alerts(limit=20)              ts (UTC), type, source, message; newest first
           -> list[Alert]
market     scheduler.get_market_status()         phase (pre_open, open, closing_auction,
           -> object                             post_market, closed), reason (str or null),
                                                 is_trading_day (bool), next_open_local,
                                                 next_close_local (Australia/Sydney),
                                                 next_open_utc, next_close_utc (fallbacks)
signals    prediction.get_prediction_history(    symbol, signal (BUY, HOLD, SELL), probability
           limit=8) -> list[object]              (calibrated, fraction; null: uncalibrated),
                                                 cases (int), ts (UTC), degraded (bool, optional)
buy_rate   prediction.get_buy_rate() -> object   latest, rolling, threshold (fractions),
                                                 alert_active (bool)
portfolio  paper_trading.get_portfolio_status()  equity, cash, market_value, day_pnl, total_pnl
           -> object                             (money); exposure (fraction of equity held in
                                                 positions)
positions  paper_trading.get_positions()         symbol, quantity, avg_price, market_price,
           -> list[object]                       stop_price, take_profit_price, market_value,
                                                 unrealised_pnl (money)
orders     paper_trading.get_trade_history(      time, symbol, side, quantity, status (filled,
           limit=8) -> list[object]              pending, rejected, ...), price, origin, reason,
                                                 realised_pnl (money)
=========  ====================================  ================================================

The header's first line says how the stack is at a glance: green when every process runs
healthy, yellow naming the degraded ones, red naming those down or failing.

A service that has no such method yet answers -32601 and its panel says "not available".
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from decimal import Decimal, InvalidOperation
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from services.base.config import TradingHome
from services.base.errors import DependencyUnavailable, MethodNotFound, TradingError
from services.base.rpc.client import RpcClient
from services.management.states import ProcessState
from services.management.wire import Alert, StackStatus

MANAGER_DOWN = "manager is not running; start it with: tradingctl start"
NOT_AVAILABLE = "not available"
MAX_ALERTS = 8
ORDER_STYLES = {
    "filled": "green",
    "pending": "yellow",
    "rejected": "red",
    "expired": "dim",
    "cancelled": "dim",
}
ALERTS_ASKED = 20
SIGNALS_ASKED = 8
ORDERS_ASKED = 8
LAST_ERROR_WIDTH = 48
DASH = "—"


@dataclass(frozen=True, slots=True)
class Source:
    """One panel's data: which service and method it comes from, and the JSON shape expected."""

    panel: str
    service: str
    method: str
    shape: type[dict[str, Any]] | type[list[Any]]
    params: tuple[tuple[str, Any], ...] = ()


SOURCES: tuple[Source, ...] = (
    Source("market", "scheduler", "get_market_status", dict),
    Source("signals", "prediction", "get_prediction_history", list, (("limit", SIGNALS_ASKED),)),
    Source("buy_rate", "prediction", "get_buy_rate", dict),
    Source("portfolio", "paper_trading", "get_portfolio_status", dict),
    Source("positions", "paper_trading", "get_positions", list),
    Source("orders", "paper_trading", "get_trade_history", list, (("limit", ORDERS_ASKED),)),
)


@dataclass(frozen=True, kw_only=True)
class DashboardSnapshot:
    """What the dashboard knows at one moment. A panel's payload is None when ``errors`` says why."""

    taken_at: datetime
    home: str = ""
    status: StackStatus | None = None
    status_error: str | None = None
    alerts: list[Alert] = field(default_factory=list)
    market: dict[str, Any] | None = None
    signals: list[dict[str, Any]] | None = None
    buy_rate: dict[str, Any] | None = None
    portfolio: dict[str, Any] | None = None
    positions: list[dict[str, Any]] | None = None
    orders: list[dict[str, Any]] | None = None
    # panel name (market, signals, buy_rate, portfolio, positions, orders, alerts) -> why it has no data
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def synthetic(self) -> bool:
        """Whether any payload says it comes from a generated (demo) market."""
        payloads = (self.market, self.signals, self.buy_rate, self.portfolio, self.positions, self.orders)
        return any(_is_synthetic(payload) for payload in payloads)


def _is_synthetic(payload: object) -> bool:
    if isinstance(payload, Mapping):
        return payload.get("synthetic") is True
    if isinstance(payload, list):
        return any(isinstance(item, Mapping) and item.get("synthetic") is True for item in payload)
    return False


# -- collecting ---------------------------------------------------------------------------


def _utc_now() -> datetime:
    return datetime.now(UTC)


async def collect_snapshot(
    home: TradingHome,
    *,
    timeout: float = 1.0,
    clock_now: Callable[[], datetime] | None = None,
) -> DashboardSnapshot:
    """Ask the manager, then the running services, for everything the dashboard shows.

    Never raises for a source that is down, slow or answers an error: that goes in ``errors``.
    """
    errors: dict[str, str] = {}
    status, status_error, alerts = await _ask_manager(home, timeout, errors)
    payloads = await _ask_services(home, status, timeout, errors)
    return DashboardSnapshot(
        taken_at=(clock_now or _utc_now)(),
        home=str(home.root),
        status=status,
        status_error=status_error,
        alerts=alerts,
        market=payloads.get("market"),
        signals=payloads.get("signals"),
        buy_rate=payloads.get("buy_rate"),
        portfolio=payloads.get("portfolio"),
        positions=payloads.get("positions"),
        orders=payloads.get("orders"),
        errors=errors,
    )


async def _ask_manager(
    home: TradingHome, timeout: float, errors: dict[str, str]
) -> tuple[StackStatus | None, str | None, list[Alert]]:
    client = RpcClient(home.socket_path("manager"), timeout=timeout, connect_attempts=1)
    try:
        (status, status_error), (alerts, alerts_error) = await asyncio.gather(
            _call(client, "manager", "status", {}, dict),
            _call(client, "manager", "alerts", {"limit": ALERTS_ASKED}, list),
        )
    finally:
        await client.close()
    if alerts_error is not None:
        errors["alerts"] = alerts_error
    alert_list = [item for item in alerts or [] if isinstance(item, Mapping)]
    return cast("StackStatus | None", status), status_error, cast("list[Alert]", alert_list)


async def _ask_services(
    home: TradingHome,
    status: StackStatus | None,
    timeout: float,
    errors: dict[str, str],
) -> dict[str, Any]:
    wanted: list[Source] = []
    for source in SOURCES:
        reason = _why_not_asked(source.service, status)
        if reason is None:
            wanted.append(source)
        else:
            errors[source.panel] = reason
    services = sorted({source.service for source in wanted})
    clients = {
        name: RpcClient(home.socket_path(name), timeout=timeout, connect_attempts=1) for name in services
    }
    try:
        outcomes = await asyncio.gather(
            *(_call(clients[s.service], s.service, s.method, dict(s.params), s.shape) for s in wanted)
        )
    finally:
        await asyncio.gather(*(client.close() for client in clients.values()))
    payloads: dict[str, Any] = {}
    for source, (payload, error) in zip(wanted, outcomes, strict=True):
        if error is None:
            payloads[source.panel] = payload
        else:
            errors[source.panel] = error
    return payloads


def _why_not_asked(service: str, status: StackStatus | None) -> str | None:
    """Why a service is not asked (it is not running), or None when it should be."""
    if status is None:
        return f"{service}: state unknown (no status from the manager)"
    manager = _map(status.get("manager"))
    if service in _seq(manager.get("not_installed")):
        return f"{service} is not installed"
    for item in _seq(status.get("processes")):
        process = _map(item)
        if process.get("name") == service:
            state = process.get("state")
            if state == ProcessState.RUNNING:
                return None
            return f"{service} is not running (state: {state})"
    return f"{service} is not running"


async def _call(
    client: RpcClient,
    service: str,
    method: str,
    params: dict[str, Any],
    shape: type[dict[str, Any]] | type[list[Any]],
) -> tuple[Any, str | None]:
    """The method's result and None, or None and why it has none. Never raises."""
    try:
        result = await client.call(method, params or None, idempotent=True)
    except MethodNotFound:
        return None, NOT_AVAILABLE
    except DependencyUnavailable as exc:
        if "socket" not in exc.data:  # connected, then lost, or the service's own dependency
            return None, f"{service}: {exc.message}"
        return None, MANAGER_DOWN if service == "manager" else f"{service} is not reachable"
    except TradingError as exc:
        return None, f"{service}: {exc.message}"
    except Exception as exc:  # the dashboard shows any failure of a source instead of dying
        return None, f"{service}: {type(exc).__name__}: {exc}"
    if not isinstance(result, shape):
        expected = "an object" if shape is dict else "a list"
        return None, f"{service}: {method} answered {type(result).__name__}, expected {expected}"
    return result, None


# -- formatting helpers -------------------------------------------------------------------


def _map(value: object) -> Mapping[str, Any]:
    return cast("Mapping[str, Any]", value) if isinstance(value, Mapping) else {}


def _seq(value: object) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _number(value: object) -> Decimal | None:
    """A finite number from an int, float, Decimal or numeric string; None for anything else."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float | Decimal | str):
        try:
            number = Decimal(str(value).strip().replace(",", ""))
        except (InvalidOperation, ValueError):
            return None
        return number if number.is_finite() else None
    return None


def _plain(value: object, width: int = 24) -> str:
    if value is None:
        return DASH
    text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def human_duration(seconds: object) -> str:
    """``42s``, ``3m 12s``, ``2h 05m``, ``3d 04h``; a dash when unknown."""
    number = _number(seconds)
    if number is None or number < 0:
        return DASH
    total = int(number)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def megabytes(size: object) -> str:
    """Bytes as ``123.4 MB`` (MB = 2**20 bytes, as ps and top count)."""
    number = _number(size)
    if number is None or number < 0:
        return DASH
    return f"{number / (1024 * 1024):,.1f} MB"


def money(value: object) -> str:
    """``$100,000.00``, ``-$12.50``; garbage is shown as it came, a dash for nothing."""
    number = _number(value)
    if number is None:
        return DASH if value is None else _plain(value, 16)
    sign = "-" if number < 0 else ""
    return f"{sign}${abs(number):,.2f}"


def _pnl(value: object) -> Text:
    number = _number(value)
    if number is None:
        return Text(money(value))
    sign = "+" if number > 0 else ""
    style = "green" if number > 0 else "red" if number < 0 else ""
    return Text(sign + money(number), style=style)


def _price(value: object) -> str:
    number = _number(value)
    if number is None:
        return money(value)
    return f"${number:,.2f}" if abs(number) >= Decimal("0.1") else f"${number:,.4f}"


def _quantity(value: object) -> str:
    number = _number(value)
    if number is None:
        return _plain(value, 12)
    return f"{number:,.0f}" if number == number.to_integral_value() else f"{number:,}"


def percent(value: object, digits: int = 0) -> str:
    """A 0..1 fraction as ``73%``."""
    number = _number(value)
    if number is None:
        return DASH if value is None else _plain(value, 8)
    return f"{number * 100:.{digits}f}%"


def _sydney() -> tzinfo:
    try:
        return ZoneInfo("Australia/Sydney")
    except ZoneInfoNotFoundError:
        return UTC


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _local_time(value: object, fmt: str = "%a %d %b %H:%M") -> str:
    """An ISO time shown in Sydney time; the raw text when it does not parse."""
    moment = _parse_time(value)
    if moment is None:
        return _plain(value)
    return moment.astimezone(_sydney()).strftime(fmt)


def _redact_url(url: object) -> str:
    """A URL without its password, so a Redis URL with credentials can be shown."""
    if not isinstance(url, str):
        return DASH
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparseable url)"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    user = f"{parts.username}:" if parts.username else ":"
    return urlunsplit(parts._replace(netloc=f"{user}***@{host}{port}"))


STATE_STYLES: dict[str, str] = {
    ProcessState.RUNNING: "green",
    ProcessState.STARTING: "yellow",
    ProcessState.STOPPING: "yellow",
    ProcessState.BACKOFF: "yellow",
    ProcessState.STOPPED: "bold red",
    ProcessState.FATAL: "bold red",
    ProcessState.EXTERNAL: "cyan",
}
HEALTH_STYLES = {"ok": "green", "degraded": "yellow", "failing": "bold red", "down": "bold red"}
SIGNAL_STYLES = {"BUY": "bold green", "SELL": "bold red", "HOLD": "yellow"}
PHASE_STYLES = {
    "open": "bold green",
    "pre_open": "yellow",
    "closing_auction": "yellow",
    "post_market": "dim",
    "closed": "red",
}


def _styled(value: object, styles: Mapping[str, str], width: int = 16) -> Text:
    text = _plain(value, width)
    return Text(text, style=styles.get(text, ""))


def _error(message: str) -> Text:
    return Text(message, style="red")


# -- rendering ----------------------------------------------------------------------------


def render(snapshot: DashboardSnapshot) -> RenderableType:
    """The whole dashboard for one snapshot. Never raises on odd payloads."""
    return Group(
        _safely(_header, snapshot, "header"),
        _safely(_services_panel, snapshot, "services"),
        _side_by_side(
            _safely(_market_panel, snapshot, "market"), _safely(_signals_panel, snapshot, "signals")
        ),
        _side_by_side(
            _safely(_portfolio_panel, snapshot, "portfolio"),
            _safely(_positions_panel, snapshot, "positions"),
        ),
        _safely(_orders_panel, snapshot, "orders"),
        _safely(_alerts_panel, snapshot, "alerts"),
    )


def _safely(
    build: Callable[[DashboardSnapshot], RenderableType], snapshot: DashboardSnapshot, name: str
) -> RenderableType:
    """One panel; a bug in one panel's formatting shows as text instead of losing the screen."""
    try:
        return build(snapshot)
    except Exception as exc:  # the dashboard must keep drawing whatever a payload holds
        return Panel(_error(f"cannot show {name}: {type(exc).__name__}: {exc}"), title=name)


def _side_by_side(left: RenderableType, right: RenderableType) -> Table:
    grid = Table.grid(expand=True, padding=(0, 1))
    grid.add_column(ratio=1)
    grid.add_column(ratio=1)
    grid.add_row(left, right)
    return grid


def _header(snapshot: DashboardSnapshot) -> RenderableType:
    status = _map(snapshot.status)
    manager = _map(status.get("manager"))
    home = manager.get("home") or snapshot.home or DASH
    moment = snapshot.taken_at
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    line = Text.assemble(
        overall(snapshot),
        "   ",
        ("ASX trading", "bold"),
        "  ",
        (moment.astimezone(_sydney()).strftime("%a %d %b %Y %H:%M:%S %Z"), "bold"),
        f" ({moment.astimezone(UTC):%H:%M:%S} UTC)",
    )
    if snapshot.synthetic:
        line.append("  ")
        line.append(" SYNTHETIC DATA ", style="bold black on yellow")
    if snapshot.status_error is not None:
        second = Text.assemble(_error(snapshot.status_error), "  home ", (str(home), "cyan"))
    else:
        second = Text.assemble(
            "home ",
            (str(home), "cyan"),
            "  manager pid ",
            (_plain(manager.get("pid"), 10), "bold"),
            "  up ",
            (human_duration(manager.get("uptime_s")), "bold"),
        )
    return Panel(Group(line, second), border_style="yellow" if snapshot.synthetic else "blue")


def overall(snapshot: DashboardSnapshot) -> Text:
    """The stack at a glance: green when every process runs healthy, yellow when some are
    degraded, red when one is down, failing or the manager does not answer; and why."""
    if snapshot.status is None:
        return Text.assemble(
            ("🔴 ", ""), ("stack unknown: ", "bold red"), snapshot.status_error or "no status"
        )
    processes = [_map(p) for p in _seq(_map(snapshot.status).get("processes"))]
    down = [
        str(p.get("name"))
        for p in processes
        if p.get("state") not in (ProcessState.RUNNING, ProcessState.EXTERNAL)
    ]
    failing = [str(p.get("name")) for p in processes if p.get("health") == "failing"]
    degraded = [str(p.get("name")) for p in processes if p.get("health") == "degraded"]
    if down or failing:
        parts = ([f"not running: {', '.join(down)}"] if down else []) + (
            [f"failing: {', '.join(failing)}"] if failing else []
        )
        return Text.assemble(("🔴 ", ""), ("attention: ", "bold red"), "; ".join(parts))
    if degraded:
        return Text.assemble(
            ("🟡 ", ""),
            ("degraded: ", "bold yellow"),
            ", ".join(degraded),
            ("  (tradingctl health says why)", "dim"),
        )
    return Text.assemble(("🟢 ", ""), ("all services healthy", "bold green"))


def _services_panel(snapshot: DashboardSnapshot) -> RenderableType:
    if snapshot.status is None:
        return Panel(_error(snapshot.status_error or "no status from the manager"), title="Services")
    status = _map(snapshot.status)
    processes = [_map(process) for process in _seq(status.get("processes"))]
    table = Table(expand=True, box=None, header_style="bold")
    for column in ("Service", "State"):
        table.add_column(column)
    for column in ("PID", "Uptime", "Restarts", "Memory", "CPU"):
        table.add_column(column, justify="right")
    for column in ("Health", "Last error"):
        table.add_column(column)
    for process in processes:
        if process.get("name") != "redis":
            table.add_row(*_process_cells(process))
    footer = [_redis_line(status, processes), _memory_line(status)]
    not_installed = [str(name) for name in _seq(_map(status.get("manager")).get("not_installed"))]
    if not_installed:
        footer.append(Text("not installed: " + ", ".join(not_installed), style="dim"))
    return Panel(Group(table, *footer), title="Services")


def _memory(process: Mapping[str, Any]) -> object:
    """PSS where the OS reports it (shared pages counted fairly), else RSS."""
    pss = process.get("memory_pss")
    return pss if _number(pss) is not None else process.get("memory_rss")


def _process_cells(process: Mapping[str, Any]) -> list[Text]:
    cpu = _number(process.get("cpu_percent"))
    return [
        Text(_plain(process.get("name"), 20), style="bold"),
        _styled(process.get("state"), STATE_STYLES),
        Text(_plain(process.get("pid"), 10)),
        Text(human_duration(process.get("uptime_s"))),
        Text(_plain(process.get("restarts"), 6)),
        Text(megabytes(_memory(process))),
        Text(DASH if cpu is None else f"{cpu:.1f}%"),
        _styled(process.get("health"), HEALTH_STYLES, 10),
        Text(_plain(process.get("last_error"), LAST_ERROR_WIDTH), style="red"),
    ]


def _redis_line(status: Mapping[str, Any], processes: Iterable[Mapping[str, Any]]) -> Text:
    manager = _map(status.get("manager"))
    redis = next((p for p in processes if p.get("name") == "redis"), {})
    embedded = manager.get("redis_embedded")
    kind = "embedded" if embedded is True else "external" if embedded is False else "?"
    line = Text.assemble(("Redis ", "bold"), _styled(redis.get("state"), STATE_STYLES))
    line.append(f"  {kind} {_redact_url(manager.get('redis_url'))}")
    if _number(_memory(redis)) is not None:
        line.append(f"  {megabytes(_memory(redis))}")
    return line


def _memory_line(status: Mapping[str, Any]) -> Text:
    pss = _number(status.get("total_memory_pss"))
    if pss:
        return Text(f"Stack memory {megabytes(pss)} (PSS)", style="bold")
    return Text(f"Stack memory {megabytes(status.get('total_memory_rss'))} (RSS)", style="bold")


def _market_panel(snapshot: DashboardSnapshot) -> RenderableType:
    title = "Market (ASX)"
    if "market" in snapshot.errors or snapshot.market is None:
        return Panel(_error(snapshot.errors.get("market", "no data")), title=title)
    market = _map(snapshot.market)
    rows = [
        ("Phase", _styled(market.get("phase"), PHASE_STYLES)),
        ("Reason", Text(_plain(market.get("reason"), 40))),
        ("Trading day", Text(_yes_no(market.get("is_trading_day")))),
        ("Next open", Text(_local_time(market.get("next_open_local") or market.get("next_open_utc")))),
        ("Next close", Text(_local_time(market.get("next_close_local") or market.get("next_close_utc")))),
    ]
    return Panel(_key_values(rows), title=title)


def _yes_no(value: object) -> str:
    return "yes" if value is True else "no" if value is False else DASH


def _key_values(rows: Iterable[tuple[str, Text]]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for key, value in rows:
        grid.add_row(key, value)
    return grid


def _signals_panel(snapshot: DashboardSnapshot) -> RenderableType:
    title = "Signals"
    body: list[RenderableType] = []
    if "signals" in snapshot.errors or snapshot.signals is None:
        body.append(_error(snapshot.errors.get("signals", "no data")))
    else:
        body.append(_signals_table(snapshot.signals))
        why = why_nothing_trades(snapshot.signals, _map(_map(snapshot.portfolio).get("limits")))
        if why:
            body.append(Text(why, style="yellow"))
    body.append(_buy_rate_line(snapshot))
    return Panel(Group(*body), title=title)


def why_nothing_trades(signals: object, limits: Mapping[str, Any]) -> str | None:
    """When none of the latest BUY signals reached paper trading's bar, say so and how near the
    best came; None when one did, or nothing is known of the bar."""
    bar, needed = _number(limits.get("buy_confidence")), limits.get("min_cases")
    if bar is None:
        return None
    rows = [_map(item) for item in _seq(signals) if isinstance(item, Mapping)]
    buys = [row for row in rows if row.get("signal") == "BUY"]
    if not buys:
        return f"no BUY among the last {len(rows)} signals: nothing to trade" if rows else None
    usable = [
        row for row in buys
        if isinstance(row.get("probability"), int | float) and not isinstance(row.get("probability"), bool)
    ]  # fmt: skip
    if not usable:
        return f"{len(buys)} BUY signals, none calibrated: paper trading opens nothing on them"
    best = max(usable, key=lambda row: float(row["probability"]))
    cases: int = best["cases"] if isinstance(best.get("cases"), int) else 0
    if Decimal(str(best["probability"])) >= bar and (not isinstance(needed, int) or cases >= needed):
        return None
    return (
        f"no BUY at the bar: best P(right) {float(best['probability']):.2f} ({best.get('symbol')}, "
        f"{cases} cases) < {float(bar):.2f}" + (f" with {needed} cases" if isinstance(needed, int) else "")
    )


def _signals_table(signals: object) -> RenderableType:
    rows = [_map(item) for item in _seq(signals) if isinstance(item, Mapping)]
    if not rows:
        return Text("no predictions yet", style="dim")
    table = Table(expand=True, box=None, header_style="bold")
    table.add_column("Symbol")
    table.add_column("Signal")
    table.add_column("P(right)", justify="right")
    table.add_column("Price", justify="right")
    table.add_column("Data of")  # the bar the decision was made on, not when it was made
    table.add_column("Made")
    for row in rows[:SIGNALS_ASKED]:
        signal = _styled(row.get("signal"), SIGNAL_STYLES, 8)
        if row.get("degraded") is True:
            signal.append(" degraded", style="dim yellow")
        table.add_row(
            Text(_plain(row.get("symbol"), 12), style="bold"),
            signal,
            _probability(row),
            Text(_price(row.get("price"))),
            Text(_plain(str(row.get("price_time") or "")[:10] or None, 10)),
            Text(_local_time(row.get("ts"), "%d %b %H:%M")),
        )
    return table


def _probability(row: Mapping[str, Any]) -> Text:
    """The calibrated probability and the past cases behind it, or that there is none."""
    probability, cases = row.get("probability"), row.get("cases")
    if not isinstance(probability, int | float) or isinstance(probability, bool):
        return Text("uncalibrated", style="dim yellow")
    text = Text(percent(probability))
    if isinstance(cases, int) and not isinstance(cases, bool):
        text.append(f" n={cases}", style="dim")
    return text


def _buy_rate_line(snapshot: DashboardSnapshot) -> Text:
    line = Text("Buy rate ", style="bold")
    if "buy_rate" in snapshot.errors or snapshot.buy_rate is None:
        line.append(snapshot.errors.get("buy_rate", "no data"), style="red")
        return line
    rate = _map(snapshot.buy_rate)
    line.append(
        f"latest {percent(rate.get('latest'))}  rolling {percent(rate.get('rolling'))}  "
        f"threshold {percent(rate.get('threshold'))}"
    )
    if rate.get("alert_active") is True:
        line.append("  ALERT", style="bold red")
    return line


def _portfolio_panel(snapshot: DashboardSnapshot) -> RenderableType:
    title = "Portfolio (paper)"
    if "portfolio" in snapshot.errors or snapshot.portfolio is None:
        return Panel(_error(snapshot.errors.get("portfolio", "no data")), title=title)
    portfolio = _map(snapshot.portfolio)
    rows = [
        ("Equity", Text(money(portfolio.get("equity")), style="bold")),
        ("Cash", Text(money(portfolio.get("cash")))),
        ("Market value", Text(money(portfolio.get("market_value")))),
        ("Day P&L", _pnl(portfolio.get("day_pnl"))),
        ("Total P&L", _pnl(portfolio.get("total_pnl"))),
        ("Exposure", Text(percent(portfolio.get("exposure"), 1))),
    ]
    return Panel(_key_values(rows), title=title)


def _positions_panel(snapshot: DashboardSnapshot) -> RenderableType:
    title = "Positions"
    if "positions" in snapshot.errors or snapshot.positions is None:
        return Panel(_error(snapshot.errors.get("positions", "no data")), title=title)
    rows = [_map(item) for item in _seq(snapshot.positions) if isinstance(item, Mapping)]
    if not rows:
        return Panel(Text("no open positions", style="dim"), title=title)
    table = Table(expand=True, box=None, header_style="bold")
    table.add_column("Symbol")
    for column in ("Qty", "Avg", "Price", "Stop", "Target", "Value", "Unrealised"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            Text(_plain(row.get("symbol"), 12), style="bold"),
            Text(_quantity(row.get("quantity"))),
            Text(_price(row.get("avg_price"))),
            Text(_price(row.get("market_price"))),
            Text(_price(row.get("stop_price")), style="red"),
            Text(_price(row.get("take_profit_price")), style="green"),
            Text(money(row.get("market_value"))),
            _pnl(row.get("unrealised_pnl")),
        )
    return Panel(table, title=title)


def _orders_panel(snapshot: DashboardSnapshot) -> RenderableType:
    """The latest orders: fills with their price and P&L, waiting ones with why they wait,
    refused ones with the rule."""
    title = "Orders and fills"
    if "orders" in snapshot.errors or snapshot.orders is None:
        return Panel(_error(snapshot.errors.get("orders", "no data")), title=title)
    rows = [_map(item) for item in _seq(snapshot.orders) if isinstance(item, Mapping)]
    if not rows:
        return Panel(Text("no orders yet", style="dim"), title=title)
    table = Table(expand=True, box=None, header_style="bold")
    table.add_column("Time", no_wrap=True)
    table.add_column("Order")
    table.add_column("Status")
    table.add_column("Price / why", ratio=1)
    for row in rows[:ORDERS_ASKED]:
        status = _plain(row.get("status"), 10)
        what = (
            f"{_plain(row.get('side'), 4)} {_quantity(row.get('quantity'))} {_plain(row.get('symbol'), 10)}"
        )
        if status == "filled":
            detail = Text(f"{_price(row.get('price'))} ({_plain(row.get('origin'), 12)})")
            if row.get("realised_pnl") not in (None, 0, "0", "0.00"):
                detail.append("  ")
                detail.append_text(_pnl(row.get("realised_pnl")))
        else:
            detail = Text(_plain(row.get("reason"), 120), style="dim" if status == "pending" else "red")
        table.add_row(
            Text(_local_time(row.get("time"), "%d %b %H:%M")),
            Text(what),
            _styled(status, ORDER_STYLES, 10),
            detail,
        )
    return Panel(table, title=title)


def _alerts_panel(snapshot: DashboardSnapshot) -> RenderableType:
    title = "Recent alerts"
    rows = [_map(alert) for alert in _seq(snapshot.alerts) if isinstance(alert, Mapping)]
    if not rows:
        message = snapshot.errors.get("alerts")
        return Panel(_error(message) if message else Text("none", style="dim"), title=title)
    rows.sort(key=lambda alert: str(alert.get("ts") or ""), reverse=True)
    table = Table(expand=True, box=None, header_style="bold")
    table.add_column("Time", no_wrap=True)
    table.add_column("Type")
    table.add_column("Source")
    table.add_column("Message", ratio=1)
    for alert in rows[:MAX_ALERTS]:
        kind = _plain(alert.get("type"), 20)
        table.add_row(
            Text(_local_time(alert.get("ts"), "%d %b %H:%M:%S")),
            Text(kind, style="red" if kind == "risk_alert" else "yellow"),
            Text(_plain(alert.get("source"), 16)),
            Text(_plain(alert.get("message"), 200)),
        )
    return Panel(table, title=title)


# -- the live loop --------------------------------------------------------------------------


def run_dashboard(
    home: TradingHome,
    *,
    refresh_s: float = 1.5,
    console: Console | None = None,
    once: bool = False,
) -> int:
    """Draw the dashboard until Ctrl-C (exit status 0); ``once`` prints one frame and returns."""
    console = console if console is not None else Console()
    try:
        if once:
            console.print(render(asyncio.run(collect_snapshot(home))))
        else:
            asyncio.run(_live(home, console, refresh_s))
    except KeyboardInterrupt:
        pass
    return 0


async def _live(home: TradingHome, console: Console, refresh_s: float) -> None:
    timeout = max(0.2, min(1.0, refresh_s))
    with Live(console=console, auto_refresh=False) as live:
        while True:
            snapshot = await collect_snapshot(home, timeout=timeout)
            live.update(render(snapshot), refresh=True)
            await asyncio.sleep(refresh_s)
