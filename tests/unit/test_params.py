"""ParamValidator: type checks per hint, field names in errors, describe()."""

from __future__ import annotations

import enum
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any, Literal, NotRequired, Required, TypedDict

import pytest

from services.base.errors import InvalidParams
from services.base.rpc.params import ParamValidator, compile_checker, type_name


class Side(enum.Enum):
    BUY = "buy"
    SELL = "sell"


class Lots(enum.IntEnum):
    ONE = 1
    TEN = 10


class Order(TypedDict):
    symbol: str
    quantity: int
    side: Side
    limit_price: NotRequired[float]
    tags: NotRequired[list[str]]


class Filters(TypedDict, total=False):
    symbol: Required[str]
    min_score: float


class Batch(TypedDict):
    orders: list[Order]


def invalid(validator: ParamValidator, params: Any) -> InvalidParams:
    with pytest.raises(InvalidParams) as info:
        validator(params)
    assert info.value.data["field"] == info.value.field  # the field travels on the wire too
    return info.value


def check(hint: Any, value: Any) -> Any:
    return compile_checker(hint)(value, "value")


def check_fails(hint: Any, value: Any, field: str = "value") -> InvalidParams:
    with pytest.raises(InvalidParams) as info:
        compile_checker(hint)(value, "value")
    assert info.value.field == field
    return info.value


# --- scalars ------------------------------------------------------------------------------


def test_int_accepts_int() -> None:
    assert check(int, 5) == 5
    assert check(int, -(2**40)) == -(2**40)


@pytest.mark.parametrize("value", [True, False, 1.0, 1.5, "1", None, [1], {"a": 1}])
def test_int_rejects_other_types(value: Any) -> None:
    error = check_fails(int, value)
    assert error.data["expected"] == "integer"


def test_float_accepts_float_and_int() -> None:
    assert check(float, 2.5) == 2.5
    converted = check(float, 3)
    assert converted == 3.0
    assert type(converted) is float


@pytest.mark.parametrize("value", [True, False, "2.5", None, [2.5]])
def test_float_rejects_bool_and_str(value: Any) -> None:
    error = check_fails(float, value)
    assert error.data["expected"] == "number"


def test_str() -> None:
    assert check(str, "BHP") == "BHP"
    assert check(str, "") == ""
    for value in (1, None, b"BHP", ["BHP"]):
        check_fails(str, value)


def test_bool() -> None:
    assert check(bool, True) is True
    assert check(bool, False) is False
    for value in (0, 1, "true", None):
        check_fails(bool, value)


def test_none_and_any() -> None:
    assert check(type(None), None) is None
    check_fails(type(None), 0)
    marker = object()
    assert check(Any, marker) is marker


# --- containers ---------------------------------------------------------------------------


def test_list_of_str() -> None:
    assert check(list[str], ["BHP", "CBA"]) == ["BHP", "CBA"]
    assert check(list[str], []) == []
    check_fails(list[str], "BHP")
    check_fails(list[str], ("BHP",))


def test_list_error_names_the_index() -> None:
    validator = ParamValidator(watch)
    error = invalid(validator, {"symbols": ["BHP", 7, "CBA"]})
    assert error.field == "symbols[1]"
    assert "symbols[1]" in error.message


def test_tuple_ellipsis_gives_a_tuple() -> None:
    assert check(tuple[int, ...], [1, 2]) == (1, 2)
    check_fails(tuple[int, ...], [1, "2"], field="value[1]")


def test_dict_str_int() -> None:
    assert check(dict[str, int], {"BHP": 1, "CBA": 2}) == {"BHP": 1, "CBA": 2}
    assert check(dict[str, int], {}) == {}
    check_fails(dict[str, int], {"BHP": 1, "CBA": "2"}, field="value.CBA")
    check_fails(dict[str, int], {"BHP": True}, field="value.BHP")
    check_fails(dict[str, int], [["BHP", 1]])


def test_nested_list_in_dict_names_the_path() -> None:
    check_fails(dict[str, list[int]], {"a": [1], "b": [2, "x"]}, field="value.b[1]")


# --- literals, unions, enums --------------------------------------------------------------


def test_literal() -> None:
    hint = Literal["market", "limit"]
    assert check(hint, "limit") == "limit"
    error = check_fails(hint, "stop")
    assert "'market'" in error.message
    assert "'limit'" in error.message


def test_literal_is_type_exact() -> None:
    assert check(Literal[1, 2], 1) == 1
    check_fails(Literal[1, 2], True)
    check_fails(Literal[1, 2], 1.0)
    check_fails(Literal[1, 2], [1])  # unhashable is a clean InvalidParams, not TypeError


