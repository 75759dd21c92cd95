"""The market data service as a real process over its socket, reading real ASX price files."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from services.base.config import TradingHome
from services.base.errors import DependencyUnavailable, InvalidParams, NotFound
from services.base.events import CHANNEL_PREFIX
from services.base.redis_server import EmbeddedRedis
from services.base.rpc.client import RpcClient
from services.market_data.csv_files import read_price_csv
from tests.conftest import ServiceProcess, eventually

PRICES = Path(__file__).resolve().parents[3] / "shared" / "data" / "prices"
pytestmark = pytest.mark.skipif(not PRICES.is_dir(), reason="the shared price files are not here")


@pytest.fixture
def prices(tmp_path: Path) -> Path:
    """A private copy of three price files, so tests can damage and extend them."""
    directory = tmp_path / "prices"
    directory.mkdir()
    for name in ("CBA.AX.csv", "ANZ.AX.csv", "^AXJO.csv"):
        shutil.copy(PRICES / name, directory / name)
    return directory


def start(home: TradingHome, redis: EmbeddedRedis, prices: Path, symbols: str) -> ServiceProcess:
    service = ServiceProcess(
        home,
        name="market_data",
        module="services.market_data",
        REDIS_URL=redis.url,
        TRADING__MARKET_DATA__SOURCE="csv",
        TRADING__MARKET_DATA__CSV_DIR=str(prices),
        TRADING__MARKET_DATA__SYMBOLS=symbols,
    )
    service.wait_ready()
    return service


@pytest.fixture
def market_data(home: TradingHome, redis: EmbeddedRedis, prices: Path) -> Iterator[ServiceProcess]:
    service = start(home, redis, prices, '["CBA.AX", "ANZ.AX", "WBC.AX"]')
    yield service
    service.stop()


@pytest.fixture
async def client(market_data: ServiceProcess) -> AsyncIterator[RpcClient]:
    async with RpcClient(market_data.socket, timeout=20) as rpc:
        yield rpc


async def test_serves_prices_indicators_quality_and_context(client: RpcClient, prices: Path) -> None:
    cba = read_price_csv(prices / "CBA.AX.csv")
    data = await client.call("get_market_data", {"symbol": "CBA.AX", "bars": 5})
    assert data["price"] == pytest.approx(cba["close"].iloc[-1])
    assert data["previous_close"] == pytest.approx(cba["close"].iloc[-2])
    assert data["price_time"] == cba.index[-1] == "2022-09-20"
    assert [bar["time"] for bar in data["recent_bars"]] == list(cba.index[-5:])
    assert data["indicators"]["rsi"]["value"] is not None
    assert data["indicators"]["moving_averages"]["sma_200"] is not None
    assert data["volume"]["available"] is True
    # The files end in 2022: every answer says how stale it is.
    assert data["stale"] is True
    assert data["sessions_behind"] > 500
    assert data["quality"]["issues"][0]["kind"] == "stale"
    assert data["source"] == "csv"
    assert data["synthetic"] is False

    context = await client.call("get_market_context")
    assert context["symbol"] == "^AXJO"
    assert context["as_of"] == "2019-10-01"
    assert context["regime"] in {"bull", "bear", "sideways"}
    assert context["volatility_regime"] in {"low", "normal", "high"}

    history = await client.call(
        "get_history", {"symbol": "ANZ.AX", "start": "2000-11-09", "end": "2000-11-14"}
    )
    # The empty Sunday row is kept as the source gave it: quality reports it, analysis skips it.
    assert history["bars"]["time"] == ["2000-11-09", "2000-11-10", "2000-11-12", "2000-11-13", "2000-11-14"]
    assert history["bars"]["close"][2] is None

    everything = await client.call("get_history", {"symbol": "CBA.AX"})
    assert everything["count"] == len(cba)
    assert not everything["truncated"]

    listed = await client.call("list_symbols")
    roles = {item["symbol"]: item["role"] for item in listed["symbols"]}
    assert roles == {"CBA.AX": "watched", "ANZ.AX": "watched", "WBC.AX": "watched", "^AXJO": "context"}


async def test_bad_requests_get_precise_errors(client: RpcClient) -> None:
    with pytest.raises(NotFound):
        await client.call("get_market_data", {"symbol": "XYZ.AX"})
    with pytest.raises(InvalidParams) as bad_interval:
        await client.call("get_history", {"symbol": "CBA.AX", "interval": "1m"})
    assert bad_interval.value.field == "interval"
    with pytest.raises(InvalidParams) as backwards:
        await client.call("get_history", {"symbol": "CBA.AX", "start": "2020-01-02", "end": "2019-01-02"})
    assert backwards.value.field == "start"
    with pytest.raises(InvalidParams) as bad_date:
        await client.call("get_history", {"symbol": "CBA.AX", "start": "yesterday"})
    assert bad_date.value.field == "start"
    # WBC.AX is watched but has no file: -32000 with the reason.
    with pytest.raises(DependencyUnavailable, match=r"no price file WBC\.AX\.csv"):
        await client.call("get_technical_analysis", {"symbol": "WBC.AX"})
    # A read waits for the start-up refresh of that symbol, which runs off the event loop.
    await client.call("get_market_data", {"symbol": "CBA.AX"})
    health = await client.call("health")
    assert health["status"] == "degraded"
    assert "WBC.AX" in health["checks"]["source"]["detail"]
    assert health["symbols"]["CBA.AX"]["newest_bar"] == "2022-09-20"


async def test_corrupt_file_keeps_last_good_data_and_new_rows_arrive_with_an_event(
    client: RpcClient, prices: Path, redis: EmbeddedRedis
) -> None:
    before = await client.call("get_market_data", {"symbol": "CBA.AX"})
    original = (prices / "CBA.AX.csv").read_text()

    (prices / "CBA.AX.csv").write_text(original + "2022-09-21,99.0,abc,98.0,98.5,98.5,100\n")
    outcome = await client.call("refresh_all_data", {"symbols": ["CBA.AX"]})
    assert outcome["failed"] == ["CBA.AX"]
    assert "column high" in outcome["outcomes"]["CBA.AX"]["errors"]["1d"]
    kept = await client.call("get_market_data", {"symbol": "CBA.AX"})
    assert kept["price"] == before["price"]
    assert "cannot read 'abc'" in kept["last_fetch"]["error"]
    assert (await client.call("health"))["checks"]["source"]["status"] == "degraded"

    redis_client = aioredis.Redis.from_url(redis.url)
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(CHANNEL_PREFIX + "market_data_updated")
    try:
        (prices / "CBA.AX.csv").write_text(original + "2022-09-21,99.0,99.5,98.0,98.5,98.5,100\n")
        outcome = await client.call("refresh_all_data", {"symbols": ["CBA.AX"]})
        assert outcome["updated"] == ["CBA.AX"]
        assert outcome["outcomes"]["CBA.AX"]["bars_changed"] == 1
        events: list[dict[str, Any]] = []

        async def got_event() -> bool:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message is not None:
                events.append(orjson.loads(message["data"]))
            return bool(events)

        await eventually(got_event)
        assert events[0]["source"] == "market_data"
        assert events[0]["data"]["symbol"] == "CBA.AX"
        assert events[0]["data"]["newest_bar"] == "2022-09-21"
        assert events[0]["data"]["price"] == 98.5
    finally:
        await pubsub.aclose()
        await redis_client.aclose()
    # The cached answer was keyed on the data: the new bar shows at once.
    after = await client.call("get_market_data", {"symbol": "CBA.AX"})
    assert after["price"] == 98.5
    assert after["previous_close"] == before["price"]
    assert after["last_fetch"]["error"] is None

    # Refreshing again finds nothing new and publishes nothing.
    again = await client.call("refresh_all_data", {"symbols": ["CBA.AX"]})
    assert again["outcomes"]["CBA.AX"]["status"] == "unchanged"


async def test_store_survives_kill_9(
    home: TradingHome, redis: EmbeddedRedis, prices: Path, market_data: ServiceProcess
) -> None:
    async with RpcClient(market_data.socket, timeout=20) as rpc:
        first = await rpc.call("get_history", {"symbol": "ANZ.AX"})
    market_data.process.send_signal(signal.SIGKILL)
    market_data.process.wait()
    # Without the files the restarted service has only its store to answer from.
    shutil.rmtree(prices)
    os.mkdir(prices)
    restarted = start(home, redis, prices, '["CBA.AX", "ANZ.AX"]')
    try:
        async with RpcClient(restarted.socket, timeout=20) as rpc:
            second = await rpc.call("get_history", {"symbol": "ANZ.AX"})
            assert second["bars"] == first["bars"]
            assert "no price file ANZ.AX.csv" in second["last_fetch"]["error"]
            health = await rpc.call("health")
            assert health["checks"]["source"]["status"] == "degraded"
    finally:
        restarted.stop()


async def test_concurrent_reads_share_one_computation(client: RpcClient) -> None:
    calls = [client.call("get_technical_analysis", {"symbol": "ANZ.AX"}) for _ in range(20)]
    answers = await asyncio.gather(*calls)
    assert len({answer["rsi"]["value"] for answer in answers}) == 1
    metrics = await client.call("metrics")
    assert metrics["methods"]["get_technical_analysis"]["calls"] == 20
    # One computation: the other 19 calls waited for it or found its answer cached.
    assert metrics["counters"]["cache.misses"] == 1
    hits = metrics["counters"].get("cache.hits", 0)
    await client.call("get_technical_analysis", {"symbol": "ANZ.AX"})
    assert (await client.call("metrics"))["counters"]["cache.hits"] == hits + 1
