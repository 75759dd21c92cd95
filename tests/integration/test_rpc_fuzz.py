"""Property test of the JSON-RPC wire protocol against a live service process.

Every input is one line sent on its own connection, followed by a half-close; the answer is read
to EOF and checked for JSON-RPC 2.0 shape and against an oracle that is independent of the server:
the standard library's JSON parser and the rules of DESIGN.md.
"""

from __future__ import annotations

import json
import math
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ServiceProcess

MIN_INPUTS = 10_000
MAX_LINE = 1024 * 1024
REQUEST_KEYS = frozenset({"jsonrpc", "method", "params", "id", "trace"})
# Methods of tests/sample_service.py that are safe to call with anything: no long sleeps, no
# shutdown, nothing that grows state without bound.
REAL_METHODS = ["echo", "typed", "reject", "missing", "fail", "health", "metrics", "rpc.discover"]
AVOID = {"shutdown", "sleep", "emit", "emit_durable"}

sent: Counter[str] = Counter()


# -- strategies ---------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
valid_ids = st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.text(max_size=12)
ids = valid_ids | json_values
string_methods = (
    st.sampled_from(REAL_METHODS)
    | st.sampled_from(REAL_METHODS)
    | st.sampled_from(REAL_METHODS)
    | st.text(max_size=30).filter(lambda name: name not in AVOID)
)
method_names = string_methods | json_values.filter(lambda value: type(value) is not str)
plausible_params = st.one_of(
    st.fixed_dictionaries({"message": st.text(max_size=40)}),
    st.fixed_dictionaries({"reason": st.text(max_size=40)}),
    st.fixed_dictionaries(
        {
            "count": st.integers(min_value=-(2**63), max_value=2**63 - 1),
            "ratio": st.floats(allow_nan=False, allow_infinity=False) | st.integers(-1000, 1000),
            "symbols": st.lists(st.text(max_size=6), max_size=4),
        },
        optional={
            "mode": st.sampled_from(["fast", "slow", "other"]),
            "when": st.sampled_from(["2024-05-01T10:00:00+10:00", "2024-05-01T10:00:00", "yesterday"])
            | st.none(),
            "order": st.none()
            | st.fixed_dictionaries(
                {"symbol": st.text(max_size=5), "quantity": st.integers(-10, 10)},
                optional={"limit": st.none() | st.floats(allow_nan=False, allow_infinity=False)},
            ),
        },
    ),
    st.just({}),
)
well_formed_requests = st.fixed_dictionaries(
    {"jsonrpc": st.just("2.0"), "method": string_methods},
    optional={
        "params": plausible_params | plausible_params | json_values,
        "id": valid_ids,
        "trace": st.text(max_size=16),
    },
)
wild_requests = st.builds(
    lambda base, extra: base | extra,
    st.fixed_dictionaries(
        {},
        optional={
            "jsonrpc": st.just("2.0") | scalars,
            "method": method_names,
            "params": plausible_params | json_values,
            "id": ids,
            "trace": st.text(max_size=16) | scalars,
        },
    ),
    st.just({}) | st.dictionaries(st.text(max_size=8), json_values, max_size=2),
)
typed_params = st.fixed_dictionaries(
    {
        "count": st.integers(min_value=-(2**63), max_value=2**63 - 1),
        "ratio": st.floats(allow_nan=False, allow_infinity=False),
        "symbols": st.lists(st.text(max_size=6), max_size=4),
    },
    optional={"mode": st.sampled_from(["fast", "slow"]), "when": st.just("2024-05-01T10:00:00+10:00")},
)
matched_calls = st.one_of(
    st.tuples(st.just("echo"), st.fixed_dictionaries({"message": st.text(max_size=40)})),
    st.tuples(st.just("reject"), st.fixed_dictionaries({"reason": st.text(max_size=40)})),
    st.tuples(st.just("typed"), typed_params),
    st.tuples(st.sampled_from(["health", "metrics", "rpc.discover", "missing", "fail"]), st.just({})),
)
matched_requests = st.builds(
    lambda call, extra: {"jsonrpc": "2.0", "method": call[0], "params": call[1]} | extra,
    matched_calls,
    st.fixed_dictionaries({}, optional={"id": valid_ids, "trace": st.text(max_size=16)}),
)
requests = well_formed_requests | matched_requests | wild_requests
batches = st.lists(requests | requests | requests | json_values, max_size=6)


