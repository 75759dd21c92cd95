"""A training run end to end on generated bars: datasets, report, registry, the CLI."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from services.ml_model.config import MlModelConfig
from services.ml_model.features import FEATURE_NAMES
from services.ml_model.registry import ModelRegistry
from services.ml_model.train import main
from services.ml_model.training import build_dataset, run_training, write_report
from tests.ml_fakes import random_walk_bars

NOW = datetime(2026, 11, 20, tzinfo=UTC)
CONFIG = MlModelConfig(symbols=("CBA.AX", "ANZ.AX"), models=("logistic", "ridge"), folds=2, train_jobs=1)


def test_dataset_rows_have_labels_and_their_end_sessions() -> None:
    bars = random_walk_bars(400, seed=1)
    dataset = build_dataset("CBA.AX", bars, random_walk_bars(400, seed=2), horizon=5, threshold=0.005)
    counts = dataset.counts
    assert counts["days"] == 400
    assert counts["used"] == len(dataset.y) == len(dataset.X) == len(dataset.label_end)
    assert (
        counts["used"] + counts["missing_features"] + counts["inside_threshold"] + counts["no_outcome_yet"]
        == 400
    )
    assert counts["no_outcome_yet"] == 5
    sessions = list(dataset.X.index)
    all_days = [d for d in bars.index]
    for day, end in zip(sessions[:20], dataset.label_end[:20], strict=True):
        assert all_days.index(end.date().isoformat()) == all_days.index(day.date().isoformat()) + 5
    assert list(dataset.X.columns) == list(FEATURE_NAMES)


def test_a_run_trains_each_symbol_and_pooled_and_writes_its_report(tmp_path: Path) -> None:
    bars = {"CBA.AX": random_walk_bars(500, seed=3), "ANZ.AX": random_walk_bars(500, seed=4)}
    registry = ModelRegistry(tmp_path / "models")
    report = run_training(CONFIG, bars, random_walk_bars(500, seed=5), registry, now=NOW, source="test")
    assert report["failures"] == []
    assert set(report["scopes"]) == {"CBA.AX", "ANZ.AX", "pooled"}
    for scope, result in report["scopes"].items():
        for kind in CONFIG.models:
            entry = result["models"][kind]
            assert registry.active_version(scope, kind) == entry["version"] == "v1"
            card = registry.load(scope, kind).card
            assert card["walk_forward"]["overall"] == entry["walk_forward"]
            assert card["label"] == {"horizon_days": 5, "threshold": 0.005}
            assert card["training_window"]["rows"] == result["training_window"]["rows"]
    pooled_rows = report["scopes"]["pooled"]["training_window"]["rows"]
    assert pooled_rows == sum(report["symbols"][s]["used"] for s in bars)
    json_path, markdown_path = write_report(report, tmp_path / "reports")
    assert orjson.loads(json_path.read_bytes())["scopes"].keys() == report["scopes"].keys()
    text = markdown_path.read_text()
    assert "| pooled | ridge | v1 |" in text
    assert json_path.name == "train-20261120T000000Z.json"


def test_a_kind_that_cannot_train_is_reported_and_the_others_go_on(tmp_path: Path) -> None:
    # 260 days leave too few labelled ones after the 200-day warm-up for 5 folds with a gap.
    config = MlModelConfig(symbols=("CBA.AX",), models=("logistic",), folds=5, pooled=False)
    registry = ModelRegistry(tmp_path / "models")
    short = {"CBA.AX": random_walk_bars(212, seed=6)}
    report = run_training(config, short, random_walk_bars(212, seed=7), registry, now=NOW, source="test")
    assert report["failures"]
    assert report["failures"][0].startswith("CBA.AX/logistic: ")
    assert registry.active_version("CBA.AX", "logistic") is None
    assert "## Failed" in write_report(report, tmp_path / "reports")[1].read_text()


def write_prices(directory: Path) -> None:
    directory.mkdir()
    for seed, symbol in enumerate(("CBA.AX", "ANZ.AX", "^AXJO"), start=10):
        frame = random_walk_bars(450, seed=seed).rename(columns=str.title)
        frame = frame.rename(columns={"Adj_Close": "Adj Close"})
        frame.index.name = "Date"
        frame.to_csv(directory / f"{symbol}.csv")


def test_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("TRADING_HOME", str(home))
    write_prices(tmp_path / "prices")
    argv = [
        "--prices",
        str(tmp_path / "prices"),
        "--symbols",
        "CBA.AX",
        "ANZ.AX",
        "--models",
        "ridge",
        "--folds",
        "2",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "pooled   ridge" in out
    assert "report:" in out
    assert ModelRegistry(home / "models").active_version("pooled", "ridge") == "v1"
    assert list((home / "models" / "reports").glob("train-*.md"))

    assert main([*argv, "--no-activate"]) == 0
    assert ModelRegistry(home / "models").versions("pooled", "ridge") == ["v1", "v2"]
    assert ModelRegistry(home / "models").active_version("pooled", "ridge") == "v1"

    assert main(["--prices", str(tmp_path / "prices"), "--symbols", "NAB.AX"]) == 2
    assert "no price file" in capsys.readouterr().err
    assert main(["--prices", str(tmp_path / "prices"), "--horizon", "0"]) == 2
    assert "horizon" in capsys.readouterr().err


def test_without_prices_the_market_data_service_must_be_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "h"
    (home / "run").mkdir(parents=True)
    monkeypatch.setenv("TRADING_HOME", str(home))
    assert main(["--models", "ridge"]) == 1
    assert "tradingctl start market_data" in capsys.readouterr().err


def test_tradingctl_train_runs_the_same_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from services.management.service_manager import main as tradingctl

    home = tmp_path / "home"
    monkeypatch.setenv("TRADING_HOME", str(home))
    write_prices(tmp_path / "prices")
    argv = ["train", "--prices", str(tmp_path / "prices"), "--symbols", "CBA.AX", "--models", "ridge",
            "--folds", "2", "--no-pooled"]  # fmt: skip
    assert tradingctl(argv) == 0
    assert "CBA.AX   ridge" in capsys.readouterr().out
    assert ModelRegistry(home / "models").active_version("CBA.AX", "ridge") == "v1"
