"""The error-code table, the exception hierarchy and the wire round trip."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from services.base.errors import (
    ERROR_CODES,
    CallTimeout,
    ConfigError,
    DependencyUnavailable,
    ErrorCode,
    InternalError,
    InvalidParams,
    InvalidRequest,
    MarketClosed,
    MethodNotFound,
    NotFound,
    OperationalError,
    ParseError,
    RateLimited,
    Rejected,
    RemoteError,
    RequestError,
    TemporaryError,
    TradingError,
    Unauthorized,
    code_for,
    error_from_wire,
)

ROOT = Path(__file__).resolve().parents[2]

# The codes fixed by JSON-RPC 2.0 and DESIGN.md; clients in other processes depend on them.
EXPECTED_CODES: list[tuple[type[TradingError], int]] = [
    (ParseError, -32700),
    (InvalidRequest, -32600),
    (MethodNotFound, -32601),
    (InvalidParams, -32602),
    (InternalError, -32603),
    (DependencyUnavailable, -32000),
    (CallTimeout, -32001),
    (Rejected, -32002),
    (NotFound, -32003),
    (MarketClosed, -32004),
    (RateLimited, -32005),
    (Unauthorized, -32010),
]


def make(cls: type[TradingError], message: str = "boom") -> TradingError:
    if cls is InvalidParams:
        return InvalidParams(message, field="symbol")
    if cls is Rejected:
        return Rejected(message, reason="max_position")
    return cls(message)


@pytest.mark.parametrize(("cls", "code"), EXPECTED_CODES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_code_table_matches_design(cls: type[TradingError], code: int) -> None:
    assert int(ERROR_CODES[cls]) == code
    assert int(code_for(make(cls))) == code


def test_code_table_has_no_extra_entries_and_no_duplicate_codes() -> None:
    assert {cls: int(code) for cls, code in ERROR_CODES.items()} == dict(EXPECTED_CODES)
    assert len({int(code) for code in ErrorCode}) == len(ErrorCode) == len(EXPECTED_CODES)


def test_hierarchy_groups_errors_by_what_to_do() -> None:
    assert issubclass(ConfigError, OperationalError)
    for cls in (DependencyUnavailable, CallTimeout, RateLimited):
        assert issubclass(cls, TemporaryError)
    for cls in (
        ParseError,
        InvalidRequest,
        MethodNotFound,
        InvalidParams,
        Rejected,
        NotFound,
        MarketClosed,
        Unauthorized,
    ):
        assert issubclass(cls, RequestError)
    assert not issubclass(InternalError, TemporaryError | RequestError)


def test_trading_error_keeps_message_and_data() -> None:
    exc = NotFound("no such order", order_id=42)
    assert str(exc) == "no such order"
    assert exc.message == "no such order"
    assert exc.data == {"order_id": 42}


def test_invalid_params_and_rejected_put_their_detail_in_data() -> None:
    invalid = InvalidParams("bad", field="quantity")
    assert invalid.field == "quantity"
    assert invalid.data == {"field": "quantity"}
    rejected = Rejected("no", reason="market_hours", limit=3)
    assert rejected.reason == "market_hours"
    assert rejected.data == {"reason": "market_hours", "limit": 3}


def test_code_for_walks_subclasses() -> None:
    class OrderNotFound(NotFound):
        pass

    class DeepOrderNotFound(OrderNotFound):
        pass

    class BrokerDown(DependencyUnavailable):
        pass

    assert code_for(OrderNotFound("x")) is ErrorCode.NOT_FOUND
    assert code_for(DeepOrderNotFound("x")) is ErrorCode.NOT_FOUND
    assert code_for(BrokerDown("x")) is ErrorCode.DEPENDENCY_UNAVAILABLE


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("x"),
        KeyError("k"),
        RuntimeError(),
        TradingError("plain"),
        ConfigError("cfg"),
        TemporaryError("t"),
        RequestError("r"),
        OperationalError("o"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_exceptions_outside_the_table_are_internal_errors(exc: BaseException) -> None:
    assert code_for(exc) is ErrorCode.INTERNAL_ERROR


def test_code_for_remote_error_uses_its_code_when_known() -> None:
    assert code_for(RemoteError(-32003, "gone")) is ErrorCode.NOT_FOUND
    assert code_for(RemoteError(-31999, "odd")) is ErrorCode.INTERNAL_ERROR


@pytest.mark.parametrize(("cls", "code"), EXPECTED_CODES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_error_from_wire_round_trips_each_class(cls: type[TradingError], code: int) -> None:
    original = make(cls, "it failed")
    rebuilt = error_from_wire(int(code_for(original)), original.message, original.data)
    assert type(rebuilt) is cls
    assert rebuilt.message == "it failed"
    assert str(rebuilt) == "it failed"
    assert rebuilt.data == original.data
    assert int(code_for(rebuilt)) == code


def test_error_from_wire_keeps_field_of_invalid_params() -> None:
    rebuilt = error_from_wire(
        -32602, "order.quantity: expected integer", {"field": "order.quantity", "expected": "integer"}
    )
    assert isinstance(rebuilt, InvalidParams)
    assert rebuilt.field == "order.quantity"
    assert rebuilt.data["expected"] == "integer"


def test_error_from_wire_keeps_reason_of_rejected() -> None:
    rebuilt = error_from_wire(-32002, "position too large", {"reason": "max_position", "limit": 1000})
    assert isinstance(rebuilt, Rejected)
    assert rebuilt.reason == "max_position"
    assert rebuilt.data == {"reason": "max_position", "limit": 1000}


def test_error_from_wire_without_data() -> None:
    rebuilt = error_from_wire(-32003, "missing")
    assert isinstance(rebuilt, NotFound)
    assert rebuilt.data == {}
    rejected = error_from_wire(-32002, "no reason given")
    assert isinstance(rejected, Rejected)
    assert rejected.reason == ""


def test_error_from_wire_wraps_non_object_data() -> None:
    rebuilt = error_from_wire(-32603, "crash", ["trace", "lines"])
    assert isinstance(rebuilt, InternalError)
    assert rebuilt.data == {"detail": ["trace", "lines"]}


def test_error_from_wire_unknown_code_gives_remote_error() -> None:
    rebuilt = error_from_wire(-31000, "something new", {"hint": "upgrade"})
    assert type(rebuilt) is RemoteError
    assert isinstance(rebuilt, RemoteError)
    assert rebuilt.code == -31000
    assert rebuilt.message == "something new"
    assert rebuilt.data == {"hint": "upgrade"}
    assert code_for(rebuilt) is ErrorCode.INTERNAL_ERROR


def test_importing_errors_loads_no_other_project_module() -> None:
    script = (
        "import sys\n"
        "import services.base.errors\n"
        "print(sorted(m for m in sys.modules if m == 'services' or m.startswith('services.')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    loaded = ast.literal_eval(result.stdout.strip())
    assert loaded == ["services", "services.base", "services.base.errors"]
