"""The ML model service's costs against baselines measured in the same run.

    .venv/bin/python bench/ml_bench.py [--symbols 200] [--rounds 20]

1. Ensemble predictions for ``--symbols`` symbols in one ``get_ensemble_predictions`` call over the
   service's Unix socket (features checked, every model asked, each prediction stored for live
   tracking), versus calling the same loaded scikit-learn models' ``predict_proba`` directly on
   the same 200 rows and averaging.
2. Model load time: the registry's verified load (card, sha256, allowed types, then skops) versus
   a bare ``skops.io.load`` of the same file.

The models are trained on generated bars (a seeded random walk, benchmark input only) in a
temporary TRADING_HOME that is deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import skops.io as sio  # type: ignore[import-untyped]

from services.base.config import TradingHome, load_settings
from services.base.redis_server import EmbeddedRedis
from services.base.rpc import RpcClient
from services.ml_model.config import MlModelConfig
from services.ml_model.features import FEATURE_NAMES
from services.ml_model.ml_model_service import MlModelService
from services.ml_model.models import probability_up
from services.ml_model.registry import MODEL_FILE, POOLED, ModelRegistry
from services.ml_model.training import build_dataset, train_scope
from tests.ml_fakes import random_walk_bars


def median_seconds(work: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def seconds_async(work: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await work()
    return time.perf_counter() - start


def train(root: Path) -> tuple[MlModelConfig, np.ndarray]:
    config = MlModelConfig(folds=2, train_jobs=2)
    dataset = build_dataset(
        "BENCH",
        random_walk_bars(1500, seed=11),
        random_walk_bars(1500, seed=12),
        horizon=config.horizon,
        threshold=config.threshold,
    )
    started = time.perf_counter()
    train_scope(POOLED, [dataset], config, ModelRegistry(root), trained_at=datetime.now(UTC))
    print(f"trained {', '.join(config.models)} on {len(dataset.y)} generated days in "
          f"{time.perf_counter() - started:.1f} s")  # fmt: skip
    return config, dataset.X.to_numpy(dtype=float)


async def main(symbols: int, rounds: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="mb-", dir="/tmp"))
    home = TradingHome(root)
    home.create()
    redis = EmbeddedRedis(home)
    try:
        redis.start()
        config, rows = train(home.models)
        registry = ModelRegistry(home.models)

        print("\nmodel load, median of 5")
        for kind in config.models:
            path = home.models / POOLED / kind / "v1" / MODEL_FILE
            trusted = sio.get_untrusted_types(file=path)
            verified = median_seconds(lambda kind=kind: registry.load(POOLED, kind), 5)
            bare = median_seconds(lambda path=path, trusted=trusted: sio.load(path, trusted=trusted), 5)
            print(f"  {kind:<18} verified {verified * 1e3:7.1f} ms   bare skops {bare * 1e3:7.1f} ms   "
                  f"ratio {verified / bare:.2f}x   ({path.stat().st_size / 1e6:.1f} MB)")  # fmt: skip

        service = MlModelService(load_settings(home, env={"REDIS_URL": redis.url}))
        await service.start()
        try:
            chosen = rows[np.linspace(0, len(rows) - 1, symbols).astype(int)]
            items = [
                {"symbol": f"B{n:03d}.AX", "features": dict(zip(FEATURE_NAMES, map(float, row), strict=True))}
                for n, row in enumerate(chosen)
            ]
            models = [m.model for (scope, _name), m in service.loaded.items() if scope == POOLED]

            def direct() -> np.ndarray:
                return np.mean([probability_up(model, chosen) for model in models], axis=0)

            async with RpcClient(home.socket_path("ml_model"), timeout=60) as client:
                payload = {"items": items}
                answer = await client.call("get_ensemble_predictions", payload)
                served = np.array([p["probability_up"] for p in answer["predictions"]])
                assert np.allclose(served, direct(), atol=1e-6), "the service and the models disagree"
                # Interleaved, so both see the same machine state (2 noisy cores).
                rpc_times, direct_times = [], []
                for _ in range(rounds):
                    rpc_times.append(
                        await seconds_async(lambda: client.call("get_ensemble_predictions", payload))
                    )
                    direct_times.append(median_seconds(direct, 1))
            over_rpc, in_process = statistics.median(rpc_times), statistics.median(direct_times)
            print(f"\nensemble of {len(models)} models for {symbols} symbols, median of {rounds}")
            print(f"  one get_ensemble_predictions call  {over_rpc * 1e3:8.2f} ms")
            print(f"  predict_proba directly, averaged   {in_process * 1e3:8.2f} ms")
            print(f"  ratio                              {over_rpc / in_process:.2f}x (target <= 1.5x)")
        finally:
            await service.stop()
    finally:
        redis.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--symbols", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main(args.symbols, args.rounds))
