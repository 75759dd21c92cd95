"""JSON-RPC 2.0 over Unix stream sockets, one JSON text per line."""

from services.base.rpc.client import RpcClient
from services.base.rpc.methods import MethodTable, rpc_method
from services.base.rpc.server import RpcServer

__all__ = ["MethodTable", "RpcClient", "RpcServer", "rpc_method"]