def test_optional() -> None:
    hint = int | None
    assert check(hint, None) is None
    assert check(hint, 3) == 3
    error = check_fails(hint, "3")
    assert error.data["expected"] == "integer | null"


def test_union_tries_each_member() -> None:
    hint = int | str
    assert check(hint, 3) == 3
    assert check(hint, "3") == "3"
    check_fails(hint, None)
    check_fails(hint, 2.5)


def test_enum_by_value() -> None:
    assert check(Side, "buy") is Side.BUY
    assert check(Side, "sell") is Side.SELL
    error = check_fails(Side, "BUY")  # by value, not by name
    assert "'buy'" in error.message
    check_fails(Side, ["buy"])


def test_int_enum_is_type_exact() -> None:
    assert check(Lots, 10) is Lots.TEN
    check_fails(Lots, True)  # JSON true is not the number 1
    check_fails(Lots, 1.0)
    check_fails(Lots, "1")


# --- dates and times ----------------------------------------------------------------------


def test_datetime_needs_a_timezone() -> None:
    parsed = check(datetime, "2024-03-04T10:00:00+10:00")
    assert parsed == datetime(2024, 3, 4, 0, 0, tzinfo=UTC)
    assert parsed.utcoffset() == timedelta(hours=10)
    assert check(datetime, "2024-03-04T00:00:00.123456+00:00") == datetime(
        2024, 3, 4, 0, 0, 0, 123456, tzinfo=UTC
    )
    error = check_fails(datetime, "2024-03-04T10:00:00")
    assert "timezone" in error.message
    check_fails(datetime, "yesterday")
    check_fails(datetime, 1709510400)


def test_date() -> None:
    assert check(date, "2024-03-04") == date(2024, 3, 4)
    check_fails(date, "04/03/2024")
    check_fails(date, 20240304)
    check_fails(date, None)


# --- TypedDict ----------------------------------------------------------------------------


def test_typeddict_with_required_and_optional_keys() -> None:
    validator = ParamValidator(place)
    result = validator({"order": {"symbol": "BHP", "quantity": 10, "side": "buy"}})
    assert result == {"order": {"symbol": "BHP", "quantity": 10, "side": Side.BUY}}
    result = validator(
        {
            "order": {"symbol": "BHP", "quantity": 10, "side": "sell", "limit_price": 45, "tags": ["x"]},
            "dry_run": True,
        }
    )
    assert result["order"]["limit_price"] == 45.0
    assert type(result["order"]["limit_price"]) is float
    assert result["order"]["side"] is Side.SELL
    assert result["dry_run"] is True


def test_typeddict_missing_key_is_named() -> None:
    error = invalid(ParamValidator(place), {"order": {"symbol": "BHP", "side": "buy"}})
    assert error.field == "order.quantity"
    assert "missing" in error.message


def test_typeddict_unknown_key_is_named() -> None:
    error = invalid(
        ParamValidator(place), {"order": {"symbol": "BHP", "quantity": 1, "side": "buy", "qty": 1}}
    )
    assert error.field == "order.qty"
    assert "unknown" in error.message


def test_typeddict_wrong_nested_type_is_named() -> None:
    validator = ParamValidator(place)
    assert (
        invalid(validator, {"order": {"symbol": "BHP", "quantity": "1", "side": "buy"}}).field
        == "order.quantity"
    )
    assert (
        invalid(validator, {"order": {"symbol": "BHP", "quantity": 1, "side": "hold"}}).field == "order.side"
    )
    bad_tag = {"symbol": "BHP", "quantity": 1, "side": "buy", "tags": ["a", 2]}
    assert invalid(validator, {"order": bad_tag}).field == "order.tags[1]"
    assert invalid(validator, {"order": ["BHP"]}).field == "order"


def test_typeddict_total_false_with_required_key() -> None:
    checker = compile_checker(Filters)
    assert checker({"symbol": "BHP"}, "filters") == {"symbol": "BHP"}
    assert checker({"symbol": "BHP", "min_score": 1}, "filters") == {"symbol": "BHP", "min_score": 1.0}
    with pytest.raises(InvalidParams) as info:
        checker({"min_score": 0.5}, "filters")
    assert info.value.field == "filters.symbol"


def test_list_of_typeddicts_names_index_and_key() -> None:
    checker = compile_checker(Batch)
    good = {"symbol": "BHP", "quantity": 1, "side": "buy"}
    with pytest.raises(InvalidParams) as info:
        checker({"orders": [good, {"symbol": "CBA", "side": "buy"}]}, "batch")
    assert info.value.field == "batch.orders[1].quantity"


# --- the method signature -----------------------------------------------------------------


