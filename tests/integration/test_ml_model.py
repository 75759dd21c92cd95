"""The ML model service as a real process, beside a real market data process, over their sockets.

Models are trained once per module on generated bars (a seeded random walk ending with the last
closed session) and copied into each test's models/.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
import redis.asyncio as aioredis

from services.asx.calendar import AsxCalendar
from services.base.config import TradingHome
from services.base.errors import DependencyUnavailable, InvalidParams, NotFound, Rejected
from services.base.events import CHANNEL_PREFIX
from services.base.redis_server import EmbeddedRedis
from services.base.rpc.client import RpcClient
from services.ml_model.config import MlModelConfig
from services.ml_model.features import FEATURE_NAMES, clean_bars, feature_frame, latest_row
from services.ml_model.registry import ModelRegistry
from services.ml_model.training import run_training
from tests.conftest import ServiceProcess, eventually
from tests.ml_fakes import random_walk_bars

SYMBOLS = ("CBA.AX", "ANZ.AX")
KINDS = ("logistic", "gradient_boosting")
DAYS = 700


LAST_SESSION = AsxCalendar().last_closed(datetime.now(UTC))


def recent_bars(seed: int) -> pd.DataFrame:
    """Generated bars ending with the last closed ASX session: recent history for market data."""
    assert LAST_SESSION is not None
    return random_walk_bars(DAYS, seed=seed, price=50.0, end=LAST_SESSION.date.isoformat())


def write_csv(bars: pd.DataFrame, path: Path) -> None:
    frame = bars.rename(columns=str.title).rename(columns={"Adj_Close": "Adj Close"})
    frame.index.name = "Date"
    frame.to_csv(path)


@pytest.fixture(scope="module")
def market() -> dict[str, pd.DataFrame]:
    return {"CBA.AX": recent_bars(1), "ANZ.AX": recent_bars(2), "^AXJO": recent_bars(3)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, market: dict[str, pd.DataFrame]) -> Path:
    root = tmp_path_factory.mktemp("models")
    config = MlModelConfig(symbols=SYMBOLS, models=KINDS, folds=2, train_jobs=1)
    run_training(
        config,
        {s: market[s] for s in SYMBOLS},
        market["^AXJO"],
        ModelRegistry(root),
        now=pd.Timestamp.now(tz="UTC").to_pydatetime(),
        source="generated test bars",
    )
    return root


@pytest.fixture
def prices(tmp_path: Path, market: dict[str, pd.DataFrame]) -> Path:
    directory = tmp_path / "prices"
    directory.mkdir()
    for symbol, bars in market.items():
        write_csv(bars, directory / f"{symbol}.csv")
    return directory


@pytest.fixture
def market_data(home: TradingHome, redis: EmbeddedRedis, prices: Path) -> Iterator[ServiceProcess]:
    service = ServiceProcess(
        home,
        name="market_data",
        module="services.market_data",
        REDIS_URL=redis.url,
        TRADING__MARKET_DATA__SOURCE="csv",
        TRADING__MARKET_DATA__CSV_DIR=str(prices),
        TRADING__MARKET_DATA__SYMBOLS=orjson.dumps(SYMBOLS).decode(),
    )
    service.wait_ready()
    yield service
    service.stop()


def start_ml(home: TradingHome, redis: EmbeddedRedis) -> ServiceProcess:
    service = ServiceProcess(
        home,
        name="ml_model",
        module="services.ml_model",
        REDIS_URL=redis.url,
        TRADING__ML_MODEL__SYMBOLS=orjson.dumps(SYMBOLS).decode(),
        TRADING__ML_MODEL__RELOAD_INTERVAL_S="0.2",
    )
    service.wait_ready(timeout=60)
    wait_loaded(service)
    return service


def wait_loaded(service: ServiceProcess) -> None:
    """The socket answers at once; the models load after it (health says "loading" meanwhile).
    Plain blocking calls: callers may be inside an event loop."""
    import socket
    import time

    def detail() -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(service.socket))
            sock.sendall(b'{"jsonrpc": "2.0", "id": 1, "method": "health"}\n')
            answer = sock.makefile("rb").readline()
        return str(orjson.loads(answer)["result"]["checks"]["models"]["detail"])

    deadline = time.monotonic() + 60
    while detail().startswith("loading") and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture
def ml_model(home: TradingHome, redis: EmbeddedRedis, trained: Path) -> Iterator[ServiceProcess]:
    shutil.copytree(trained, home.models, dirs_exist_ok=True)
    service = start_ml(home, redis)
    yield service
    service.stop()


@pytest.fixture
async def client(ml_model: ServiceProcess) -> AsyncIterator[RpcClient]:
    async with RpcClient(ml_model.socket, timeout=30) as rpc:
        yield rpc


def features_of(bars: pd.DataFrame, index_bars: pd.DataFrame, day: str | None = None) -> dict[str, float]:
    frame = feature_frame(bars, index_bars)
    if day is not None:
        frame = frame.loc[:day]
    return latest_row(frame)[1]


async def test_lists_models_and_predicts_from_given_features(
    client: RpcClient, market: dict[str, pd.DataFrame]
) -> None:
    listing = await client.call("list_available_models")
    found = {(m["scope"], m["model"]) for m in listing["models"]}
    assert found == {(scope, kind) for scope in (*SYMBOLS, "pooled") for kind in KINDS}
    for entry in listing["models"]:
        assert entry["loaded_version"] == entry["active_version"] == "v1"
        assert entry["walk_forward"]["rows"] > 0
        assert entry["load_error"] is None
    assert listing["features"] == list(FEATURE_NAMES)

    features = features_of(market["CBA.AX"], market["^AXJO"])
    one = await client.call("predict", {"model_name": "logistic", "features": features, "symbol": "CBA.AX"})
    assert one["scope"] == "CBA.AX"
    assert 0.0 <= one["probability_up"] <= 1.0
    assert one["direction"] == ("up" if one["probability_up"] >= 0.5 else "down")

    # A symbol without models of its own is served by the pooled ones.
    pooled = await client.call(
        "predict", {"model_name": "logistic", "features": features, "symbol": "WBC.AX"}
    )
    assert pooled["scope"] == "pooled"

    ensemble = await client.call("get_ensemble_prediction", {"features": features, "symbol": "CBA.AX"})
    assert set(ensemble["models"]) == set(KINDS)
    assert ensemble["models"]["logistic"]["probability_up"] == pytest.approx(one["probability_up"])
    probabilities = [m["probability_up"] for m in ensemble["models"].values()]
    assert ensemble["probability_up"] == pytest.approx(np.mean(probabilities), abs=1e-6)
    votes = [p >= 0.5 for p in probabilities]
    agreement = votes.count(ensemble["probability_up"] >= 0.5) / len(votes)
    assert ensemble["agreement"] == pytest.approx(agreement)
    assert ensemble["confidence"] == pytest.approx(
        abs(2 * ensemble["probability_up"] - 1) * agreement, abs=1e-5
    )

    batch = await client.call(
        "get_ensemble_predictions",
        {"items": [{"symbol": s, "features": features} for s in ("CBA.AX", "ANZ.AX", "NAB.AX")]},
    )
    scopes = [p["scope"] for p in batch["predictions"]]
    assert scopes == ["CBA.AX", "ANZ.AX", "pooled"]
    assert batch["predictions"][0]["probability_up"] == pytest.approx(ensemble["probability_up"])

    importance = await client.call("get_feature_importance", {"model_name": "logistic", "symbol": "CBA.AX"})
    assert set(importance["permutation"]["mean"]) == set(FEATURE_NAMES)
    assert set(importance["native"]) == set(FEATURE_NAMES)
    assert sorted(importance["ranking"]) == sorted(FEATURE_NAMES)
    # As the design document calls it, without a symbol: the pooled model's.
    pooled = await client.call("get_feature_importance", {"model_name": "logistic"})
    assert (pooled["scope"], pooled["symbol"]) == ("pooled", None)
    assert sorted(pooled["ranking"]) == sorted(FEATURE_NAMES)


async def test_bad_features_and_names_are_named(client: RpcClient, market: dict[str, pd.DataFrame]) -> None:
    features: dict[str, Any] = features_of(market["CBA.AX"], market["^AXJO"])
    cases: list[tuple[dict[str, Any], str]] = [
        ({k: v for k, v in features.items() if k != "rsi_14"}, "features.rsi_14"),
        ({**features, "sentiment": 0.2}, "features.sentiment"),
        ({**features, "atr_pct": None}, "features.atr_pct"),
        ({**features, "rsi_14": 140.0}, "features.rsi_14"),
        ({**features, "volume_ratio": "high"}, "features.volume_ratio"),
    ]
    for bad, field in cases:
        with pytest.raises(InvalidParams) as caught:
            await client.call("get_ensemble_prediction", {"features": bad, "symbol": "CBA.AX"})
        assert caught.value.data["field"] == field
    items = [
        {"symbol": "CBA.AX", "features": features},
        {"symbol": "ANZ.AX", "features": {**features, "ret_1d": 9.0}},
    ]
    with pytest.raises(InvalidParams) as caught:
        await client.call("get_ensemble_predictions", {"items": items})
    assert caught.value.data["field"] == "items[1].features.ret_1d"
    for name in ("../../etc/passwd", "random_forest/../logistic", "Logistic"):
        with pytest.raises(InvalidParams) as caught:
            await client.call("predict", {"model_name": name, "features": features, "symbol": "CBA.AX"})
        assert caught.value.data["field"] == "model_name"
    with pytest.raises(InvalidParams) as caught:
        await client.call("load_model", {"model_name": "logistic", "symbol": "../pooled"})
    assert caught.value.data["field"] == "symbol"
    with pytest.raises(NotFound):
        await client.call(
            "predict", {"model_name": "random_forest", "features": features, "symbol": "CBA.AX"}
        )
    with pytest.raises(InvalidParams) as caught:
        await client.call("predict", {"model_name": "logistic", "features": features, "symbol": "pooled"})
    assert caught.value.data["field"] == "symbol"
    later = (date.today() + timedelta(days=2)).isoformat()
    with pytest.raises(InvalidParams) as caught:
        await client.call(
            "get_ensemble_prediction", {"features": features, "symbol": "CBA.AX", "as_of": later}
        )
    assert caught.value.data["field"] == "as_of"
    # Computed features describe the last session: an as_of with them would be a wrong record.
    with pytest.raises(InvalidParams) as caught:
        await client.call("get_ensemble_prediction", {"symbol": "CBA.AX", "as_of": "2021-03-01"})
    assert caught.value.data["field"] == "as_of"
    # Still serving after all that.
    assert (await client.call("health"))["status"] in ("ok", "degraded")


async def test_features_computed_from_market_data_match_training(
    client: RpcClient, market_data: ServiceProcess, market: dict[str, pd.DataFrame]
) -> None:
    expected_day, expected = latest_row(feature_frame(market["CBA.AX"], market["^AXJO"]))
    live = await client.call("get_features", {"symbol": "CBA.AX"})
    assert live["as_of"] == expected_day
    # Same function, fewer bars (history_days): the EMA-based MACD and RSI start from a later
    # seed, a difference that has decayed to about 1e-8 after ~270 sessions.
    for name in FEATURE_NAMES:
        assert live["features"][name] == pytest.approx(expected[name], rel=1e-6, abs=1e-9), name
    computed = await client.call("get_ensemble_prediction", {"symbol": "CBA.AX"})
    given = await client.call("get_ensemble_prediction", {"symbol": "CBA.AX", "features": expected})
    assert computed["as_of"] == expected_day
    assert computed["probability_up"] == pytest.approx(given["probability_up"])


async def test_market_data_down_is_named_and_given_features_still_work(
    client: RpcClient, market: dict[str, pd.DataFrame]
) -> None:
    with pytest.raises(DependencyUnavailable) as caught:
        await client.call("get_ensemble_prediction", {"symbol": "CBA.AX"})
    assert "market_data" in caught.value.message
    features = features_of(market["CBA.AX"], market["^AXJO"])
    answer = await client.call("get_ensemble_prediction", {"symbol": "CBA.AX", "features": features})
    assert answer["scope"] == "CBA.AX"


async def test_live_tracking_scores_predictions_once_their_horizon_has_passed(
    client: RpcClient, market_data: ServiceProcess, market: dict[str, pd.DataFrame]
) -> None:
    bars = market["CBA.AX"]
    close = clean_bars(bars)["close"]
    days = [d.date().isoformat() for d in close.index]
    asked = days[-30:-10]  # horizon 5: all can be scored
    waiting = days[-3]  # three sessions ago: not yet
    hits = 0
    decided = 0
    for day in [*asked, waiting]:
        features = features_of(bars, market["^AXJO"], day)
        answer = await client.call(
            "get_ensemble_prediction", {"symbol": "CBA.AX", "features": features, "as_of": day}
        )
        if day == waiting:
            continue
        at = days.index(day)
        realised = close.iloc[at + 5] / close.iloc[at] - 1
        if abs(realised) > 0.005:
            decided += 1
            hits += (realised > 0) == (answer["probability_up"] >= 0.5)
    # Asking about the same day again replaces the row rather than counting twice.
    again = features_of(bars, market["^AXJO"], asked[0])
    await client.call("get_ensemble_prediction", {"symbol": "CBA.AX", "features": again, "as_of": asked[0]})

    performance = await client.call("get_model_performance", {"symbol": "CBA.AX"})
    assert performance["scoring_error"] is None
    live = performance["live"]["ensemble"]
    assert live["predictions"] == len(asked) + 1
    assert live["pending"] == 1
    assert live["flat"] == len(asked) - decided
    assert live["all"]["scored"] == decided
    assert live["all"]["accuracy"] == pytest.approx(hits / decided, abs=1e-4)
    assert set(performance["live"]) == {"ensemble", *KINDS}
    assert performance["walk_forward"]["logistic"]["model"]["rows"] > 0
    assert performance["scope"] == "CBA.AX"


async def test_a_tampered_version_is_refused_and_the_previous_one_stays(
    home: TradingHome, redis: EmbeddedRedis, client: RpcClient, trained: Path, market: dict[str, pd.DataFrame]
) -> None:
    registry = ModelRegistry(home.models)
    model = registry.load("CBA.AX", "logistic")
    # v2: a copy of v1 saved as a new version; v3: the same, then damaged on disk.
    registry.save("CBA.AX", "logistic", model.model, {k: v for k, v in model.card.items() if k != "sha256"})
    registry.save("CBA.AX", "logistic", model.model, {k: v for k, v in model.card.items() if k != "sha256"})
    damaged = home.models / "CBA.AX" / "logistic" / "v3" / "model.skops"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))

    events = aioredis.Redis.from_url(redis.url)
    pubsub = events.pubsub()
    await pubsub.subscribe(f"{CHANNEL_PREFIX}ml_model_update")
    try:
        with pytest.raises(Rejected) as caught:
            await client.call("load_model", {"model_name": "logistic", "symbol": "CBA.AX", "version": "v3"})
        assert caught.value.data["reason"] == "hash_mismatch"
        assert registry.active_version("CBA.AX", "logistic") == "v1"

        loaded = await client.call(
            "load_model", {"model_name": "logistic", "symbol": "CBA.AX", "version": "v2"}
        )
        assert loaded["version"] == "v2"
        message = None

        async def got_event() -> bool:
            nonlocal message
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            return message is not None

        await eventually(got_event)
        assert message is not None
        event = orjson.loads(message["data"])
        assert event["data"]["scope"] == "CBA.AX"
        assert event["data"]["version"] == "v2"
        assert event["data"]["previous_version"] == "v1"

        # A damaged file activated behind the service's back (a bad training run, a disk error):
        # the service keeps v2 and says so in health.
        (home.models / "CBA.AX" / "logistic" / "ACTIVE").write_text('{"version": "v3"}')

        async def reported() -> bool:
            health = await client.call("health")
            return bool(health["checks"]["models"]["status"] == "degraded")

        await eventually(reported)
        listing = await client.call("list_available_models")
        entry = next(m for m in listing["models"] if (m["scope"], m["model"]) == ("CBA.AX", "logistic"))
        assert entry["loaded_version"] == "v2"
        assert "does not match its card" in entry["load_error"]
        features = features_of(market["CBA.AX"], market["^AXJO"])
        answer = await client.call(
            "predict", {"model_name": "logistic", "features": features, "symbol": "CBA.AX"}
        )
        assert answer["version"] == "v2"

        # Pointed back at the version in use: the error is gone.
        (home.models / "CBA.AX" / "logistic" / "ACTIVE").write_text('{"version": "v2"}')

        async def recovered() -> bool:
            return bool((await client.call("health"))["checks"]["models"]["status"] == "ok")

        await eventually(recovered)

        # Models trained for another label (tradingctl train --horizon 10) are refused.
        card = {k: v for k, v in model.card.items() if k != "sha256"}
        card["label"] = {"horizon_days": 10, "threshold": 0.005}
        other = registry.save("CBA.AX", "logistic", model.model, card)
        with pytest.raises(Rejected) as caught:
            await client.call("load_model", {"model_name": "logistic", "symbol": "CBA.AX", "version": other})
        assert caught.value.data["reason"] == "label_mismatch"
    finally:
        await pubsub.aclose()
        await events.aclose()


async def test_a_symbol_market_data_does_not_serve_is_marked_unscorable(
    client: RpcClient, market_data: ServiceProcess, market: dict[str, pd.DataFrame]
) -> None:
    features = features_of(market["CBA.AX"], market["^AXJO"])
    month_ago = (date.today() - timedelta(days=30)).isoformat()
    await client.call(
        "get_ensemble_prediction", {"features": features, "symbol": "ZZZ.AX", "as_of": month_ago}
    )
    performance = await client.call("get_model_performance", {"symbol": "ZZZ.AX"})
    assert performance["scope"] == "pooled"
    assert performance["scoring_error"] is None
    live = performance["live"]["ensemble"]
    assert live["unscorable"] == 1
    assert live["pending"] == 0
    assert "ZZZ.AX" in live["unscorable_reason"]
    assert (await client.call("health"))["checks"]["live_tracking"]["status"] == "ok"


async def test_a_new_version_from_training_is_picked_up(
    home: TradingHome, redis: EmbeddedRedis, client: RpcClient
) -> None:
    registry = ModelRegistry(home.models)
    model = registry.load("pooled", "gradient_boosting")
    card = {k: v for k, v in model.card.items() if k != "sha256"}
    version = registry.save("pooled", "gradient_boosting", model.model, card)
    registry.activate("pooled", "gradient_boosting", version)

    async def picked_up() -> bool:
        listing = await client.call("list_available_models")
        entry = next(
            m for m in listing["models"] if (m["scope"], m["model"]) == ("pooled", "gradient_boosting")
        )
        return bool(entry["loaded_version"] == version)

    await eventually(picked_up)


async def test_without_models_health_says_so(home: TradingHome, redis: EmbeddedRedis) -> None:
    service = start_ml(home, redis)
    try:
        async with RpcClient(service.socket, timeout=30) as rpc:
            health = await rpc.call("health")
            assert health["status"] == "degraded"
            assert "tradingctl train" in health["checks"]["models"]["detail"]
            features = dict.fromkeys(FEATURE_NAMES, 0.0)
            features["rsi_14"] = 50.0
            with pytest.raises(DependencyUnavailable) as caught:
                await rpc.call("get_ensemble_prediction", {"features": features, "symbol": "CBA.AX"})
            assert "tradingctl train" in caught.value.message
            assert (await rpc.call("list_available_models"))["models"] == []
    finally:
        service.stop()


async def test_predictions_survive_kill_9(
    home: TradingHome, redis: EmbeddedRedis, ml_model: ServiceProcess, market: dict[str, pd.DataFrame]
) -> None:
    features = features_of(market["CBA.AX"], market["^AXJO"])
    month_ago = (date.today() - timedelta(days=30)).isoformat()
    async with RpcClient(ml_model.socket, timeout=30) as rpc:
        await rpc.call(
            "get_ensemble_prediction", {"features": features, "symbol": "CBA.AX", "as_of": month_ago}
        )
    os.kill(ml_model.process.pid, signal.SIGKILL)
    ml_model.process.wait()
    restarted = start_ml(home, redis)
    try:
        async with RpcClient(restarted.socket, timeout=30) as rpc:
            performance = await rpc.call("get_model_performance", {"symbol": "CBA.AX"})
            assert performance["live"]["ensemble"]["predictions"] == 1
            assert performance["live"]["ensemble"]["last_as_of"] == month_ago
    finally:
        restarted.stop()


async def test_models_that_all_fail_their_checks_are_named_not_sent_to_training(
    home: TradingHome, redis: EmbeddedRedis, trained: Path
) -> None:
    shutil.copytree(trained, home.models, dirs_exist_ok=True)
    for model_file in home.models.rglob("model.skops"):
        model_file.write_bytes(model_file.read_bytes() + b"tampered")
    service = start_ml(home, redis)
    try:
        async with RpcClient(service.socket, timeout=30) as rpc:
            detail = (await rpc.call("health"))["checks"]["models"]["detail"]
    finally:
        service.stop()
    assert detail.startswith("no model could be loaded: ")
    assert "does not match its card" in detail
    assert "tradingctl train" not in detail


def test_a_users_own_pickle_is_imported_only_when_trusted_checked_and_stored_as_skops(
    home: TradingHome, prices: Path, market: dict[str, pd.DataFrame], tmp_path: Path
) -> None:
    import pickle
    import subprocess
    import sys

    from sklearn.linear_model import LogisticRegression

    from services.ml_model.training import build_dataset
    from tests.conftest import ROOT, service_env

    data = build_dataset("CBA.AX", market["CBA.AX"], market["^AXJO"], horizon=5, threshold=0.0)
    mine = tmp_path / "mine.pkl"
    mine.write_bytes(pickle.dumps(LogisticRegression(max_iter=500).fit(data.X.to_numpy(), data.y)))
    narrow = tmp_path / "narrow.pkl"
    narrow.write_bytes(pickle.dumps(LogisticRegression().fit(data.X.to_numpy()[:, :3], data.y)))
    not_a_model = tmp_path / "dict.pkl"
    not_a_model.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))

    def models_import(path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "services.management", "models", "import", str(path),
                   "--symbol", "CBA.AX", "--name", "my_logit", "--prices", str(prices), *flags]  # fmt: skip
        return subprocess.run(
            command, env=service_env(home), capture_output=True, text=True, timeout=300, cwd=ROOT
        )

    untrusted = models_import(mine)
    assert untrusted.returncode == 2
    assert "--trust-pickle" in untrusted.stderr
    registry = ModelRegistry(home.models)
    assert registry.versions("CBA.AX", "my_logit") == []  # nothing was unpickled, nothing stored
    for bad, why in ((not_a_model, "not a scikit-learn estimator"), (narrow, "takes 3 features")):
        refused = models_import(bad, "--trust-pickle")
        assert refused.returncode == 2
        assert why in refused.stderr
    done = models_import(mine, "--trust-pickle")
    assert done.returncode == 0, done.stderr
    assert "imported" in done.stdout
    loaded = registry.load("CBA.AX", "my_logit")  # skops, checked like every model
    assert loaded.version == "v1"
    assert registry.active_version("CBA.AX", "my_logit") == "v1"
    assert loaded.card["imported"]["file"] == "mine.pkl"
    assert loaded.card["walk_forward"]["overall"]["model"]["accuracy"] is not None
    assert not any(path.suffix == ".pkl" for path in home.models.rglob("*"))


async def test_the_socket_answers_while_the_models_load(
    home: TradingHome, redis: EmbeddedRedis, trained: Path, market: dict[str, pd.DataFrame],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    import threading

    from services.base.config import load_settings
    from services.ml_model.ml_model_service import MlModelService

    shutil.copytree(trained, home.models, dirs_exist_ok=True)
    gate = threading.Event()
    load = ModelRegistry.load

    def slow_load(self: ModelRegistry, *args: Any, **kwargs: Any) -> Any:
        gate.wait(30)  # a busy machine: loading takes as long as the test says
        return load(self, *args, **kwargs)

    monkeypatch.setattr(ModelRegistry, "load", slow_load)
    env = {"REDIS_URL": redis.url, "TRADING__ML_MODEL__SYMBOLS": orjson.dumps(SYMBOLS).decode()}
    service = MlModelService(load_settings(home, env=env))
    await service.start()  # returns with the socket open, nothing loaded yet
    try:
        features = features_of(market["CBA.AX"], market["^AXJO"])
        async with RpcClient(home.socket_path("ml_model"), timeout=10) as rpc:
            health = await rpc.call("health")
            assert health["status"] == "degraded"
            assert health["checks"]["models"]["detail"].startswith("loading")
            with pytest.raises(DependencyUnavailable, match="still loading"):
                await rpc.call("get_ensemble_prediction", {"features": features, "symbol": "CBA.AX"})
            gate.set()
            await eventually(lambda: not service.loading, within=30)
            assert (await rpc.call("health"))["checks"]["models"]["status"] == "ok"
            ensemble = await rpc.call("get_ensemble_prediction", {"features": features, "symbol": "CBA.AX"})
            assert 0 <= ensemble["probability_up"] <= 1
    finally:
        gate.set()
        await service.stop()
