"""JSON-RPC 2.0 server on a Unix stream socket.

One ``_Connection`` protocol object per client. Each complete line is parsed and dispatched at
once; async methods run as their own tasks, so a connection carries many calls in flight and
answers them in whatever order they finish. Synchronous methods (in-memory answers such as
``health``) are called inline, so a busy server still answers them at once.

Bounds, so that no client can grow our memory or starve the others:

- every call counts toward ``max_in_flight_per_connection``, a batch's calls each: reading pauses
  at the limit, and a batch larger than the room left is refused whole (-32005);
- at most ``max_in_flight_total`` calls in flight over all connections; past it a call is refused
  (-32005) and synchronous methods still answer;
- at most ``max_connections`` connections; one more is told why (-32005) and closed, and it is
  logged;
- a connection that sends no complete request within ``silent_timeout_s`` of connecting, or keeps
  a partial line that long, is closed, and its buffer is given back;
- when a client disconnects, its idempotent calls (reads) still running are cancelled; the others
  run to the end, as a change half made is worse than one made for nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import os
import select
import socket
import stat
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from services.base.config import RpcConfig, check_socket_room
from services.base.errors import (
    ErrorCode,
    InvalidParams,
    OperationalError,
    TradingError,
    code_for,
)
from services.base.logs import trace_var
from services.base.metrics import Metrics
from services.base.rpc import protocol
from services.base.rpc.eager import Pending, start_eagerly
from services.base.rpc.methods import MethodSpec, MethodTable
from services.base.rpc.protocol import RequestId, encode, failure, success, valid_id

log = logging.getLogger("services.rpc")

_REQUEST_KEYS = frozenset({"jsonrpc", "method", "params", "id", "trace"})
_PARSE_ERROR = encode(failure(None, ErrorCode.PARSE_ERROR, "parse error: not valid JSON"))
_NOT_AN_OBJECT = encode(
    failure(None, ErrorCode.INVALID_REQUEST, "invalid request: expected an object or array")
)
_EMPTY_BATCH = encode(failure(None, ErrorCode.INVALID_REQUEST, "invalid request: empty batch"))
_TOO_MANY_CONNECTIONS = encode(
    failure(None, ErrorCode.RATE_LIMITED, "too many connections to this service (rpc.max_connections)")
)

PeerUid = Callable[[Any], "int | None"]
MAX_TRACE = 128
MAX_ERROR_MESSAGE = 500


class Call(NamedTuple):
    """A request that passed every check and is ready to run."""

    spec: MethodSpec
    kwargs: dict[str, Any]
    request_id: RequestId
    is_notification: bool
    trace: str | None


class RpcServer:
    def __init__(
        self,
        methods: MethodTable,
        socket_path: Path,
        *,
        config: RpcConfig | None = None,
        metrics: Metrics | None = None,
        peer_uid: PeerUid = protocol.peer_uid,
        label: dict[str, Any] | None = None,
    ) -> None:
        """``label``: fields added to every object a method answers (and to every object in a list
        it answers), e.g. ``{"synthetic": True}`` in a demo."""
        self.methods = methods
        self.label = label
        self.socket_path = socket_path
        self.config = config or RpcConfig()
        self.metrics = metrics or Metrics()
        self.peer_uid = peer_uid
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_Connection] = set()
        self._socket_inode: int | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.calls = 0  # calls in flight over every connection
        self._refused_since_log = 0
        self._refusal_logged_at = -math.inf

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    @property
    def in_flight(self) -> int:
        return self.calls

    async def start(self) -> None:
        check_socket_room(self.socket_path.parent, self.socket_path.name)
        _remove_stale_socket(self.socket_path)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(
            lambda: _Connection(self), path=str(self.socket_path), backlog=1024
        )
        os.chmod(self.socket_path, 0o600)
        self._socket_inode = self.socket_path.stat().st_ino
        self._sweeper = loop.create_task(self._sweep(), name="rpc-sweeper")

    async def close(self, drain_timeout: float | None = None) -> None:
        """Stop accepting, let calls in flight finish (bounded), then close every connection."""
        if self._server is None:
            return
        self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        timeout = self.config.drain_timeout_s if drain_timeout is None else drain_timeout
        pending = {task for connection in self._connections for task in connection.in_flight}
        if pending:
            _done, stuck = await asyncio.wait(pending, timeout=timeout)
            for task in stuck:
                task.cancel()
            if stuck:
                log.warning("cancelled %d calls still running after %.1fs drain", len(stuck), timeout)
                await asyncio.wait(stuck, timeout=1.0)
        for connection in list(self._connections):
            connection.close()
        self._server = None
        self._unlink_own_socket()

    async def _sweep(self) -> None:
        """Close connections that stay silent, or hold a partial line, for ``silent_timeout_s``."""
        limit = self.config.silent_timeout_s
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, limit / 4))
            now = loop.time()
            stale = [
                c for c in self._connections if c.silent_since is not None and now - c.silent_since > limit
            ]
            for connection in stale:
                connection.close()
            if stale:
                self.metrics.incr("rpc.silent_closed", len(stale))
                log.warning(
                    "closed %d connections silent or holding a partial line for %gs", len(stale), limit
                )

    def refused_connection(self) -> None:
        """Count a connection refused for the limit; log at most every 10 s, with the count."""
        self.metrics.incr("rpc.connections_refused")
        self._refused_since_log += 1
        now = time.monotonic()
        if now - self._refusal_logged_at >= 10.0:
            log.warning(
                "refused %d connections: %d open, the limit (rpc.max_connections)",
                self._refused_since_log,
                len(self._connections),
            )
            self._refused_since_log = 0
            self._refusal_logged_at = now

    def _unlink_own_socket(self) -> None:
        # Only remove the socket we created, not one a newer instance put in its place.
        with contextlib.suppress(FileNotFoundError):
            if self.socket_path.stat().st_ino == self._socket_inode:
                self.socket_path.unlink()

    # -- dispatch -----------------------------------------------------------------------

    def prepare(self, message: Any) -> Call | bytes | None:
        """Check one request object. Returns what to run, or the encoded error, or None (ignore)."""
        if type(message) is not dict:
            self.metrics.incr("rpc.invalid_request")
            return _NOT_AN_OBJECT
        request_id = message.get("id")
        is_notification = "id" not in message
        method = message.get("method")
        trace = message.get("trace")
        problem = None
        if message.get("jsonrpc") != "2.0":
            problem = 'invalid request: "jsonrpc" must be "2.0"'
        elif type(method) is not str:
            problem = 'invalid request: "method" must be a string'
        elif not valid_id(request_id):
            problem = 'invalid request: "id" must be a string, an integer or null'
        elif trace is not None and (type(trace) is not str or len(trace) > MAX_TRACE):
            problem = f'invalid request: "trace" must be a string of at most {MAX_TRACE} characters'
        elif not _REQUEST_KEYS.issuperset(message):
            extra = sorted(str(key) for key in message if key not in _REQUEST_KEYS)
            problem = f"invalid request: unknown member(s) {', '.join(extra)}"
        if problem is not None:
            self.metrics.incr("rpc.invalid_request")
            return encode(
                failure(request_id if valid_id(request_id) else None, ErrorCode.INVALID_REQUEST, problem)
            )
        spec = self.methods.get(typing.cast(str, method))
        if spec is None:
            self.metrics.incr("rpc.method_not_found")
            if is_notification:
                return None
            return encode(
                failure(request_id, ErrorCode.METHOD_NOT_FOUND, f"method not found: {method}"[:300])
            )
        try:
            kwargs = spec.validate(message.get("params"))
        except InvalidParams as exc:
            self.metrics.record_call(spec.name, 0.0, ok=False)
            if is_notification:
                return None
            return encode(failure(request_id, ErrorCode.INVALID_PARAMS, exc.message[:500], exc.data))
        return Call(spec, kwargs, request_id, is_notification, trace)

    def _labelled(self, result: Any) -> Any:
        if not self.label:
            return result
        if isinstance(result, dict):
            return {**result, **self.label}
        if isinstance(result, list):
            return [{**item, **self.label} if isinstance(item, dict) else item for item in result]
        return result

    def call_sync(
        self, spec: MethodSpec, kwargs: dict[str, Any], request_id: RequestId, trace: str | None
    ) -> bytes:
        token = trace_var.set(trace)
        started = time.perf_counter()
        try:
            result = spec.func(**kwargs)
            answer = encode(success(request_id, self._labelled(result)))
        except Exception as exc:
            self.metrics.record_call(spec.name, time.perf_counter() - started, ok=False)
            return self._error_answer(spec, request_id, trace, exc)
        finally:
            trace_var.reset(token)
        self.metrics.record_call(spec.name, time.perf_counter() - started, ok=True)
        return answer

    async def call_async(
        self, spec: MethodSpec, kwargs: dict[str, Any], request_id: RequestId, trace: str | None
    ) -> bytes:
        if trace is not None:
            trace_var.set(trace)  # start_eagerly gave this call a context of its own
        started = time.perf_counter()
        try:
            result = await spec.func(**kwargs)
            answer = encode(success(request_id, self._labelled(result)))
        except asyncio.CancelledError:
            self.metrics.record_call(spec.name, time.perf_counter() - started, ok=False)
            return encode(failure(request_id, ErrorCode.DEPENDENCY_UNAVAILABLE, "service is shutting down"))
        except Exception as exc:
            self.metrics.record_call(spec.name, time.perf_counter() - started, ok=False)
            return self._error_answer(spec, request_id, trace, exc)
        self.metrics.record_call(spec.name, time.perf_counter() - started, ok=True)
        return answer

    def _error_answer(
        self, spec: MethodSpec, request_id: RequestId, trace: str | None, exc: Exception
    ) -> bytes:
        if isinstance(exc, TradingError) and code_for(exc) != ErrorCode.INTERNAL_ERROR:
            # A message may quote the input: never more than MAX_ERROR_MESSAGE of it back.
            return encode(
                failure(request_id, code_for(exc), exc.message[:MAX_ERROR_MESSAGE], exc.data or None)
            )
        trace = trace or os.urandom(8).hex()
        if isinstance(exc, orjson.JSONEncodeError):
            log.error("%s returned a value that is not JSON", spec.name, exc_info=exc, extra={"trace": trace})
        else:
            log.error("%s failed", spec.name, exc_info=exc, extra={"trace": trace})
        return encode(failure(request_id, ErrorCode.INTERNAL_ERROR, "internal error", {"trace": trace}))


class _Connection(asyncio.Protocol):
    def __init__(self, server: RpcServer) -> None:
        self.server = server
        self.limit = server.config.max_message_bytes
        self.max_in_flight = server.config.max_in_flight_per_connection
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        # Each task answers one call or one batch: (calls it holds, cancel it if the client goes).
        self.in_flight: dict[asyncio.Task[None], tuple[int, bool]] = {}
        self.calls = 0
        self.closing = False
        self.eof = False
        self.reading_paused = False
        self.writing_paused = False
        # Since when the connection has sent nothing whole (None once it has, unless a partial
        # line then waits): the sweeper closes it after ``silent_timeout_s``.
        self.silent_since: float | None = asyncio.get_running_loop().time()

    # -- transport events -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        try:
            uid = self.server.peer_uid(transport.get_extra_info("socket"))
        except OSError:
            uid = None
        if not protocol.same_user(uid):
            log.warning("refused a connection from uid %s", uid)
            self.server.metrics.incr("rpc.unauthorized")
            self.closing = True
            self._write(protocol.UNAUTHORIZED)
            transport.close()
            return
        if len(self.server._connections) >= self.server.config.max_connections:
            self.server.refused_connection()
            self.closing = True
            self._write(_TOO_MANY_CONNECTIONS)
            transport.close()
            return
        self.server._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server._connections.discard(self)
        self.buffer = bytearray()  # given back, not just emptied
        self._cancel_reads()  # nobody will read these answers: stop the reads; changes run to the end

    def eof_received(self) -> bool:
        # The peer finished sending: answer what is in flight, then close. A partial last line
        # (no newline) is not a request and is dropped.
        self.eof = True
        self.buffer = bytearray()
        self.silent_since = None
        if self.in_flight and self._peer_gone():
            self._cancel_reads()  # it closed, not just finished sending: nobody reads the answers
        return bool(self.in_flight)  # True keeps the transport open for the answers

    def _peer_gone(self) -> bool:
        """Whether the peer closed its end entirely (not only its writing half)."""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is None:
            return False
        try:
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLHUP)
            return any(event & select.POLLHUP for _fd, event in poller.poll(0))
        except (OSError, ValueError):
            return False

    def _cancel_reads(self) -> None:
        for task, (_calls, cancellable) in list(self.in_flight.items()):
            if cancellable:
                task.cancel()

    def pause_writing(self) -> None:
        self.writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._update_reading()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        buffer = self.buffer
        if not buffer and data.find(b"\n") == len(data) - 1:
            # The common case: exactly one whole line.
            self.silent_since = None
            if len(data) - 1 > self.limit:
                self._too_large()
            else:
                self._handle_line(data)
            return
        buffer += data
        self._handle_buffered()

    def _handle_buffered(self) -> None:
        # Stops as soon as reading is paused: the lines left in the buffer wait for resume, so a
        # chunk holding many requests cannot put more than max_in_flight calls in flight.
        buffer = self.buffer
        start = 0
        while not self.closing and not self.reading_paused:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            if end - start > self.limit:
                self._too_large()
                return
            self._handle_line(bytes(buffer[start:end]))
            start = end + 1
        if self.closing:
            return
        if start:
            self.silent_since = None
        if start == len(buffer):
            self.buffer = bytearray()  # a fresh one: a large one emptied keeps its memory
            return
        del buffer[:start]
        if self.silent_since is None and buffer.find(b"\n") < 0:
            self.silent_since = asyncio.get_running_loop().time()  # a partial line waits
        if len(buffer) > self.limit and buffer.find(b"\n", 0, self.limit + 1) < 0:
            self._too_large()

    # -- requests ----------------------------------------------------------------------

    def _handle_line(self, line: bytes) -> None:
        try:
            message = orjson.loads(line)
        except orjson.JSONDecodeError:
            if line.strip():
                self.server.metrics.incr("rpc.parse_error")
                self._write(_PARSE_ERROR)
            return
        if type(message) is list:
            self._handle_batch(message)
            return
        prepared = self.server.prepare(message)
        if prepared is None:
            return
        if isinstance(prepared, bytes):
            self._write(prepared)
            return
        if prepared.spec.is_async and self.server.calls >= self.server.config.max_in_flight_total:
            self._busy(prepared, 1)
            return
        answer = self._run(prepared)
        if isinstance(answer, Pending):
            self._track(
                self._answer_later(answer.task, prepared.is_notification), 1, prepared.spec.idempotent
            )
        elif not prepared.is_notification:
            self._write(answer)

    def _busy(self, call: Call | None, calls: int) -> None:
        """Refuse ``calls`` calls (-32005): the server or this connection has no room for them."""
        self.server.metrics.incr("rpc.busy")
        room = min(
            self.max_in_flight - self.calls, self.server.config.max_in_flight_total - self.server.calls
        )
        message = (
            f"too many calls in flight: {calls} more do not fit in the room for {max(0, room)} "
            f"(rpc.max_in_flight_per_connection {self.max_in_flight}, "
            f"rpc.max_in_flight_total {self.server.config.max_in_flight_total})"
        )
        if call is None or not call.is_notification:
            self._write(encode(failure(call.request_id if call else None, ErrorCode.RATE_LIMITED, message)))

    def _run(self, call: Call) -> bytes | Pending[bytes]:
        """The encoded answer, or ``Pending`` when an async method suspended."""
        if not call.spec.is_async:
            return self.server.call_sync(call.spec, call.kwargs, call.request_id, call.trace)
        return start_eagerly(self.server.call_async(call.spec, call.kwargs, call.request_id, call.trace))

    async def _answer_later(self, call: asyncio.Task[bytes], is_notification: bool) -> None:
        answer = await call
        if not is_notification:
            self._write(answer)

    def _handle_batch(self, batch: list[Any]) -> None:
        if not batch:
            self.server.metrics.incr("rpc.invalid_request")
            self._write(_EMPTY_BATCH)
            return
        limit = self.server.config.max_batch_size
        if len(batch) > limit:
            self.server.metrics.incr("rpc.invalid_request")
            self._write(
                encode(failure(None, ErrorCode.INVALID_REQUEST, f"batch too large: {len(batch)} > {limit}"))
            )
            return
        prepared_batch = [self.server.prepare(message) for message in batch]
        calls = [p for p in prepared_batch if isinstance(p, Call)]
        asynchronous = sum(1 for call in calls if call.spec.is_async)
        room = min(
            self.max_in_flight - self.calls, self.server.config.max_in_flight_total - self.server.calls
        )
        if asynchronous > room:
            self._busy(None, asynchronous)
            return
        answers: list[bytes] = []
        later: list[tuple[asyncio.Task[bytes], bool]] = []
        for prepared in prepared_batch:
            if prepared is None:
                continue
            if isinstance(prepared, bytes):
                answers.append(prepared)
                continue
            answer = self._run(prepared)
            if isinstance(answer, Pending):
                later.append((answer.task, prepared.is_notification))
            elif not prepared.is_notification:
                answers.append(answer)
        if later:
            reads_only = all(call.spec.idempotent for call in calls)
            self._track(self._finish_batch(answers, later), len(later), reads_only)
        elif answers:
            self._write(_join_batch(answers))

    async def _finish_batch(
        self, answers: list[bytes], later: list[tuple[asyncio.Task[bytes], bool]]
    ) -> None:
        for call, is_notification in later:
            answer = await call
            if not is_notification:
                answers.append(answer)
        if answers:
            self._write(_join_batch(answers))

    # -- plumbing ----------------------------------------------------------------------

    def _track(self, coroutine: Any, calls: int, cancellable: bool) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.in_flight[task] = (calls, cancellable)
        self.calls += calls
        self.server.calls += calls
        task.add_done_callback(self._call_done)
        self._update_reading()

    def _call_done(self, task: asyncio.Task[None]) -> None:
        calls, _cancellable = self.in_flight.pop(task, (0, False))
        self.calls -= calls
        self.server.calls -= calls
        if not task.cancelled() and task.exception() is not None:
            log.error("RPC dispatch failed", exc_info=task.exception())
        if self.eof and not self.in_flight:
            self.close()
        else:
            self._update_reading()

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or self.closing:
            return
        should_pause = self.writing_paused or self.calls >= self.max_in_flight
        if should_pause and not self.reading_paused:
            self.reading_paused = True
            transport.pause_reading()
        elif not should_pause and self.reading_paused:
            self.reading_paused = False
            transport.resume_reading()
            if self.buffer:
                self._handle_buffered()  # lines that arrived before the pause

    def _write(self, payload: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(payload)

    def _too_large(self) -> None:
        self.server.metrics.incr("rpc.too_large")
        self._write(protocol.MESSAGE_TOO_LARGE)
        self.close()

    def close(self) -> None:
        self.closing = True
        self.buffer = bytearray()
        if self.transport is not None:
            self.transport.close()
        self.server._connections.discard(self)


def _join_batch(answers: list[bytes]) -> bytes:
    return b"[" + b",".join(answer[:-1] for answer in answers) + b"]\n"


def _remove_stale_socket(path: Path) -> None:
    """Remove a socket left by a dead process; refuse if a live one is listening there."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OperationalError(f"{path} exists and is not a socket; remove it or choose another TRADING_HOME")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(0.5)
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise OperationalError(f"cannot check whether {path} is in use: {exc}") from exc
        path.unlink(missing_ok=True)
    else:
        raise OperationalError(f"{path} is in use: another instance of this service is running")
    finally:
        probe.close()
