"""RpcClient against an in-process RpcServer, and against raw servers that misbehave on purpose."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.base.config import TradingHome
from services.base.errors import (
    CallTimeout,
    DependencyUnavailable,
    InternalError,
    InvalidParams,
    MethodNotFound,
    NotFound,
    Rejected,
    Unauthorized,
)
from services.base.logs import trace_var
from services.base.rpc import MethodTable, RpcClient, RpcServer, rpc_method
from tests.conftest import eventually


class Target:
    def __init__(self) -> None:
        self.notes: list[str] = []
        self.gate = asyncio.Event()
        self.blocked = 0

    @rpc_method(idempotent=True)
    def add(self, a: int, b: int) -> int:
        return a + b

    @rpc_method
    def note(self, text: str) -> int:
        self.notes.append(text)
        return len(self.notes)

    @rpc_method
    def current_trace(self) -> str | None:
        return trace_var.get()

    @rpc_method
    async def wait_gate(self, tag: str) -> str:
        self.blocked += 1
        try:
            await self.gate.wait()
        finally:
            self.blocked -= 1
        return tag

    @rpc_method
    async def open_gate(self) -> bool:
        self.gate.set()
        return True

    @rpc_method
    def refuse(self, reason: str) -> None:
        raise Rejected(f"refused: {reason}", reason=reason)

    @rpc_method
    def lookup(self, key: str) -> None:
        raise NotFound(f"no {key}", key=key)

    @rpc_method
    def crash(self) -> None:
        raise RuntimeError("a bug")


@pytest.fixture
def target() -> Target:
    return Target()


@pytest.fixture
def socket_path(home: TradingHome) -> Path:
    return home.socket_path("c")


@pytest.fixture
async def server(target: Target, socket_path: Path) -> AsyncIterator[RpcServer]:
    server = RpcServer(MethodTable.from_object(target), socket_path)
    await server.start()
    yield server
    target.gate.set()
    await server.close(1.0)


@pytest.fixture
async def client(server: RpcServer) -> AsyncIterator[RpcClient]:
    async with RpcClient(server.socket_path, timeout=10.0) as client:
        yield client


# -- results and errors ---------------------------------------------------------------------


async def test_call_returns_the_result(client: RpcClient, target: Target) -> None:
    assert await client.call("add", {"a": 20, "b": 22}) == 42
    assert await client.call("note", {"text": "x"}) == 1
    assert await client.call("current_trace") is None
    assert await client.call("current_trace", trace="trace-abc") == "trace-abc"
    assert target.notes == ["x"]


async def test_notify_runs_the_method_without_an_answer(client: RpcClient, target: Target) -> None:
    await client.notify("note", {"text": "fire and forget"})
    # Lines are handled in order on the one connection, so the notification ran first.
    assert await client.call("note", {"text": "second"}) == 2
    assert target.notes == ["fire and forget", "second"]


async def test_invalid_params_raise_with_the_field(client: RpcClient) -> None:
    with pytest.raises(InvalidParams) as caught:
        await client.call("add", {"a": 1, "b": "two"})
    assert caught.value.field == "b"
    assert caught.value.data["field"] == "b"
    with pytest.raises(InvalidParams) as caught:
        await client.call("add", {"a": 1, "b": 2, "c": 3})
    assert caught.value.field == "c"


async def test_rejected_raises_with_the_reason(client: RpcClient) -> None:
    with pytest.raises(Rejected) as caught:
        await client.call("refuse", {"reason": "max_daily_loss"})
    assert caught.value.reason == "max_daily_loss"
    assert caught.value.message == "refused: max_daily_loss"


async def test_unknown_method_raises_method_not_found(client: RpcClient) -> None:
    with pytest.raises(MethodNotFound, match=r"no\.such"):
        await client.call("no.such")


async def test_other_codes_map_to_their_classes(client: RpcClient) -> None:
    with pytest.raises(NotFound) as caught:
        await client.call("lookup", {"key": "AAA"})
    assert caught.value.data == {"key": "AAA"}
    with pytest.raises(InternalError) as internal:
        await client.call("crash")
    assert internal.value.message == "internal error"
    assert internal.value.data["trace"]
    # Errors leave the connection usable.
    assert await client.call("add", {"a": 1, "b": 1}) == 2


async def test_unauthorized_refusal_is_raised(target: Target, socket_path: Path) -> None:
    server = RpcServer(MethodTable.from_object(target), socket_path, peer_uid=lambda sock: os.getuid() + 1)
    await server.start()
    try:
        async with RpcClient(socket_path, timeout=5.0) as client:
            with pytest.raises(Unauthorized):
                await client.call("note", {"text": "x"})
    finally:
        await server.close(0)
    assert target.notes == []


# -- one multiplexed connection -------------------------------------------------------------


async def test_concurrent_calls_share_one_connection(
    client: RpcClient, server: RpcServer, target: Target
) -> None:
    calls = [asyncio.create_task(client.call("wait_gate", {"tag": f"t{n}"})) for n in range(50)]
    await eventually(lambda: target.blocked == 50)
    assert server.connection_count == 1
    assert server.in_flight == 50
    assert await client.call("open_gate") is True
    assert await asyncio.gather(*calls) == [f"t{n}" for n in range(50)]
    sums = await asyncio.gather(*(client.call("add", {"a": n, "b": n}) for n in range(200)))
    assert sums == [2 * n for n in range(200)]
    assert server.connection_count == 1
    assert client.reconnects == 0


async def test_timeout_raises_and_the_client_stays_usable(
    client: RpcClient, server: RpcServer, target: Target
) -> None:
    assert await client.call("add", {"a": 1, "b": 1}) == 2
    with pytest.raises(CallTimeout):
        await client.call("wait_gate", {"tag": "late"}, timeout=0.05)
    assert await client.call("add", {"a": 2, "b": 2}) == 4
    # The late answer to the timed-out call arrives now; it must not be taken for another's.
    assert await client.call("open_gate") is True
    await eventually(lambda: server.in_flight == 0)
    assert await client.call("add", {"a": 3, "b": 3}) == 6
    assert server.connection_count == 1
    assert client.reconnects == 0


async def test_the_on_call_hook_sees_each_call_start_and_end(server: RpcServer, target: Target) -> None:
    changes: list[int] = []
    async with RpcClient(server.socket_path, timeout=10.0, on_call=changes.append) as client:
        waiting = [asyncio.create_task(client.call("wait_gate", {"tag": f"t{n}"})) for n in range(3)]
        await eventually(lambda: target.blocked == 3)
        assert sum(changes) == 3  # three calls waiting for their answers
        with pytest.raises(Rejected):
            await client.call("refuse", {"reason": "no"})
        assert sum(changes) == 3  # a call that failed has ended too
        await client.notify("note", {"text": "not a call"})
        assert await client.call("open_gate") is True
        await asyncio.gather(*waiting)
    assert sum(changes) == 0
    assert changes.count(1) == changes.count(-1) == 5


# -- connecting and reconnecting ------------------------------------------------------------


async def test_missing_socket_raises_after_its_attempts(
    home: TradingHome, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="services.rpc.client")
    path = home.socket_path("absent")
    async with RpcClient(path, timeout=5.0, connect_attempts=3, first_backoff=0.001) as client:
        with pytest.raises(DependencyUnavailable) as caught:
            await client.call("add", {"a": 1, "b": 1})
    assert caught.value.data["socket"] == str(path)
    retries = [record for record in caplog.records if "attempts left" in record.getMessage()]
    assert len(retries) == 2


async def test_connect_retries_until_the_server_appears(
    target: Target, socket_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="services.rpc.client")
    async with RpcClient(
        socket_path, timeout=10.0, connect_attempts=100, first_backoff=0.01, max_backoff=0.05
    ) as client:
        call = asyncio.create_task(client.call("add", {"a": 1, "b": 2}))
        await eventually(lambda: any("attempts left" in record.getMessage() for record in caplog.records))
        assert not call.done()
        server = RpcServer(MethodTable.from_object(target), socket_path)
        await server.start()
        try:
            assert await call == 3
        finally:
            await server.close(0)


async def test_reconnects_after_the_server_restarts(target: Target, socket_path: Path) -> None:
    first = RpcServer(MethodTable.from_object(target), socket_path)
    await first.start()
    async with RpcClient(socket_path, timeout=5.0) as client:
        assert await client.call("note", {"text": "one"}) == 1
        await first.close(0)
        await eventually(lambda: not client.connected)
        with pytest.raises(DependencyUnavailable):
            await client.call("note", {"text": "nobody listening"}, timeout=0.5)
        second = RpcServer(MethodTable.from_object(target), socket_path)
        await second.start()
        try:
            # Not idempotent, so this only works because the client opened a fresh connection.
            assert await client.call("note", {"text": "two"}) == 2
            assert client.connected
            assert client.reconnects == 1
            assert second.connection_count == 1
        finally:
            await second.close(0)
    assert target.notes == ["one", "two"]


# -- resending after a dropped connection -----------------------------------------------------


class FlakyServer:
    """A raw server whose first connection reads one request line and hangs up without answering."""

    def __init__(self, path: Path, discover: list[dict[str, Any]] | None = None) -> None:
        self.path = path
        self.discover = discover if discover is not None else []
        self.received: list[str] = []
        self.connections = 0
        self._server: asyncio.AbstractServer | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> FlakyServer:
        self._server = await asyncio.start_unix_server(self._handle, path=str(self.path))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await self._server.wait_closed()

    def count(self, method: str) -> int:
        return self.received.count(method)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        first = self.connections == 1
        try:
            while line := await reader.readline():
                request = orjson.loads(line)
                self.received.append(request["method"])
                if first:
                    break  # drop the connection with the call unanswered
                if request["method"] == "rpc.discover":
                    result: Any = {"service": "flaky", "methods": self.discover}
                else:
                    result = f"ok:{request['method']}"
                writer.write(orjson.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result}) + b"\n")
                await writer.drain()
        except (asyncio.CancelledError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._handlers.discard(task)


async def test_idempotent_call_is_resent_after_a_dropped_connection(socket_path: Path) -> None:
    async with FlakyServer(socket_path) as flaky, RpcClient(socket_path, timeout=5.0) as client:
        assert await client.call("m", {"x": 1}, idempotent=True) == "ok:m"
    assert flaky.count("m") == 2
    assert flaky.count("rpc.discover") == 0
    assert flaky.connections == 2


async def test_non_idempotent_call_is_not_resent(socket_path: Path) -> None:
    async with FlakyServer(socket_path) as flaky, RpcClient(socket_path, timeout=5.0) as client:
        with pytest.raises(DependencyUnavailable, match="not idempotent"):
            await client.call("m", {"x": 1}, idempotent=False)
        assert flaky.count("m") == 1
        # The client reconnects for the next call.
        assert await client.call("m", {"x": 2}, idempotent=False) == "ok:m"
    assert flaky.count("m") == 2
    assert flaky.count("rpc.discover") == 0


async def test_unspecified_idempotence_asks_the_server(socket_path: Path) -> None:
    methods = [{"name": "m", "idempotent": True}, {"name": "other", "idempotent": False}]
    async with (
        FlakyServer(socket_path, discover=methods) as flaky,
        RpcClient(socket_path, timeout=5.0) as client,
    ):
        assert await client.call("m", {"x": 1}) == "ok:m"
    assert flaky.count("m") == 2
    assert flaky.count("rpc.discover") == 1


async def test_server_says_not_idempotent_so_no_resend(socket_path: Path) -> None:
    methods = [{"name": "m", "idempotent": False}]
    async with (
        FlakyServer(socket_path, discover=methods) as flaky,
        RpcClient(socket_path, timeout=5.0) as client,
    ):
        with pytest.raises(DependencyUnavailable):
            await client.call("m", {"x": 1})
    assert flaky.count("m") == 1
    assert flaky.count("rpc.discover") == 1


async def test_method_unknown_to_discover_is_not_resent(socket_path: Path) -> None:
    methods = [{"name": "other", "idempotent": True}]
    async with (
        FlakyServer(socket_path, discover=methods) as flaky,
        RpcClient(socket_path, timeout=5.0) as client,
    ):
        with pytest.raises(DependencyUnavailable):
            await client.call("m")
    assert flaky.count("m") == 1
    assert flaky.count("rpc.discover") == 1


class LosesItsFirstConnection(RpcClient):
    """Its first connection closes the moment it is made, before the call can use it."""

    lost_one = False

    async def _connect(self, deadline: float, method: str) -> Any:
        protocol = await super()._connect(deadline, method)
        if not self.lost_one:
            self.lost_one = True
            assert protocol.transport is not None
            protocol.transport.close()
            await protocol.closed  # connection_lost has run: nothing pending was there to fail
        return protocol


async def test_a_connection_lost_as_it_is_made_does_not_leave_the_call_waiting(
    target: Target, socket_path: Path
) -> None:
    server = RpcServer(MethodTable.from_object(target), socket_path)
    await server.start()
    try:
        async with LosesItsFirstConnection(socket_path, timeout=2.0) as client:
            # Not sent on the dead connection (to wait there for the timeout): on a new one.
            assert await client.call("add", {"a": 1, "b": 2}) == 3
            assert client.lost_one
    finally:
        await server.close(0)
