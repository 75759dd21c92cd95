"""A real run: market data, sentiment, ML model and prediction as real processes over the shared
ASX price files (2000-2022), talking over their sockets and Redis."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from services.base.config import TradingHome
from services.base.events import SIGNALS_STREAM
from services.base.redis_server import EmbeddedRedis
from services.base.rpc.client import RpcClient
from services.market_data.csv_files import read_price_csv
from services.ml_model.config import MlModelConfig
from services.ml_model.registry import ModelRegistry
from services.ml_model.training import run_training
from tests.conftest import ServiceProcess, eventually

PRICES = Path(__file__).resolve().parents[3] / "shared" / "data" / "prices"
pytestmark = pytest.mark.skipif(not PRICES.is_dir(), reason="the shared price files are not here")
BIG4 = ("CBA.AX", "WBC.AX", "ANZ.AX", "NAB.AX")
CONFIG = """
[sentiment.rss]
enabled = false
"""


@pytest.fixture
def stack(home: TradingHome, redis: EmbeddedRedis, tmp_path: Path) -> Iterator[dict[str, ServiceProcess]]:
    prices = tmp_path / "prices"
    prices.mkdir()
    for symbol in (*BIG4, "^AXJO"):
        shutil.copy(PRICES / f"{symbol}.csv", prices / f"{symbol}.csv")
    config = MlModelConfig(models=("logistic",), folds=2, train_jobs=1)
    bars = {symbol: read_price_csv(prices / f"{symbol}.csv") for symbol in BIG4}
    run_training(config, bars, read_price_csv(prices / "^AXJO.csv"), ModelRegistry(home.models),
                 now=datetime.now(UTC), source="shared price files")  # fmt: skip
    home.config_file.write_text(CONFIG)
    env = {
        "REDIS_URL": redis.url,
        "TRADING__MARKET_DATA__SOURCE": "csv",
        "TRADING__MARKET_DATA__CSV_DIR": str(prices),
        "TRADING__ML_MODEL__MODELS": '["logistic"]',
    }
    services = {}
    try:
        for name in ("market_data", "sentiment", "ml_model", "prediction"):
            services[name] = ServiceProcess(home, name=name, module=f"services.{name}", **env)
        for service in services.values():
            service.wait_ready(timeout=60)
        yield services
    finally:
        for service in services.values():
            service.stop()


async def test_predictions_over_the_shared_prices(
    home: TradingHome, redis: EmbeddedRedis, stack: dict[str, ServiceProcess]
) -> None:
    async with RpcClient(home.socket_path("prediction"), timeout=60) as client:
        batch = await client.call("generate_predictions")
        assert batch["errors"] == {}
        assert set(batch["predictions"]) == set(BIG4)
        for symbol, prediction in batch["predictions"].items():
            last = read_price_csv(PRICES / f"{symbol}.csv").dropna(subset=["close"]).iloc[-1]
            assert prediction["price"] == pytest.approx(last["close"])
            assert prediction["price_time"] == "2022-09-20"
            assert prediction["signal"] in ("BUY", "HOLD", "SELL")
            assert 0 < prediction["confidence"] <= 1
            # Honest about what it lacks: no news source here, the ML models cannot compute
            # features from bars 400 days back from today, and the price files are years old.
            assert prediction["degraded"] is True
            assert set(prediction["missing"]) == {"sentiment", "ml", "market"}
            assert "zero confidence" in prediction["missing"]["sentiment"]
            assert "market_data" in prediction["missing"]["ml"]
            assert prediction["components"]["technical"]["stale"] is True
            # ^AXJO's file ends in 2019: its context does not describe a 2022 market.
            assert "market context is of 2019-10-01" in prediction["missing"]["market"]
            assert prediction["regime"] is None

        connection = aioredis.Redis.from_url(redis.url)
        try:

            async def all_sent() -> bool:
                return int(await connection.xlen(SIGNALS_STREAM)) == 4

            await eventually(all_sent, within=20)
            entries = await connection.xrange(SIGNALS_STREAM)
        finally:
            await connection.aclose()
        sent = {orjson.loads(fields[b"event"])["data"]["symbol"] for _id, fields in entries}
        assert sent == set(BIG4)
        history = await client.call("get_prediction_history", {"limit": 8})
        assert len(history) == 4
        assert (await client.call("health"))["prediction_count"] == 4

        # Market data gone: every symbol fails, each naming it; the service keeps answering.
        stack["market_data"].stop()
        failed = await client.call("generate_predictions", {"force_refresh": True})
        assert failed["predictions"] == {}
        for error in failed["errors"].values():
            assert error["code"] == -32000
            assert "market_data" in error["message"]
        assert (await client.call("get_buy_rate"))["rolling"] is not None