def _without_newlines(data: bytes) -> bytes:
    return data.replace(b"\n", b"")


def _mutate(args: tuple[bytes, int, bytes]) -> bytes:
    line, position, insert = args
    position %= len(line) + 1
    return _without_newlines(line[:position] + insert + line[position + 1 :])


byte_lines = st.one_of(
    st.binary(max_size=300).map(_without_newlines),
    st.text(max_size=100).map(lambda text: _without_newlines(text.encode())),
    st.text(alphabet=" \t\r\x0b\x0c", max_size=6).map(str.encode),
    st.tuples(requests.map(orjson.dumps), st.integers(min_value=0), st.binary(max_size=3)).map(_mutate),
    st.tuples(requests.map(orjson.dumps), st.integers(min_value=0)).map(
        lambda a: a[0][: a[1] % (len(a[0]) + 1)]
    ),
)
inputs = st.one_of(
    st.tuples(st.just("bytes"), byte_lines),
    st.tuples(st.just("json"), json_values.map(orjson.dumps)),
    st.tuples(st.just("request"), requests.map(orjson.dumps)),
    st.tuples(st.just("request"), requests.map(orjson.dumps)),
    st.tuples(st.just("batch"), batches.map(orjson.dumps)),
)


# -- the oracle -----------------------------------------------------------------------------------

_INVALID = object()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _parse_int(text: str) -> int | float:
    value = int(text)
    # JSON leaves integer range to implementations; the server's parser holds 64 bits.
    return value if -(2**63) <= value < 2**64 else float(value)


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any("\ud800" <= char <= "\udfff" for char in value)
    if isinstance(value, list):
        return any(_has_surrogate(item) for item in value)
    if isinstance(value, dict):
        return any(_has_surrogate(key) or _has_surrogate(item) for key, item in value.items())
    return False


