"""Symbols named by callers, matched to the ones a service is configured for."""

from __future__ import annotations

from collections.abc import Sequence

from services.base.errors import InvalidParams


def configured_symbol(symbol: str, configured: Sequence[str], *, setting: str, field: str = "symbol") -> str:
    """The configured spelling of ``symbol`` (case and spaces aside), or -32602 naming the
    configured ones and the ``setting`` that lists them."""
    wanted = symbol.strip().upper()
    for known in configured:
        if known.upper() == wanted:
            return known
    raise InvalidParams(
        f"unknown symbol {symbol!r}; configured: {', '.join(configured)} ({setting})", field=field
    )
