"""The JSON-RPC error-code table and the exception hierarchy shared by every service.

This module imports nothing of the project, so any layer can raise these exceptions. Domain
code raises them; only the RPC layer turns them into wire codes (``code_for``) and, on the
client side, back into exceptions (``error_from_wire``).

Exceptions are split by what the caller or operator must do:

- ``OperationalError``: stop and let a human act (bad config, corrupt file). Never retried.
- ``TemporaryError``: the same call may succeed later (a dependency is down, a timeout, a quota).
- ``RequestError``: this request is wrong or not allowed; retrying it unchanged will not help.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class ErrorCode(IntEnum):
    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603
    DEPENDENCY_UNAVAILABLE = -32000
    TIMEOUT = -32001
    REJECTED = -32002
    NOT_FOUND = -32003
    MARKET_CLOSED = -32004
    RATE_LIMITED = -32005
    UNAUTHORIZED = -32010


class TradingError(Exception):
    """Base of every exception the services raise on purpose."""

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.data: dict[str, Any] = data


class OperationalError(TradingError):
    """A human must act: the process should not retry."""


class ConfigError(OperationalError):
    """A configuration value is unknown or invalid; ``message`` names it."""


class TemporaryError(TradingError):
    """The same call may succeed later."""


class DependencyUnavailable(TemporaryError):
    """A service, Redis or an external source cannot be reached."""


class CallTimeout(TemporaryError):
    """A call did not finish within its time budget."""


class RateLimited(TemporaryError):
    """A rate limit or quota is exhausted."""


class RequestError(TradingError):
    """The request itself is wrong or not allowed."""


class ParseError(RequestError):
    """The message is not valid JSON."""


class InvalidRequest(RequestError):
    """The message is JSON but not a valid JSON-RPC request."""


class MethodNotFound(RequestError):
    """No exposed method has that name."""


class InvalidParams(RequestError):
    """A parameter is missing, unknown or of the wrong type; ``data['field']`` names it."""

    def __init__(self, message: str, *, field: str, **data: Any) -> None:
        super().__init__(message, field=field, **data)
        self.field = field


class Rejected(RequestError):
    """A rule refused the request; ``data['reason']`` says which."""

    def __init__(self, message: str, *, reason: str, **data: Any) -> None:
        super().__init__(message, reason=reason, **data)
        self.reason = reason


class NotFound(RequestError):
    """The thing asked for does not exist."""


class MarketClosed(RequestError):
    """The action needs the market to be open."""


class Unauthorized(RequestError):
    """The caller is not allowed to talk to this service."""


class InternalError(TradingError):
    """An unexpected failure inside the service (the log has the traceback)."""


class RemoteError(TradingError):
    """An error answered by a server with a code this table does not know."""

    def __init__(self, code: int, message: str, **data: Any) -> None:
        super().__init__(message, **data)
        self.code = code


# The one table from exception class to wire code. Looked up along the MRO, so a subclass
# defined by a service inherits its parent's code.
ERROR_CODES: dict[type[TradingError], ErrorCode] = {
    ParseError: ErrorCode.PARSE_ERROR,
    InvalidRequest: ErrorCode.INVALID_REQUEST,
    MethodNotFound: ErrorCode.METHOD_NOT_FOUND,
    InvalidParams: ErrorCode.INVALID_PARAMS,
    InternalError: ErrorCode.INTERNAL_ERROR,
    DependencyUnavailable: ErrorCode.DEPENDENCY_UNAVAILABLE,
    CallTimeout: ErrorCode.TIMEOUT,
    Rejected: ErrorCode.REJECTED,
    NotFound: ErrorCode.NOT_FOUND,
    MarketClosed: ErrorCode.MARKET_CLOSED,
    RateLimited: ErrorCode.RATE_LIMITED,
    Unauthorized: ErrorCode.UNAUTHORIZED,
}

_EXCEPTION_BY_CODE: dict[int, type[TradingError]] = {int(code): cls for cls, code in ERROR_CODES.items()}


def code_for(exc: BaseException) -> ErrorCode:
    """The wire code for an exception; anything not in the table is an internal error."""
    if isinstance(exc, RemoteError):
        return _known_code(exc.code)
    for cls in type(exc).__mro__:
        code = ERROR_CODES.get(cls)
        if code is not None:
            return code
    return ErrorCode.INTERNAL_ERROR


def _known_code(code: int) -> ErrorCode:
    try:
        return ErrorCode(code)
    except ValueError:
        return ErrorCode.INTERNAL_ERROR


def error_from_wire(code: int, message: str, data: Any = None) -> TradingError:
    """Rebuild the exception a server answered with, so callers can catch domain types."""
    fields = dict(data) if isinstance(data, dict) else ({} if data is None else {"detail": data})
    cls = _EXCEPTION_BY_CODE.get(code)
    if cls is None:
        return RemoteError(code, message, **fields)
    exc = cls.__new__(cls)
    TradingError.__init__(exc, message, **fields)
    if isinstance(exc, InvalidParams):
        exc.field = str(fields.get("field", ""))
    if isinstance(exc, Rejected):
        exc.reason = str(fields.get("reason", ""))
    return exc
