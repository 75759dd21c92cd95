"""Marking methods as callable over RPC, and the table the server dispatches from.

Only methods decorated with ``@rpc_method`` are callable. Marking a method idempotent tells
clients they may resend it after a dropped connection.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from services.base.rpc.params import ParamValidator

F = TypeVar("F", bound=Callable[..., Any])

_MARK = "__rpc_method__"


@dataclass(frozen=True, slots=True)
class RpcMark:
    name: str | None
    idempotent: bool


@overload
def rpc_method(func: F, *, name: str | None = None, idempotent: bool = False) -> F: ...
@overload
def rpc_method(
    func: None = None, *, name: str | None = None, idempotent: bool = False
) -> Callable[[F], F]: ...
def rpc_method(
    func: F | None = None, *, name: str | None = None, idempotent: bool = False
) -> F | Callable[[F], F]:
    """Expose a service method over RPC: ``@rpc_method`` or ``@rpc_method(idempotent=True)``."""

    def mark(target: F) -> F:
        setattr(target, _MARK, RpcMark(name=name, idempotent=idempotent))
        return target

    return mark(func) if func is not None else mark


@dataclass(frozen=True, slots=True)
class MethodSpec:
    name: str
    func: Callable[..., Any]
    is_async: bool
    idempotent: bool
    validate: ParamValidator
    doc: str

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "params": self.validate.describe(),
            "idempotent": self.idempotent,
            "doc": self.doc,
        }


class MethodTable:
    """The exposed methods of one object, by wire name."""

    def __init__(self) -> None:
        self._methods: dict[str, MethodSpec] = {}

    @classmethod
    def from_object(cls, target: object) -> MethodTable:
        table = cls()
        table.add_object(target)
        return table

    def add_object(self, target: object) -> None:
        """Add the ``@rpc_method`` methods of ``target``, bound to it."""
        for attr in _marked_attributes(type(target)):
            bound = getattr(target, attr)
            mark: RpcMark = getattr(bound, _MARK)
            self.add(mark.name or attr, bound, idempotent=mark.idempotent)

    def add(self, name: str, func: Callable[..., Any], *, idempotent: bool = False) -> None:
        if name in self._methods:
            raise ValueError(f"RPC method {name!r} is defined twice")
        self._methods[name] = MethodSpec(
            name=name,
            func=func,
            is_async=inspect.iscoroutinefunction(func),
            idempotent=idempotent,
            validate=ParamValidator(func),
            doc=inspect.cleandoc(func.__doc__ or ""),
        )

    def get(self, name: str) -> MethodSpec | None:
        return self._methods.get(name)

    def __iter__(self) -> Iterator[MethodSpec]:
        return iter(sorted(self._methods.values(), key=lambda spec: spec.name))

    def __len__(self) -> int:
        return len(self._methods)


def _marked_attributes(cls: type) -> Iterator[str]:
    seen: set[str] = set()
    for klass in cls.__mro__:
        for attr, value in vars(klass).items():
            if attr in seen:
                continue
            seen.add(attr)  # an override decides for itself whether it is exposed
            if callable(value) and hasattr(value, _MARK):
                yield attr
