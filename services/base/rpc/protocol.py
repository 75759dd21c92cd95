"""JSON-RPC 2.0 wire types and encoding: one JSON text per line (NDJSON)."""

from __future__ import annotations

import os
import socket
import struct
from typing import Any, NotRequired, TypedDict

import orjson

from services.base.errors import ErrorCode

JSONRPC = "2.0"
DUMPS_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY

RequestId = str | int | None


class RpcRequest(TypedDict):
    jsonrpc: str
    method: str
    params: NotRequired[dict[str, Any]]
    id: NotRequired[RequestId]
    trace: NotRequired[str]


class RpcErrorObject(TypedDict):
    code: int
    message: str
    data: NotRequired[Any]


class RpcSuccess(TypedDict):
    jsonrpc: str
    id: RequestId
    result: Any


class RpcFailure(TypedDict):
    jsonrpc: str
    id: RequestId
    error: RpcErrorObject


def encode(message: Any) -> bytes:
    return orjson.dumps(message, option=DUMPS_OPTIONS) + b"\n"


def success(request_id: RequestId, result: Any) -> RpcSuccess:
    return {"jsonrpc": JSONRPC, "id": request_id, "result": result}


def failure(request_id: RequestId, code: int, message: str, data: Any = None) -> RpcFailure:
    error: RpcErrorObject = {"code": int(code), "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": JSONRPC, "id": request_id, "error": error}


def valid_id(value: Any) -> bool:
    return value is None or type(value) is str or type(value) is int


# Pre-encoded answers for errors that carry no request id.
MESSAGE_TOO_LARGE = encode(failure(None, ErrorCode.INVALID_REQUEST, "message too large"))
UNAUTHORIZED = encode(failure(None, ErrorCode.UNAUTHORIZED, "unauthorized: peer is another user"))


def peer_uid(sock: Any) -> int | None:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED), or None."""
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)


def same_user(uid: int | None) -> bool:
    return uid == os.getuid()