def reference_parse(line: bytes) -> Any:
    """The JSON value of a line by the standard library, or _INVALID."""
    try:
        text = line.decode("utf-8")
        value = json.loads(
            text, parse_constant=_reject_constant, parse_float=_parse_float, parse_int=_parse_int
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        return _INVALID
    if _has_surrogate(value):  # a lone surrogate escape is not a Unicode string
        return _INVALID
    return value


def _valid_id(value: Any) -> bool:
    return value is None or type(value) is str or type(value) is int


def _key(request_id: Any) -> tuple[str, Any]:
    return (type(request_id).__name__, request_id)


class Expect:
    """What one request object must get: nothing, or one answer with this id (and maybe this code)."""

    def __init__(
        self, answered: bool, request_id: Any = None, code: int | None = None, not_codes: tuple[int, ...] = ()
    ):
        self.answered = answered
        self.request_id = request_id
        self.code = code
        self.not_codes = not_codes


def expect_item(message: Any, known_methods: set[str]) -> Expect:
    if type(message) is not dict:
        return Expect(True, None, -32600)
    trace = message.get("trace")
    well_formed = (
        message.get("jsonrpc") == "2.0"
        and type(message.get("method")) is str
        and _valid_id(message.get("id"))
        and (trace is None or type(trace) is str)
        and REQUEST_KEYS.issuperset(message)
    )
    if not well_formed:
        request_id = message.get("id")
        return Expect(True, request_id if _valid_id(request_id) else None, -32600)
    if "id" not in message:
        return Expect(False)
    if message["method"] not in known_methods:
        return Expect(True, message["id"], -32601)
    return Expect(True, message["id"], None, (-32700, -32600, -32601))


def check_response_object(item: Any) -> None:
    assert type(item) is dict, item
    assert item.get("jsonrpc") == "2.0", item
    assert "id" in item, item
    assert _valid_id(item["id"]), item
    assert ("result" in item) != ("error" in item), item
    assert set(item) in ({"jsonrpc", "id", "result"}, {"jsonrpc", "id", "error"}), item
    if "error" in item:
        error = item["error"]
        assert type(error) is dict, item
        assert type(error.get("code")) is int, item
        assert type(error.get("message")) is str, item
        assert set(error) <= {"code", "message", "data"}, item


def check_against(expect: Expect, item: dict[str, Any]) -> None:
    assert _key(item["id"]) == _key(expect.request_id), (item, expect.request_id)
    code = item["error"]["code"] if "error" in item else None
    if expect.code is not None:
        assert code == expect.code, item
    assert code not in expect.not_codes, item


def check_answer(line: bytes, answer_lines: list[bytes], known_methods: set[str]) -> None:
    assert len(answer_lines) <= 1, answer_lines
    answers = [orjson.loads(raw) for raw in answer_lines]
    for answer in answers:
        if type(answer) is list:
            assert answer, "an empty array is never an answer"
            for item in answer:
                check_response_object(item)
        else:
            check_response_object(answer)

    if not line.strip():
        assert answers == [], "a blank line gets no answer"
        return
    value = reference_parse(line)
    if value is _INVALID:
        assert len(answers) == 1, "invalid JSON gets exactly one answer"
        assert type(answers[0]) is dict
        check_against(Expect(True, None, -32700), answers[0])
        return
    if type(value) is list:
        if not value:
            assert len(answers) == 1
            assert type(answers[0]) is dict
            check_against(Expect(True, None, -32600), answers[0])
            return
        expects = [expect_item(item, known_methods) for item in value]
        answered = [expect for expect in expects if expect.answered]
        if not answered:
            assert answers == [], "a batch of notifications gets no answer"
            return
        assert len(answers) == 1
        batch = answers[0]
        assert type(batch) is list, batch
        assert Counter(_key(item["id"]) for item in batch) == Counter(_key(e.request_id) for e in answered)
        strict = Counter((_key(e.request_id), e.code) for e in answered if e.code is not None)
        actual = Counter(
            (_key(item["id"]), item["error"]["code"] if "error" in item else None) for item in batch
        )
        assert not strict - actual, (strict, actual)
        return
    expect = expect_item(value, known_methods)
    if not expect.answered:
        assert answers == [], "a notification gets no answer"
        return
    assert len(answers) == 1, "a request gets exactly one answer"
    assert type(answers[0]) is dict, answers
    check_against(expect, answers[0])


# -- the wire ---------------------------------------------------------------------------------


def exchange(path: Path, line: bytes) -> list[bytes]:
    """Send one line on a fresh connection, half-close, and read every answer line until EOF."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(15)
        sock.connect(str(path))
        sock.sendall(line + b"\n")
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    data = b"".join(chunks)
    assert data == b"" or data.endswith(b"\n"), data[-200:]
    return data.splitlines()


def call(path: Path, method: str) -> Any:
    (answer,) = exchange(path, orjson.dumps({"jsonrpc": "2.0", "method": method, "id": "probe"}))
    message = orjson.loads(answer)
    assert message["id"] == "probe"
    assert "result" in message, message
    return message["result"]


def test_wire_protocol_fuzz(sample_service: ServiceProcess) -> None:
    path = sample_service.socket
    discovered = {method["name"] for method in call(path, "rpc.discover")["methods"]}
    assert set(REAL_METHODS) <= discovered
    sent.clear()

    @settings(
        max_examples=2500,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    @given(st.lists(inputs, min_size=4, max_size=6))
    def fuzz(batch_of_inputs: list[tuple[str, bytes]]) -> None:
        for kind, line in batch_of_inputs:
            assert b"\n" not in line
            assert len(line) < MAX_LINE
            check_answer(line, exchange(path, line), discovered)
            sent[kind] += 1

    fuzz()

    total = sum(sent.values())
    assert total >= MIN_INPUTS, sent
    for kind in ("bytes", "json", "request", "batch"):
        assert sent[kind] >= MIN_INPUTS // 20, sent
    assert sample_service.process.poll() is None, "the service died"
    health = call(path, "health")
    assert health["service"] == "sample"
    assert health["state"] == "running"
    rpc = call(path, "metrics")["rpc"]
    assert rpc == {"connections": 1, "in_flight": 0}, rpc
