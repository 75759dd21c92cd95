"""A small real service used by the integration tests: ``python tests/sample_service.py [FLAGS]``.

Under the manager it takes its name from ``TRADING_MANAGED_NAME``, so one script can play several
services. Flags make it misbehave on purpose: ``--crash-at-start``, ``--ignore-sigterm`` (also
ignores the shutdown RPC), ``--spawn-helper`` (starts a child process that never exits by itself).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.base.db import transaction
from services.base.errors import NotFound, Rejected
from services.base.events import Event
from services.base.outbox import Inbox
from services.base.rpc import rpc_method
from services.base.runner import run_service
from services.base.service import BaseService

STREAM = "sample:stream"


class Order(TypedDict):
    symbol: str
    quantity: int
    limit: NotRequired[float | None]


class SampleService(BaseService):
    name = "sample"
    uses_database = True

    async def _start(self) -> None:
        self.broadcasts: list[dict[str, Any]] = []
        assert self.db is not None
        await self.db.run(Inbox.create_tables)
        self.bus.subscribe("sample_ping", self._on_broadcast)
        self.bus.consume(STREAM, "sample", "sample-1", self._on_durable)

    async def _on_broadcast(self, event: Event) -> None:
        self.broadcasts.append(event.data)

    async def _on_durable(self, event: Event) -> None:
        assert self.db is not None

        def apply(conn: Any) -> None:
            with transaction(conn):
                if not Inbox.seen(conn, event.id):
                    Inbox.record(conn, STREAM, event.id, self.clock.now())

        await self.db.run(apply)

    @rpc_method(idempotent=True)
    async def echo(self, message: str) -> str:
        """Return the message."""
        return message

    @rpc_method
    async def sleep(self, seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    @rpc_method
    def typed(
        self,
        count: int,
        ratio: float,
        symbols: list[str],
        mode: Literal["fast", "slow"] = "fast",
        when: datetime | None = None,
        order: Order | None = None,
    ) -> dict[str, Any]:
        return {
            "count": count,
            "ratio": ratio,
            "symbols": symbols,
            "mode": mode,
            "when": when,
            "order": order,
        }

    @rpc_method
    def fail(self) -> None:
        raise RuntimeError("boom: a bug inside a method")

    @rpc_method
    def reject(self, reason: str) -> None:
        raise Rejected(f"rejected: {reason}", reason=reason)

    @rpc_method
    def missing(self) -> None:
        raise NotFound("no such thing")

    @rpc_method
    async def emit(self, data: dict[str, Any]) -> bool:
        return await self.bus.publish("sample_ping", data) is not None

    @rpc_method
    async def emit_durable(self, count: int) -> list[str]:
        events = [
            await self.bus.publish_durable("sample_signal", {"n": n}, stream=STREAM) for n in range(count)
        ]
        return [event.id for event in events]

    @rpc_method(idempotent=True)
    async def applied(self) -> list[str]:
        assert self.db is not None
        rows = await self.db.run(lambda conn: conn.execute("SELECT event_id FROM applied_events").fetchall())
        return sorted(row[0] for row in rows)

    @rpc_method(idempotent=True)
    def broadcasts_received(self) -> list[dict[str, Any]]:
        return self.broadcasts

    @rpc_method(idempotent=True)
    async def outbox_pending(self) -> int:
        return await self.bus.outbox_pending()


class MisbehavingService(SampleService):
    flags: frozenset[str] = frozenset()

    async def _start(self) -> None:
        if "--crash-at-start" in self.flags:
            raise SystemExit(f"{self.name}: crashing at start-up as asked")
        await super()._start()
        if "--spawn-helper" in self.flags:
            self.helper = await asyncio.create_subprocess_exec("sleep", "600")
        if "--ignore-sigterm" in self.flags:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def request_shutdown(self, reason: str = "requested") -> None:
        if "--ignore-sigterm" not in self.flags:
            super().request_shutdown(reason)

    @rpc_method(idempotent=True)
    def helper_pid(self) -> int | None:
        helper = getattr(self, "helper", None)
        return helper.pid if helper is not None else None


def service_class(argv: list[str]) -> type[SampleService]:
    name = os.environ.get("TRADING_MANAGED_NAME", "sample")
    flags = frozenset(arg for arg in argv if arg.startswith("--"))
    if name == "sample" and not flags:
        return SampleService
    return type(f"{name}Service", (MisbehavingService,), {"name": name, "flags": flags})


if __name__ == "__main__":
    sys.exit(run_service(service_class(sys.argv[1:])))
