"""A stand-in market data service and signal helpers for the paper trading tests.

``PriceBoard`` answers ``get_market_data`` from a dict the test sets (a price and its session
date per symbol, or an exception). As a script (``python tests/paper_fakes.py``) it runs as the
``market_data`` service with prices from ``PAPER_PRICES`` (JSON: symbol -> [price, session date]);
with ``PAPER_ROLE=paper_trading`` it runs the real paper trading service on a clock stopped at
``PAPER_NOW``: for tests that kill real processes.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.base.clock import SimulatedClock
from services.base.errors import InvalidParams
from services.base.events import SIGNALS_STREAM, Event, EventType
from services.base.rpc import rpc_method
from services.base.runner import run_service
from services.base.service import BaseService


class PriceBoard(BaseService):
    name = "market_data"
    prices: ClassVar[dict[str, Any]] = {}

    @rpc_method
    def get_market_data(self, symbol: str, bars: int = 20) -> dict[str, Any]:
        quote = self.prices.get(symbol)
        if quote is None:
            raise InvalidParams(f"unknown symbol {symbol!r}", field="symbol")
        if isinstance(quote, Exception):
            raise quote
        price, session = quote
        return {"symbol": symbol, "price": price, "price_time": session, "price_kind": "close"}


def signal_event(
    number: int,
    symbol: str,
    signal: str,
    probability: float | None = 0.9,
    cases: int = 1000,
    *,
    at: str = "2026-11-20T00:30:00+00:00",
) -> Event:
    """A trade signal as prediction sends it, with its calibrated probability and cases."""
    calibration = "uncalibrated" if probability is None else "calibration v1"
    data = {"symbol": symbol, "signal": signal, "probability": probability, "cases": cases,
            "calibration": calibration, "confidence": 0.4, "price": 0.0}  # fmt: skip
    return Event(
        id=f"test-signal-{number:06d}", type=EventType.TRADE_SIGNAL, source="prediction", ts=at, trace=None,
        data=data,
    )  # fmt: skip


async def send(redis: Any, events: list[Event]) -> None:
    """Put events on the signal stream as the outbox relay does."""
    async with redis.pipeline(transaction=False) as pipe:
        for event in events:
            pipe.xadd(SIGNALS_STREAM, {"event": event.encode()})
        await pipe.execute()


if __name__ == "__main__":
    if os.environ.get("PAPER_ROLE") == "paper_trading":
        from services.paper_trading.paper_trading_service import PaperTradingService

        now = datetime.fromisoformat(os.environ["PAPER_NOW"])
        sys.exit(run_service(PaperTradingService, clock=SimulatedClock(now)))
    PriceBoard.prices = {s: tuple(q) for s, q in json.loads(os.environ["PAPER_PRICES"]).items()}
    sys.exit(run_service(PriceBoard))
