"""Validate JSON-RPC params against a method's type hints.

Each parameter's hint is compiled once, at registration, into a small checker function, so a
call pays only for the checks themselves. A failure raises ``InvalidParams`` whose ``field``
names the parameter (dotted and indexed for nested values, e.g. ``task.retries`` or ``symbols[2]``).

Supported hints: ``int``, ``float`` (an integer is accepted), ``str``, ``bool``, ``None``,
``Any``, ``list[T]``, ``tuple[T, ...]``, ``dict[str, T]``, ``Literal[...]``, unions and
``X | None``, ``TypedDict`` (required and optional keys, no unknown keys), enums (by value) and
``datetime``/``date`` (ISO-8601 strings).
"""

from __future__ import annotations

import enum
import inspect
import typing
from collections.abc import Callable, Mapping
from datetime import date, datetime
from typing import Any, Literal, NotRequired, Required, get_args, get_origin, is_typeddict

from services.base.errors import InvalidParams

Checker = Callable[[Any, str], Any]

_MISSING = inspect.Parameter.empty


class ParamSpec(typing.NamedTuple):
    name: str
    type_name: str
    required: bool
    default: Any
    check: Checker


class ParamValidator:
    """Turns a params object into keyword arguments for one method."""

    def __init__(self, func: Callable[..., Any]) -> None:
        signature = inspect.signature(func)
        hints = typing.get_type_hints(func)
        specs = []
        for name, parameter in signature.parameters.items():
            if name == "self":
                continue
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                raise TypeError(f"{func.__qualname__}: RPC methods take named parameters only")
            if name not in hints:
                raise TypeError(f"{func.__qualname__}: parameter {name!r} needs a type hint")
            hint = hints[name]
            specs.append(
                ParamSpec(
                    name=name,
                    type_name=type_name(hint),
                    required=parameter.default is _MISSING,
                    default=parameter.default,
                    check=compile_checker(hint),
                )
            )
        self.params: tuple[ParamSpec, ...] = tuple(specs)
        self._by_name = {spec.name: spec for spec in specs}
        self._required_in_order = tuple(spec.name for spec in specs if spec.required)
        self._required = frozenset(self._required_in_order)

    def __call__(self, params: Any) -> dict[str, Any]:
        if params is None:
            params = {}
        elif not isinstance(params, dict):
            raise InvalidParams("params must be an object of named parameters", field="params")
        by_name = self._by_name
        if not params.keys() <= by_name.keys():
            unknown = next(name for name in params if name not in by_name)
            raise InvalidParams(f"unknown parameter {unknown!r}"[:200], field=unknown)
        if not self._required <= params.keys():
            missing = next(name for name in self._required_in_order if name not in params)
            raise InvalidParams(f"missing required parameter {missing!r}", field=missing)
        return {name: by_name[name].check(value, name) for name, value in params.items()}

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"name": spec.name, "type": spec.type_name, "required": spec.required}
            | ({} if spec.required else {"default": _describe_default(spec.default)})
            for spec in self.params
        ]


def _describe_default(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool | type(None)) else repr(value)


def _fail(field: str, expected: str, value: Any) -> typing.NoReturn:
    raise InvalidParams(
        f"{field}: expected {expected}, got {_json_type(value)}", field=field, expected=expected
    )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def compile_checker(hint: Any) -> Checker:
    """A function ``(value, field) -> value`` that checks and converts one value."""
    if hint is Any or hint is object:
        return lambda value, field: value
    if hint is type(None) or hint is None:
        return _exact(type(None), "null")
    if hint is bool:
        return _exact(bool, "boolean")
    if hint is int:
        return _check_int
    if hint is float:
        return _check_float
    if hint is str:
        return _exact(str, "string")
    if hint is datetime:
        return _check_datetime
    if hint is date:
        return _check_date
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _check_enum(hint)
    if is_typeddict(hint):
        return _check_typeddict(hint)
    origin = get_origin(hint)
    args = get_args(hint)
    if origin is Literal:
        return _check_literal(args)
    if origin in (typing.Union, _UnionType):
        return _check_union(hint, args)
    if origin is list or hint is list:
        return _check_list(compile_checker(args[0] if args else Any), type_name(hint), as_tuple=False)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return _check_list(compile_checker(args[0]), type_name(hint), as_tuple=True)
        raise TypeError(f"unsupported parameter type {hint!r}: use tuple[T, ...]")
    if origin in (dict, Mapping) or hint is dict:
        key_type = args[0] if args else str
        if key_type is not str:
            raise TypeError(f"unsupported parameter type {hint!r}: JSON object keys are strings")
        return _check_dict(compile_checker(args[1] if args else Any), type_name(hint))
    raise TypeError(f"unsupported parameter type {hint!r}")


_UnionType = type(int | None)


