"""JSON-RPC client over a persistent Unix-socket connection.

Many calls share one connection, each waiting on its own future keyed by request id. A call has
one time budget (its timeout) covering connecting, sending and waiting. Failing to connect is
retried with exponential back-off; a call whose connection dropped after it was sent is resent
only if the method is idempotent (as the caller says, or as the server's ``rpc.discover`` says).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from services.base.errors import CallTimeout, DependencyUnavailable, error_from_wire
from services.base.rpc.protocol import encode

log = logging.getLogger("services.rpc.client")

# Answers can be far bigger than requests (histories, reports).
MAX_ANSWER_BYTES = 256 * 1024 * 1024


class ConnectionLost(Exception):
    """The connection closed while a call was waiting for its answer."""


class _ClientProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.buffer = bytearray()
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        if not buffer and data.find(b"\n") == len(data) - 1:
            self._answer(data)
            return
        buffer += data
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            self._answer(bytes(buffer[start:end]))
            start = end + 1
        del buffer[:start]
        if len(buffer) > MAX_ANSWER_BYTES:
            log.error("answer larger than %d bytes; dropping the connection", MAX_ANSWER_BYTES)
            self.fail_all(ConnectionLost("answer too large"))
            if self.transport is not None:
                self.transport.close()

    def _answer(self, line: bytes) -> None:
        try:
            message = orjson.loads(line)
        except orjson.JSONDecodeError:
            log.warning("server sent a line that is not JSON: %.200r", line)
            return
        messages = message if type(message) is list else [message]
        for item in messages:
            if type(item) is not dict:
                continue
            request_id = item.get("id")
            future = self.pending.pop(request_id, None) if type(request_id) is int else None
            if future is None:
                if "error" in item and request_id is None:
                    # An error the server could not tie to a request, e.g. unauthorized.
                    self.fail_all(_wire_error(item["error"]))
                continue
            if not future.done():
                future.set_result(item)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail_all(ConnectionLost(str(exc) if exc else "connection closed"))
        if not self.closed.done():
            self.closed.set_result(None)

    def fail_all(self, exc: BaseException) -> None:
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(exc)

    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()


class RpcClient:
    """A client for one service socket. Use as ``async with RpcClient(path) as client:``."""

    def __init__(
        self,
        socket_path: Path | str,
        *,
        timeout: float = 10.0,
        connect_attempts: int = 5,
        first_backoff: float = 0.05,
        max_backoff: float = 2.0,
        on_call: Callable[[int], None] | None = None,
    ) -> None:
        """``on_call``: told +1 as each call starts and -1 as it ends (answered or failed), e.g.
        to count the calls a process has waiting for an answer."""
        self.socket_path = str(socket_path)
        self.timeout = timeout
        self.connect_attempts = max(1, connect_attempts)
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self.on_call = on_call
        self._protocol: _ClientProtocol | None = None
        self._connecting: asyncio.Lock | None = None
        self._ids = itertools.count(1)
        self._idempotent: dict[str, bool] | None = None
        self.reconnects = 0

    async def __aenter__(self) -> RpcClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(protocol.closed), 1.0)

    @property
    def connected(self) -> bool:
        return self._protocol is not None and self._protocol.usable

    async def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        idempotent: bool | None = None,
        trace: str | None = None,
    ) -> Any:
        """Call ``method`` and return its result, or raise the error the server answered with."""
        on_call = self.on_call
        if on_call is None:
            return await self._call(method, params, timeout=timeout, idempotent=idempotent, trace=trace)
        on_call(1)
        try:
            return await self._call(method, params, timeout=timeout, idempotent=idempotent, trace=trace)
        finally:
            on_call(-1)

    async def _call(
        self,
        method: str,
        params: dict[str, Any] | None,
        *,
        timeout: float | None,
        idempotent: bool | None,
        trace: str | None,
    ) -> Any:
        loop = asyncio.get_running_loop()
        budget = self.timeout if timeout is None else timeout
        deadline = loop.time() + budget
        while True:
            protocol = await self._connected(deadline, method)
            if not protocol.usable:
                # Lost while this call waited to resume: what was pending there has already
                # failed, and a request sent now would wait its whole timeout. Connect again.
                continue
            request_id = next(self._ids)
            future: asyncio.Future[Any] = loop.create_future()
            protocol.pending[request_id] = future
            assert protocol.transport is not None
            protocol.transport.write(_request(method, params, request_id, trace))
            timer = loop.call_at(deadline, _expire, future)
            try:
                answer = await future
            except TimeoutError:
                protocol.pending.pop(request_id, None)
                raise CallTimeout(f"{method} did not answer within {budget:g}s", method=method) from None
            except ConnectionLost as exc:
                if loop.time() < deadline and await self._may_resend(method, idempotent, deadline):
                    log.info("connection lost during %s; resending (idempotent)", method)
                    continue
                raise DependencyUnavailable(
                    f"connection to {self.socket_path} lost while {method} was running; "
                    "not resent because it is not idempotent",
                    method=method,
                ) from exc
            finally:
                timer.cancel()
            if "error" in answer:
                raise _wire_error(answer["error"])
            return answer.get("result")

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        """Send a notification: no answer, no error report."""
        deadline = asyncio.get_running_loop().time() + self.timeout
        protocol = await self._connected(deadline, method)
        assert protocol.transport is not None
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params:
            message["params"] = params
        protocol.transport.write(encode(message))

    async def _may_resend(self, method: str, idempotent: bool | None, deadline: float) -> bool:
        if idempotent is not None:
            return idempotent
        if self._idempotent is None:
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                described = await self.call("rpc.discover", timeout=remaining, idempotent=True)
                self._idempotent = {m["name"]: bool(m.get("idempotent")) for m in described["methods"]}
            except Exception:  # without the server's word, do not resend
                return False
        return self._idempotent.get(method, False)

    async def _connected(self, deadline: float, method: str) -> _ClientProtocol:
        protocol = self._protocol
        if protocol is not None and protocol.usable:
            return protocol
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            protocol = self._protocol
            if protocol is not None and protocol.usable:
                return protocol
            self._protocol = await self._connect(deadline, method)
            return self._protocol

    async def _connect(self, deadline: float, method: str) -> _ClientProtocol:
        loop = asyncio.get_running_loop()
        backoff = self.first_backoff
        last_error: OSError | None = None
        for attempt in range(1, self.connect_attempts + 1):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                _transport, protocol = await asyncio.wait_for(
                    loop.create_unix_connection(_ClientProtocol, self.socket_path), remaining
                )
            except TimeoutError:
                break
            except OSError as exc:
                last_error = exc
                left = self.connect_attempts - attempt
                if left == 0:
                    break
                log.debug("connect to %s failed (%s); %d attempts left", self.socket_path, exc.strerror, left)
                await asyncio.sleep(min(backoff, max(0.0, deadline - loop.time())))
                backoff = min(backoff * 2, self.max_backoff)
                continue
            if self._protocol is not None:
                self.reconnects += 1
            return protocol
        reason = last_error.strerror if last_error is not None else "timed out"
        raise DependencyUnavailable(
            f"cannot connect to {self.socket_path} for {method}: {reason}",
            socket=self.socket_path,
            method=method,
        )


def _request(method: str, params: dict[str, Any] | None, request_id: int, trace: str | None) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params:
        message["params"] = params
    if trace is not None:
        message["trace"] = trace
    return encode(message)


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


def _wire_error(error: Any) -> Exception:
    if not isinstance(error, dict):
        return error_from_wire(-32603, "malformed error from server")
    return error_from_wire(int(error.get("code", -32603)), str(error.get("message", "")), error.get("data"))