def watch(symbols: list[str], interval_s: float = 60.0, mode: Literal["live", "replay"] = "live") -> None:
    pass


def place(order: Order, dry_run: bool = False, note: str | None = None) -> None:
    pass


def test_defaults_are_not_filled_in() -> None:
    assert ParamValidator(watch)({"symbols": ["BHP"]}) == {"symbols": ["BHP"]}


def test_valid_params_are_converted() -> None:
    result = ParamValidator(watch)({"symbols": ["BHP"], "interval_s": 30, "mode": "replay"})
    assert result == {"symbols": ["BHP"], "interval_s": 30.0, "mode": "replay"}
    assert type(result["interval_s"]) is float


def test_missing_required_param_is_named() -> None:
    error = invalid(ParamValidator(watch), {"interval_s": 5.0})
    assert error.field == "symbols"
    assert "missing" in error.message


def test_missing_when_params_omitted() -> None:
    assert invalid(ParamValidator(watch), None).field == "symbols"
    assert invalid(ParamValidator(watch), {}).field == "symbols"


def test_params_none_is_an_empty_object() -> None:
    def ping(verbose: bool = False) -> None:
        pass

    assert ParamValidator(ping)(None) == {}
    assert ParamValidator(ping)({}) == {}


def test_unknown_param_is_named() -> None:
    error = invalid(ParamValidator(watch), {"symbols": ["BHP"], "symbol": "BHP"})
    assert error.field == "symbol"
    assert "unknown" in error.message


@pytest.mark.parametrize("params", [["BHP"], "BHP", 3, True])
def test_params_not_an_object(params: Any) -> None:
    error = invalid(ParamValidator(watch), params)
    assert error.field == "params"


def test_wrong_type_names_the_param() -> None:
    validator = ParamValidator(watch)
    assert invalid(validator, {"symbols": "BHP"}).field == "symbols"
    assert invalid(validator, {"symbols": [], "interval_s": "60"}).field == "interval_s"
    assert invalid(validator, {"symbols": [], "mode": "paper"}).field == "mode"


def test_self_is_skipped_for_methods() -> None:
    class Service:
        def quote(self, symbol: str) -> None:
            pass

    validator = ParamValidator(Service.quote)
    assert [spec.name for spec in validator.params] == ["symbol"]
    assert validator({"symbol": "BHP"}) == {"symbol": "BHP"}


def test_describe() -> None:
    assert ParamValidator(watch).describe() == [
        {"name": "symbols", "type": "array of string", "required": True},
        {"name": "interval_s", "type": "number", "required": False, "default": 60.0},
        {"name": "mode", "type": "one of 'live', 'replay'", "required": False, "default": "live"},
    ]
    assert ParamValidator(place).describe() == [
        {"name": "order", "type": "object (Order)", "required": True},
        {"name": "dry_run", "type": "boolean", "required": False, "default": False},
        {"name": "note", "type": "string | null", "required": False, "default": None},
    ]


def test_describe_non_json_default_is_repr() -> None:
    def since(start: date = date(2024, 1, 1)) -> None:
        pass

    assert ParamValidator(since).describe() == [
        {"name": "start", "type": "date", "required": False, "default": "datetime.date(2024, 1, 1)"}
    ]


def test_type_names() -> None:
    assert type_name(dict[str, int]) == "object of integer"
    assert type_name(tuple[str, ...]) == "array of string"
    assert type_name(Side) == "one of 'buy', 'sell'"
    assert type_name(datetime) == "datetime"
    assert type_name(Any) == "any"


def test_var_positional_raises_type_error() -> None:
    def bad(*symbols: str) -> None:
        pass

    with pytest.raises(TypeError, match="named parameters"):
        ParamValidator(bad)


def test_var_keyword_raises_type_error() -> None:
    def bad(**options: str) -> None:
        pass

    with pytest.raises(TypeError, match="named parameters"):
        ParamValidator(bad)


def test_missing_type_hint_raises_type_error() -> None:
    def bad(symbol, quantity: int) -> None:  # type: ignore[no-untyped-def]
        pass

    with pytest.raises(TypeError, match="'symbol'"):
        ParamValidator(bad)


@pytest.mark.parametrize("hint", [tuple[int, str], dict[int, str], set[str], bytes])
def test_unsupported_hints_raise_type_error(hint: Any) -> None:
    with pytest.raises(TypeError, match="unsupported"):
        compile_checker(hint)


def test_error_timezone_offsets_are_kept() -> None:
    tz = timezone(timedelta(hours=-5))
    assert check(datetime, "2024-03-04T19:00:00-05:00") == datetime(2024, 3, 4, 19, 0, tzinfo=tz)
