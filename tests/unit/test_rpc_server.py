"""RpcServer in-process, spoken to with raw Unix-socket streams and hand-written byte lines."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest
import uvloop

from services.base.config import RpcConfig, TradingHome
from services.base.errors import Rejected
from services.base.rpc import MethodTable, RpcServer, rpc_method
from services.base.runner import raise_open_file_limit
from tests.conftest import eventually

READ_TIMEOUT = 10.0


class Target:
    """The methods the test server exposes, plus a few that must stay hidden."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.gate = asyncio.Event()
        self.blocked = 0

    @rpc_method(idempotent=True)
    def add(self, a: int, b: int) -> int:
        """Add two integers."""
        self.calls.append(("add", (a, b)))
        return a + b

    @rpc_method
    def note(self, text: str) -> None:
        self.calls.append(("note", text))

    @rpc_method
    def shape(self, count: int, names: list[str], ratio: float = 1.0) -> dict[str, Any]:
        return {"count": count, "names": names, "ratio": ratio}

    @rpc_method
    async def wait_gate(self, tag: str) -> str:
        """Suspends until ``open_gate`` runs."""
        self.blocked += 1
        try:
            await self.gate.wait()
        finally:
            self.blocked -= 1
        return tag

    @rpc_method
    async def open_gate(self) -> str:
        self.gate.set()
        return "opened"

    @rpc_method
    async def pause(self, seconds: float, tag: str) -> str:
        await asyncio.sleep(seconds)
        return tag

    @rpc_method(idempotent=True)
    async def slow_read(self, tag: str) -> str:
        """A read that waits for the gate; records whether it was cancelled."""
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.calls.append(("cancelled", tag))
            raise
        return tag

    @rpc_method
    async def slow_change(self, tag: str) -> str:
        """A change that waits for the gate; records that it finished."""
        await self.gate.wait()
        self.calls.append(("changed", tag))
        return tag

    @rpc_method
    def crash(self) -> None:
        raise RuntimeError("secret detail 7f3a: a bug inside a method")

    @rpc_method
    def refuse(self, reason: str) -> None:
        raise Rejected(f"refused: {reason}", reason=reason)

    @rpc_method(name="custom.name")
    def renamed(self) -> str:
        return "renamed"

    def hidden(self) -> str:
        self.calls.append(("hidden", None))
        return "should not be reachable"

    def _private(self) -> str:
        return "should not be reachable"


ServerFactory = Callable[..., Awaitable[RpcServer]]


@pytest.fixture
def target() -> Target:
    return Target()


@contextlib.asynccontextmanager
async def serving(home: TradingHome, target: Target) -> AsyncIterator[ServerFactory]:
    servers: list[RpcServer] = []

    async def make(name: str = "t", **kwargs: Any) -> RpcServer:
        server = RpcServer(MethodTable.from_object(target), home.socket_path(name), **kwargs)
        await server.start()
        servers.append(server)
        return server

    try:
        yield make
    finally:
        target.gate.set()
        for server in servers:
            await server.close(1.0)


@pytest.fixture
async def make_server(home: TradingHome, target: Target) -> AsyncIterator[ServerFactory]:
    async with serving(home, target) as make:
        yield make


@pytest.fixture
async def server(make_server: ServerFactory) -> RpcServer:
    return await make_server()