def _exact(cls: type, expected: str) -> Checker:
    def check(value: Any, field: str) -> Any:
        if type(value) is not cls:
            _fail(field, expected, value)
        return value

    return check


def _check_int(value: Any, field: str) -> int:
    if type(value) is not int:
        _fail(field, "integer", value)
    return value


def _check_float(value: Any, field: str) -> float:
    kind = type(value)
    if kind is float:
        return typing.cast(float, value)
    if kind is int:
        return float(value)
    _fail(field, "number", value)


def _check_datetime(value: Any, field: str) -> datetime:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is None:
                raise InvalidParams(f"{field}: datetime needs a timezone offset", field=field)
            return parsed
    _fail(field, "ISO-8601 datetime string", value)


def _check_date(value: Any, field: str) -> date:
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    _fail(field, "ISO-8601 date string (YYYY-MM-DD)", value)


def _check_enum(cls: type[enum.Enum]) -> Checker:
    # Keyed by type too, as for Literal: true must not pass for 1, nor 1.0 for 1.
    values = {(type(member.value), member.value): member for member in cls}
    expected = "one of " + ", ".join(repr(member.value) for member in cls)

    def check(value: Any, field: str) -> Any:
        try:
            return values[(type(value), value)]
        except (KeyError, TypeError):
            _fail(field, expected, value)

    return check


def _check_literal(choices: tuple[Any, ...]) -> Checker:
    expected = "one of " + ", ".join(repr(c) for c in choices)
    allowed = {(type(c), c) for c in choices}

    def check(value: Any, field: str) -> Any:
        try:
            if (type(value), value) in allowed:
                return value
        except TypeError:  # unhashable
            pass
        raise InvalidParams(
            f"{field}: expected {expected}, got {value!r}"[:300], field=field, expected=expected
        )

    return check


def _check_union(hint: Any, args: tuple[Any, ...]) -> Checker:
    nullable = type(None) in args
    others = [compile_checker(arg) for arg in args if arg is not type(None)]
    expected = type_name(hint)

    def check(value: Any, field: str) -> Any:
        if value is None and nullable:
            return None
        for checker in others:
            try:
                return checker(value, field)
            except InvalidParams:
                continue
        _fail(field, expected, value)

    return check


def _check_list(item: Checker, expected: str, *, as_tuple: bool) -> Checker:
    def check(value: Any, field: str) -> Any:
        if type(value) is not list:
            _fail(field, expected, value)
        items = [item(element, f"{field}[{index}]") for index, element in enumerate(value)]
        return tuple(items) if as_tuple else items

    return check


def _check_dict(item: Checker, expected: str) -> Checker:
    def check(value: Any, field: str) -> Any:
        if type(value) is not dict:
            _fail(field, expected, value)
        return {key: item(element, f"{field}.{key}") for key, element in value.items()}

    return check


def _check_typeddict(cls: Any) -> Checker:
    hints = typing.get_type_hints(cls)
    raw_hints = typing.get_type_hints(cls, include_extras=True)
    fields: dict[str, Checker] = {}
    required: list[str] = []
    for name, hint in hints.items():
        fields[name] = compile_checker(hint)
        origin = get_origin(raw_hints[name])
        is_required = (name in cls.__required_keys__ and origin is not NotRequired) or origin is Required
        if is_required:
            required.append(name)
    expected = f"object ({cls.__name__})"

    def check(value: Any, field: str) -> Any:
        if type(value) is not dict:
            _fail(field, expected, value)
        for key in value:
            if key not in fields:
                raise InvalidParams(f"{field}.{key}: unknown field", field=f"{field}.{key}")
        for key in required:
            if key not in value:
                raise InvalidParams(f"{field}.{key}: missing required field", field=f"{field}.{key}")
        return {key: fields[key](element, f"{field}.{key}") for key, element in value.items()}

    return check


def type_name(hint: Any) -> str:
    """A short, JSON-flavoured name for a hint, for errors and ``rpc.discover``."""
    names = {int: "integer", float: "number", str: "string", bool: "boolean", type(None): "null"}
    if hint in names:
        return names[hint]
    if hint is Any or hint is object:
        return "any"
    if hint is datetime:
        return "datetime"
    if hint is date:
        return "date"
    if is_typeddict(hint):
        return f"object ({hint.__name__})"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + ", ".join(repr(member.value) for member in hint)
    origin = get_origin(hint)
    args = get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(c) for c in args)
    if origin in (typing.Union, _UnionType):
        return " | ".join(type_name(arg) for arg in args)
    if origin in (list, tuple):
        return f"array of {type_name(args[0])}" if args else "array"
    if origin in (dict, Mapping):
        return f"object of {type_name(args[1])}" if len(args) == 2 else "object"
    return getattr(hint, "__name__", str(hint))