class Peer:
    """One raw client connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, path: Path, *, limit: int = 4 * 1024 * 1024) -> Peer:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=limit)
        return cls(reader, writer)

    async def send(self, *lines: bytes) -> None:
        self.writer.write(b"".join(line + b"\n" for line in lines))
        await self.writer.drain()

    async def send_json(self, *messages: Any) -> None:
        await self.send(*(orjson.dumps(message) for message in messages))

    async def raw_line(self) -> bytes:
        line = await asyncio.wait_for(self.reader.readline(), READ_TIMEOUT)
        assert line.endswith(b"\n"), f"connection ended before an answer: {line!r}"
        return line

    async def recv(self) -> Any:
        return orjson.loads(await self.raw_line())

    async def read_to_eof(self) -> bytes:
        return await asyncio.wait_for(self.reader.read(), READ_TIMEOUT)

    async def call(self, method: str, params: Any = None, request_id: Any = 1) -> Any:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": request_id}
        if params is not None:
            message["params"] = params
        await self.send_json(message)
        return await self.recv()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


@pytest.fixture
async def peer(server: RpcServer) -> AsyncIterator[Peer]:
    client = await Peer.connect(server.socket_path)
    yield client
    await client.close()


def request(method: str, params: Any = None, request_id: Any = None, **extra: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    if request_id is not None:
        message["id"] = request_id
    message.update(extra)
    return message


def assert_error(answer: Any, code: int, request_id: Any) -> dict[str, Any]:
    assert type(answer) is dict, answer
    assert answer["jsonrpc"] == "2.0"
    assert answer["id"] == request_id
    assert type(answer["id"]) is type(request_id)
    assert "result" not in answer
    error = answer["error"]
    assert error["code"] == code, answer
    assert type(error["message"]) is str
    assert error["message"]
    return error  # type: ignore[no-any-return]


# -- single requests ----------------------------------------------------------------------


async def test_valid_call_answers_with_result_and_same_id(peer: Peer, target: Target) -> None:
    answer = await peer.call("add", {"a": 2, "b": 40}, request_id="req-1")
    assert answer == {"jsonrpc": "2.0", "id": "req-1", "result": 42}
    answer = await peer.call("add", {"a": -1, "b": 1}, request_id=7)
    assert answer == {"jsonrpc": "2.0", "id": 7, "result": 0}
    assert target.calls == [("add", (2, 40)), ("add", (-1, 1))]


async def test_null_id_is_a_request_and_gets_an_answer(peer: Peer) -> None:
    await peer.send(b'{"jsonrpc":"2.0","method":"add","params":{"a":1,"b":1},"id":null}')
    assert await peer.recv() == {"jsonrpc": "2.0", "id": None, "result": 2}


async def test_notification_runs_but_gets_no_answer(peer: Peer, target: Target) -> None:
    # Lines on one connection are handled in order and sync methods answer inline, so an answer
    # to the notification would arrive before the answer to the request that follows it.
    await peer.send_json(request("note", {"text": "hello"}), request("note", {"text": "bad", "x": 1}))
    await peer.send_json(request("no.such.method"), request("add", {"a": 1, "b": 2}, request_id=99))
    assert await peer.recv() == {"jsonrpc": "2.0", "id": 99, "result": 3}
    assert ("note", "hello") in target.calls
    assert ("note", "bad") not in target.calls


async def test_malformed_json_gets_parse_error_with_null_id(peer: Peer) -> None:
    for line in (b'{"jsonrpc": "2.0", "method": "add"', b"not json at all", b"\xff\xfe\x00", b"{'a': 1}"):
        await peer.send(line)
        error = assert_error(await peer.recv(), -32700, None)
        assert "parse" in error["message"]


async def test_blank_lines_are_ignored(peer: Peer) -> None:
    await peer.send(b"", b"   ", b"\t\r")
    assert await peer.call("add", {"a": 1, "b": 1}, request_id=5) == {"jsonrpc": "2.0", "id": 5, "result": 2}


@pytest.mark.parametrize("line", [b"5", b'"x"', b"null", b"true", b"3.5"])
async def test_non_object_gets_invalid_request(peer: Peer, line: bytes) -> None:
    await peer.send(line)
    assert_error(await peer.recv(), -32600, None)


@pytest.mark.parametrize(
    "message",
    [
        {"method": "add", "params": {"a": 1, "b": 2}, "id": 3},
        {"jsonrpc": "1.0", "method": "add", "params": {"a": 1, "b": 2}, "id": 3},
        {"jsonrpc": 2.0, "method": "add", "params": {"a": 1, "b": 2}, "id": 3},
        {"jsonrpc": None, "method": "add", "params": {"a": 1, "b": 2}, "id": 3},
    ],
)
async def test_wrong_or_missing_jsonrpc_version_is_invalid(peer: Peer, target: Target, message: Any) -> None:
    await peer.send_json(message)
    error = assert_error(await peer.recv(), -32600, 3)
    assert "jsonrpc" in error["message"]
    assert target.calls == []


@pytest.mark.parametrize(
    ("message", "answer_id"),
    [
        ({"jsonrpc": "2.0", "method": 5, "id": 1}, 1),
        ({"jsonrpc": "2.0", "id": 1}, 1),
        ({"jsonrpc": "2.0", "method": "add", "id": 1.5}, None),
        ({"jsonrpc": "2.0", "method": "add", "id": True}, None),
        ({"jsonrpc": "2.0", "method": "add", "id": [1]}, None),
        ({"jsonrpc": "2.0", "method": "add", "id": 1, "trace": 5}, 1),
        ({"jsonrpc": "2.0", "method": "add", "id": 1, "extra": 5}, 1),
    ],
)
async def test_malformed_request_objects_are_invalid(peer: Peer, message: Any, answer_id: Any) -> None:
    await peer.send_json(message)
    assert_error(await peer.recv(), -32600, answer_id)


async def test_unknown_method_gets_method_not_found(peer: Peer) -> None:
    error = assert_error(await peer.call("nope", {"a": 1}, request_id=4), -32601, 4)
    assert "nope" in error["message"]


async def test_only_marked_methods_are_callable(peer: Peer, target: Target) -> None:
    table = MethodTable.from_object(target)
    names = {spec.name for spec in table}
    assert names == {
        "add",
        "note",
        "shape",
        "wait_gate",
        "open_gate",
        "pause",
        "slow_read",
        "slow_change",
        "crash",
        "refuse",
        "custom.name",
    }
    for name in ("hidden", "_private", "__init__", "renamed", "calls", "gate"):
        assert_error(await peer.call(name, request_id=name), -32601, name)
    assert target.calls == []
    assert await peer.call("custom.name", request_id=1) == {"jsonrpc": "2.0", "id": 1, "result": "renamed"}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"a": 1}, {"b"}),
        ({}, {"a", "b"}),  # either missing one may be named
        ({"a": 1, "b": 2, "c": 3}, {"c"}),
        ({"a": "1", "b": 2}, {"a"}),
        ({"a": 1, "b": 2.5}, {"b"}),
        ({"a": 1, "b": True}, {"b"}),
        ({"a": 1, "b": None}, {"b"}),
    ],
)
async def test_bad_params_name_the_field(peer: Peer, target: Target, params: Any, field: set[str]) -> None:
    error = assert_error(await peer.call("add", params, request_id=8), -32602, 8)
    assert error["data"]["field"] in field
    assert target.calls == []


async def test_nested_param_errors_name_the_path(peer: Peer) -> None:
    error = assert_error(await peer.call("shape", {"count": 1, "names": ["a", 2]}, request_id=1), -32602, 1)
    assert error["data"]["field"] == "names[1]"
    answer = await peer.call("shape", {"count": 1, "names": ["a"], "ratio": 2}, request_id=2)
    assert answer["result"] == {"count": 1, "names": ["a"], "ratio": 2.0}


@pytest.mark.parametrize("params", [[1, 2], "a=1", 5])
async def test_params_must_be_an_object(peer: Peer, target: Target, params: Any) -> None:
    error = assert_error(await peer.call("add", params, request_id=2), -32602, 2)
    assert error["data"]["field"] == "params"
    assert target.calls == []


# -- batches ------------------------------------------------------------------------------


async def test_batch_answers_every_request_in_one_array(make_server: ServerFactory, target: Target) -> None:
    server = await make_server()
    peer = await Peer.connect(server.socket_path)
    batch = [
        request("add", {"a": 1, "b": 2}, request_id=1),
        request("note", {"text": "in batch"}),  # notification: no entry
        request("nope", request_id=2),
        request("add", {"a": "x", "b": 2}, request_id=3),
        {"jsonrpc": "1.0", "method": "add", "id": 4},
        5,
        request("pause", {"seconds": 0.01, "tag": "slow"}, request_id="s"),
        request("open_gate"),  # async notification
    ]
    await peer.send_json(batch)
    answer = await peer.recv()
    await peer.close()
    assert type(answer) is list
    by_id: dict[Any, Any] = {}
    for item in answer:
        assert item["jsonrpc"] == "2.0"
        assert ("result" in item) != ("error" in item)
        by_id.setdefault(item["id"], []).append(item)
    assert sorted(by_id, key=repr) == sorted([1, 2, 3, 4, None, "s"], key=repr)
    assert len(answer) == 6
    assert by_id[1][0]["result"] == 3
    assert by_id[2][0]["error"]["code"] == -32601
    assert by_id[3][0]["error"]["code"] == -32602
    assert by_id[3][0]["error"]["data"]["field"] == "a"
    assert by_id[4][0]["error"]["code"] == -32600
    assert by_id[None][0]["error"]["code"] == -32600
    assert by_id["s"][0]["result"] == "slow"
    assert ("note", "in batch") in target.calls
    assert target.gate.is_set()


async def test_empty_batch_is_invalid(peer: Peer) -> None:
    await peer.send(b"[]")
    error = assert_error(await peer.recv(), -32600, None)
    assert "empty" in error["message"]


async def test_batch_over_the_size_limit_is_refused(make_server: ServerFactory, target: Target) -> None:
    server = await make_server(config=RpcConfig(max_batch_size=3))
    peer = await Peer.connect(server.socket_path)
    try:
        await peer.send_json([request("note", {"text": str(n)}) for n in range(4)])
        assert_error(await peer.recv(), -32600, None)
        assert target.calls == []
    finally:
        await peer.close()


async def test_all_notification_batch_gets_no_answer(peer: Peer, target: Target) -> None:
    await peer.send_json(
        [request("note", {"text": "one"}), request("note", {"text": "two"}), request("open_gate")]
    )
    await peer.send_json(request("add", {"a": 0, "b": 0}, request_id="after"))
    assert await peer.recv() == {"jsonrpc": "2.0", "id": "after", "result": 0}
    assert ("note", "one") in target.calls
    assert ("note", "two") in target.calls


# -- concurrency on one connection ----------------------------------------------------------


async def test_requests_in_flight_are_answered_out_of_order(
    make_server: ServerFactory, target: Target
) -> None:
    server = await make_server()
    peer = await Peer.connect(server.socket_path)
    await peer.send_json(*(request("wait_gate", {"tag": f"t{n}"}, request_id=n) for n in range(10)))
    await eventually(lambda: target.blocked == 10)
    assert server.in_flight == 10
    await peer.send_json(request("open_gate", request_id="fast"))
    first = await peer.recv()
    assert first == {"jsonrpc": "2.0", "id": "fast", "result": "opened"}
    rest = [await peer.recv() for _ in range(10)]
    assert sorted(answer["id"] for answer in rest) == list(range(10))
    for answer in rest:
        assert answer["result"] == f"t{answer['id']}"
    await eventually(lambda: server.in_flight == 0)
    await peer.close()


async def test_slow_call_does_not_hold_up_a_fast_one(peer: Peer) -> None:
    await peer.send_json(
        request("pause", {"seconds": 0.2, "tag": "slow"}, request_id=1),
        request("add", {"a": 1, "b": 1}, request_id=2),
    )
    first, second = await peer.recv(), await peer.recv()
    assert (first["id"], first["result"]) == (2, 2)
    assert (second["id"], second["result"]) == (1, "slow")


async def test_backpressure_bounds_calls_in_flight(make_server: ServerFactory, target: Target) -> None:
    limit = 4
    server = await make_server(config=RpcConfig(max_in_flight_per_connection=limit))
    peer = await Peer.connect(server.socket_path)
    try:
        count = 300
        # One write: the server receives all of these requests in a single chunk.
        await peer.send_json(*(request("wait_gate", {"tag": str(n)}, request_id=n) for n in range(count)))
        await eventually(lambda: target.blocked >= limit)
        for _ in range(20):  # let the loop run: nothing more may start
            await asyncio.sleep(0)
        assert server.in_flight <= limit + 1, server.in_flight
        assert target.blocked <= limit + 1
        target.gate.set()
        answers = [await peer.recv() for _ in range(count)]
        assert sorted(answer["id"] for answer in answers) == list(range(count))
        assert server.in_flight == 0
    finally:
        await peer.close()


# -- framing and connection life -------------------------------------------------------------


async def test_line_over_the_limit_is_refused_and_the_connection_closed(
    make_server: ServerFactory, target: Target
) -> None:
    server = await make_server(config=RpcConfig(max_message_bytes=1024))
    peer = await Peer.connect(server.socket_path)
    try:
        await peer.call("add", {"a": 1, "b": 1})  # a line under the limit is fine
        big = orjson.dumps(request("note", {"text": "x" * 2000}, request_id=1))
        await peer.send(big)
        error = assert_error(await peer.recv(), -32600, None)
        assert error["message"] == "message too large"
        assert await peer.read_to_eof() == b""
    finally:
        await peer.close()
    await eventually(lambda: server.connection_count == 0)
    other = await Peer.connect(server.socket_path)
    try:
        assert (await other.call("add", {"a": 2, "b": 3}))["result"] == 5
    finally:
        await other.close()


async def test_unterminated_data_over_the_limit_is_refused(
    make_server: ServerFactory, target: Target
) -> None:
    server = await make_server(config=RpcConfig(max_message_bytes=1024))
    peer = await Peer.connect(server.socket_path)
    try:
        peer.writer.write(b"[" + b"1," * 1000)  # no newline, over the limit
        await peer.writer.drain()
        error = assert_error(await peer.recv(), -32600, None)
        assert error["message"] == "message too large"
        assert await peer.read_to_eof() == b""
    finally:
        await peer.close()
    await eventually(lambda: server.connection_count == 0)


async def test_half_written_line_then_disconnect(make_server: ServerFactory, target: Target) -> None:
    server = await make_server()
    peer = await Peer.connect(server.socket_path)
    other = await Peer.connect(server.socket_path)
    try:
        peer.writer.write(b'{"jsonrpc":"2.0","method":"add","params":{"a":1,')
        await peer.writer.drain()
        await eventually(lambda: server.connection_count == 2)
        await peer.close()
        assert (await other.call("add", {"a": 1, "b": 2}))["result"] == 3
    finally:
        await other.close()
    await eventually(lambda: server.connection_count == 0)


async def test_half_close_still_gets_every_answer(make_server: ServerFactory, target: Target) -> None:
    server = await make_server()
    peer = await Peer.connect(server.socket_path)
    try:
        await peer.send_json(
            request("pause", {"seconds": 0.05, "tag": "slow"}, request_id=1),
            request("add", {"a": 1, "b": 1}, request_id=2),
            [
                request("pause", {"seconds": 0.01, "tag": "b"}, request_id=3),
                request("add", {"a": 0, "b": 3}, request_id=4),
            ],
        )
        # A last line without its newline is not a request: it is dropped.
        peer.writer.write(b'{"jsonrpc":"2.0","method":"add","params":{"a":1,"b":1},"id":5')
        peer.writer.write_eof()
        data = await peer.read_to_eof()
    finally:
        await peer.close()
    answers = [orjson.loads(line) for line in data.splitlines()]
    assert len(answers) == 3
    singles = {answer["id"]: answer["result"] for answer in answers if type(answer) is dict}
    assert singles == {1: "slow", 2: 2}
    (batch,) = [answer for answer in answers if type(answer) is list]
    assert {item["id"]: item["result"] for item in batch} == {3: "b", 4: 3}
    await eventually(lambda: server.connection_count == 0)


async def test_half_close_with_nothing_in_flight_closes(server: RpcServer) -> None:
    peer = await Peer.connect(server.socket_path)
    try:
        await peer.send_json(request("add", {"a": 1, "b": 1}, request_id=1))
        peer.writer.write_eof()
        data = await peer.read_to_eof()
    finally:
        await peer.close()
    assert orjson.loads(data) == {"jsonrpc": "2.0", "id": 1, "result": 2}
    await eventually(lambda: server.connection_count == 0)


# -- errors raised by methods ---------------------------------------------------------------


async def test_unexpected_exception_is_an_internal_error_without_traceback(
    peer: Peer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="services.rpc")
    await peer.send_json(request("crash", request_id=11))
    raw = await peer.raw_line()
    assert b"Traceback" not in raw
    assert b"secret detail" not in raw
    assert b"RuntimeError" not in raw
    assert b"test_rpc_server" not in raw
    error = assert_error(orjson.loads(raw), -32603, 11)
    assert error["message"] == "internal error"
    trace = error["data"]["trace"]
    assert type(trace) is str
    assert trace
    records = [record for record in caplog.records if getattr(record, "trace", None) == trace]
    assert len(records) == 1
    record = records[0]
    assert record.exc_info is not None
    assert record.exc_info[0] is RuntimeError
    assert "secret detail 7f3a" in caplog.text
    assert "Traceback" in caplog.text


async def test_internal_error_keeps_the_callers_trace_id(
    peer: Peer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="services.rpc")
    await peer.send_json(request("crash", request_id=1, trace="caller-trace-1"))
    error = assert_error(await peer.recv(), -32603, 1)
    assert error["data"] == {"trace": "caller-trace-1"}
    assert any(getattr(record, "trace", None) == "caller-trace-1" for record in caplog.records)


async def test_domain_error_maps_to_its_code_with_data(peer: Peer) -> None:
    error = assert_error(await peer.call("refuse", {"reason": "max_position"}, request_id="r"), -32002, "r")
    assert error["data"]["reason"] == "max_position"
    assert error["message"] == "refused: max_position"


# -- security ---------------------------------------------------------------------------------


async def test_socket_file_is_private(server: RpcServer, home: TradingHome) -> None:
    mode = os.stat(server.socket_path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    assert stat.S_IMODE(os.stat(home.run).st_mode) == 0o700


async def test_peer_of_another_user_is_refused_before_any_request(
    make_server: ServerFactory, target: Target
) -> None:
    server = await make_server(peer_uid=lambda sock: os.getuid() + 1)
    peer = await Peer.connect(server.socket_path)
    try:
        # Nothing sent yet: the refusal comes unprompted, then the connection closes.
        error = assert_error(await peer.recv(), -32010, None)
        assert "unauthorized" in error["message"]
        assert await peer.read_to_eof() == b""
        assert server.connection_count == 0
        with contextlib.suppress(ConnectionError):
            await peer.send_json(request("note", {"text": "sneaky"}, request_id=1))
    finally:
        await peer.close()
    assert target.calls == []


async def test_peer_uid_unknown_is_refused(make_server: ServerFactory) -> None:
    server = await make_server(peer_uid=lambda sock: None)
    peer = await Peer.connect(server.socket_path)
    try:
        assert_error(await peer.recv(), -32010, None)
    finally:
        await peer.close()


async def test_real_peer_credentials_accept_the_same_user(peer: Peer) -> None:
    assert (await peer.call("add", {"a": 1, "b": 1}))["result"] == 2


# -- scale and memory --------------------------------------------------------------------------


async def _connect_many(path: Path, count: int, chunk: int = 250) -> list[Peer]:
    peers: list[Peer] = []
    for start in range(0, count, chunk):
        peers += await asyncio.gather(*(Peer.connect(path) for _ in range(start, min(count, start + chunk))))
    return peers


async def test_a_thousand_concurrent_connections(make_server: ServerFactory, target: Target) -> None:
    server = await make_server(config=RpcConfig(max_connections=1000))
    raise_open_file_limit()
    count = 1000
    peers = await _connect_many(server.socket_path, count)
    try:
        await eventually(lambda: server.connection_count == count)

        async def one(n: int, peer: Peer) -> None:
            answer = await peer.call("add", {"a": n, "b": 1}, request_id=f"c{n}")
            assert answer == {"jsonrpc": "2.0", "id": f"c{n}", "result": n + 1}

        await asyncio.gather(*(one(n, peer) for n, peer in enumerate(peers)))
        assert server.connection_count == count
    finally:
        await asyncio.gather(*(peer.close() for peer in peers))
    await eventually(lambda: server.connection_count == 0)


async def test_garbage_connections_do_not_leak(make_server: ServerFactory) -> None:
    raise_open_file_limit()
    server = await make_server(config=RpcConfig(max_message_bytes=64 * 1024))
    rng = random.Random(1234)
    garbage = [
        rng.randbytes(rng.randrange(1, 3000)).replace(b"\n", b"") + rng.choice([b"", b"\n", b"\n{"])
        for _ in range(50)
    ] + [b'{"jsonrpc":"2.0","method":"pause","params":{"seconds":0.001,"tag":"x"},"id":1}\n', b"x" * 70_000]

    async def one(n: int) -> None:
        peer = await Peer.connect(server.socket_path)
        try:
            peer.writer.write(garbage[n % len(garbage)])
            await peer.writer.drain()
        except ConnectionError:
            pass
        finally:
            await peer.close()

    async def round_of(count: int) -> None:
        for start in range(0, count, 250):
            await asyncio.gather(*(one(n) for n in range(start, start + 250)))
        await eventually(lambda: server.connection_count == 0)
        await eventually(lambda: server.in_flight == 0)

    process = psutil.Process()
    await round_of(1000)  # warm up allocator pools and caches
    before = process.memory_info().rss
    for _ in range(4):
        await round_of(1000)
    growth = process.memory_info().rss - before
    assert server.connection_count == 0
    assert growth < 50 * 1024 * 1024, f"RSS grew by {growth / 1e6:.1f} MB"
    peer = await Peer.connect(server.socket_path)
    try:
        assert (await peer.call("add", {"a": 1, "b": 1}))["result"] == 2
    finally:
        await peer.close()


# -- the same scenarios on uvloop, the loop the services run on ------------------------------

UVLOOP_SCENARIOS = [
    test_batch_answers_every_request_in_one_array,
    test_requests_in_flight_are_answered_out_of_order,
    test_backpressure_bounds_calls_in_flight,
    test_line_over_the_limit_is_refused_and_the_connection_closed,
    test_unterminated_data_over_the_limit_is_refused,
    test_half_written_line_then_disconnect,
    test_half_close_still_gets_every_answer,
    test_peer_of_another_user_is_refused_before_any_request,
    test_a_thousand_concurrent_connections,
]


@pytest.mark.parametrize("scenario", UVLOOP_SCENARIOS, ids=lambda scenario: scenario.__name__[5:])
def test_on_uvloop(home: TradingHome, scenario: Callable[[ServerFactory, Target], Awaitable[None]]) -> None:
    async def main() -> None:
        target = Target()
        async with serving(home, target) as make:
            await scenario(make, target)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


# -- bounds: no client can grow our memory or starve the others -----------------------------------


async def test_a_batch_counts_each_call_and_one_larger_than_the_room_is_refused(
    make_server: ServerFactory, target: Target
) -> None:
    server = await make_server(config=RpcConfig(max_in_flight_per_connection=4))
    peer = await Peer.connect(server.socket_path)
    try:
        await peer.send_json([request("wait_gate", {"tag": str(n)}, request_id=n) for n in range(3)])
        await eventually(lambda: server.in_flight == 3)  # three calls, not one batch
        await peer.send_json([request("wait_gate", {"tag": "x"}, request_id=n) for n in (10, 11)])
        refused = await peer.recv()
        assert refused["error"]["code"] == -32005
        assert "2 more do not fit in the room for 1" in refused["error"]["message"]
        assert target.blocked == 3  # nothing of the refused batch ran
        assert (await peer.call("add", {"a": 1, "b": 2}, request_id=99))["result"] == 3  # sync: answered
        target.gate.set()
        answered = await peer.recv()
        assert sorted(a["id"] for a in answered) == [0, 1, 2]
        await eventually(lambda: server.in_flight == 0)
    finally:
        await peer.close()


async def test_past_the_servers_total_a_call_is_refused_and_health_like_calls_still_answer(
    make_server: ServerFactory, target: Target
) -> None:
    server = await make_server(config=RpcConfig(max_in_flight_per_connection=2, max_in_flight_total=2))
    first, second = await Peer.connect(server.socket_path), await Peer.connect(server.socket_path)
    try:
        await first.send_json(request("wait_gate", {"tag": "a"}, request_id=1))
        await second.send_json(request("wait_gate", {"tag": "b"}, request_id=1))
        await eventually(lambda: server.in_flight == 2)
        busy = await second.call("wait_gate", {"tag": "c"}, request_id=2)
        assert busy["error"]["code"] == -32005
        assert "rpc.max_in_flight_total 2" in busy["error"]["message"]
        assert (await second.call("add", {"a": 2, "b": 2}, request_id=3))["result"] == 4
        target.gate.set()
        assert (await first.recv())["result"] == "a"
    finally:
        await first.close()
        await second.close()


async def test_one_connection_over_the_limit_is_told_why_and_closed(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await make_server(config=RpcConfig(max_connections=8))
    peers = [await Peer.connect(server.socket_path) for _ in range(8)]
    try:
        await eventually(lambda: server.connection_count == 8)
        extra = await Peer.connect(server.socket_path)
        told = orjson.loads(await extra.read_to_eof())
        await extra.close()
        assert told["error"]["code"] == -32005
        assert "rpc.max_connections" in told["error"]["message"]
        assert "refused 1 connections: 8 open" in caplog.text
        await peers.pop().close()
        await eventually(lambda: server.connection_count == 7)
        again = await Peer.connect(server.socket_path)
        assert (await again.call("add", {"a": 1, "b": 1}))["result"] == 2
        peers.append(again)
    finally:
        for peer in peers:
            await peer.close()


async def test_silent_connections_and_partial_lines_are_closed_and_talking_ones_kept(
    make_server: ServerFactory,
) -> None:
    server = await make_server(config=RpcConfig(silent_timeout_s=0.2))
    silent = await Peer.connect(server.socket_path)
    partial = await Peer.connect(server.socket_path)
    talking = await Peer.connect(server.socket_path)
    try:
        partial.writer.write(b'{"jsonrpc": "2.0", "method": "add", "par')
        await partial.writer.drain()
        assert (await talking.call("add", {"a": 1, "b": 1}))["result"] == 2
        assert await silent.read_to_eof() == b""  # closed by the server
        assert await partial.read_to_eof() == b""
        await asyncio.sleep(0.5)  # well past the limit: a connection that spoke is kept
        assert (await talking.call("add", {"a": 2, "b": 2}))["result"] == 4
        assert server.connection_count == 1
    finally:
        for peer in (silent, partial, talking):
            await peer.close()


async def test_a_client_that_goes_away_has_its_reads_cancelled_and_its_changes_finished(
    make_server: ServerFactory, target: Target
) -> None:
    server = await make_server()
    peer = await Peer.connect(server.socket_path)
    await peer.send_json(
        request("slow_read", {"tag": "r"}, request_id=1), request("slow_change", {"tag": "c"}, request_id=2)
    )
    await eventually(lambda: server.in_flight == 2)
    await peer.close()
    await eventually(lambda: server.in_flight == 1)  # the read is cancelled at once
    assert ("cancelled", "r") in target.calls
    target.gate.set()
    await eventually(lambda: server.in_flight == 0)
    assert ("changed", "c") in target.calls  # the change ran to the end


async def test_a_long_trace_is_refused_and_an_error_never_echoes_more_than_500_characters(
    peer: Peer,
) -> None:
    await peer.send_json(request("add", {"a": 1, "b": 1}, request_id=1, trace="t" * 129))
    refused = await peer.recv()
    assert refused["error"]["code"] == -32600
    assert "at most 128 characters" in refused["error"]["message"]
    echoed = await peer.call("refuse", {"reason": "x" * 10_000}, request_id=2)
    assert echoed["error"]["code"] == -32002
    assert len(echoed["error"]["message"]) <= 500
