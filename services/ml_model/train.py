"""``python -m services.ml_model.train`` (also ``tradingctl train``): train, evaluate, register.

    python -m services.ml_model.train --prices ../shared/data/prices
    tradingctl train --symbols CBA.AX WBC.AX --models logistic gradient_boosting

Bars come from Yahoo-format CSV files (``--prices DIR``: ``<SYMBOL>.csv`` per symbol and the
index) or, without it, from the running market data service. Each model's walk-forward figures
are printed as it finishes; the full report is written to ``models/reports/``. A running
ml_model service picks up the new active versions within ``reload_interval_s``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from services.base.config import Settings, load_settings
from services.base.errors import ConfigError, TradingError
from services.base.rpc import RpcClient
from services.market_data.bars import from_columns
from services.market_data.csv_files import CsvFormatError, read_price_csv
from services.ml_model.arguments import add_arguments
from services.ml_model.config import MlModelConfig
from services.ml_model.registry import ModelRegistry
from services.ml_model.training import run_training, write_report

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
MAX_BARS = 50_000


def _config(settings: Settings, args: argparse.Namespace) -> MlModelConfig:
    config = settings.section("ml_model", MlModelConfig)
    changes = {
        key: value
        for key, value in {
            "symbols": tuple(args.symbols) if args.symbols else None,
            "models": tuple(args.models) if args.models else None,
            "horizon": args.horizon,
            "threshold": args.threshold,
            "folds": args.folds,
            "pooled": False if args.no_pooled else None,
        }.items()
        if value is not None
    }
    try:
        return dataclasses.replace(config, **changes)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _read_directory(directory: Path, symbols: Sequence[str]) -> dict[str, pd.DataFrame]:
    bars = {}
    for symbol in symbols:
        path = directory / f"{symbol}.csv"
        if not path.is_file():
            raise ConfigError(f"no price file {path}")
        bars[symbol] = read_price_csv(path)
    return bars


async def _ask_market_data(settings: Settings, symbols: Sequence[str]) -> dict[str, pd.DataFrame]:
    socket = settings.home.socket_path("market_data")
    bars = {}
    async with RpcClient(socket, timeout=60.0, connect_attempts=1) as client:
        for symbol in symbols:
            answer = await client.call("get_history", {"symbol": symbol, "max_bars": MAX_BARS})
            bars[symbol] = from_columns(answer["bars"])
    return bars


def train(settings: Settings, args: argparse.Namespace) -> int:
    """Run a training with parsed ``args``; the exit status."""
    try:
        config = _config(settings, args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    wanted = [*config.symbols, config.market_symbol]
    try:
        if args.prices is not None:
            source = f"price files in {args.prices}"
            bars = _read_directory(args.prices, wanted)
        else:
            source = "the market data service"
            bars = asyncio.run(_ask_market_data(settings, wanted))
    except (ConfigError, CsvFormatError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TradingError as exc:
        print(f"error: cannot read bars from the market data service ({exc}); start it "
              "(tradingctl start market_data) or pass --prices DIR", file=sys.stderr)  # fmt: skip
        return EXIT_FAILED
    index_bars = bars.pop(config.market_symbol)
    registry = ModelRegistry(settings.home.models)
    print(f"training {', '.join(config.models)} on {', '.join(config.symbols)}"
          f"{' and pooled' if config.pooled else ''} from {source}", flush=True)  # fmt: skip
    try:
        report = run_training(
            config, bars, index_bars, registry,
            now=datetime.now(UTC), source=source, activate=not args.no_activate,
            progress=lambda line: print(line, flush=True),
        )  # fmt: skip
    except ValueError as exc:
        print(f"error: training failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    json_path, markdown_path = write_report(report, args.report_dir or settings.home.models / "reports")
    print(f"done in {report['elapsed_s']} s; report: {markdown_path} and {json_path}")
    if report["failures"]:
        print(f"{len(report['failures'])} model(s) failed to train:", *report["failures"], sep="\n  ",
              file=sys.stderr)  # fmt: skip
        return EXIT_FAILED
    return EXIT_OK


def import_cli(settings: Settings, args: argparse.Namespace) -> int:
    """``tradingctl models import FILE --symbol S --name N --trust-pickle [--prices DIR]``."""
    from services.ml_model.importing import import_model

    config = settings.section("ml_model", MlModelConfig)
    symbols = list(config.symbols) if args.symbol == "pooled" else [args.symbol]
    try:
        if args.prices is not None:
            source = f"price files in {args.prices}"
            bars = _read_directory(args.prices, [*symbols, config.market_symbol])
        else:
            source = "the market data service"
            bars = asyncio.run(_ask_market_data(settings, [*symbols, config.market_symbol]))
        index_bars = bars.pop(config.market_symbol)
        stored = import_model(
            args.file, scope=args.symbol, name=args.name, trusted=args.trust_pickle, bars=bars,
            index_bars=index_bars, config=config, registry=ModelRegistry(settings.home.models),
            now=datetime.now(UTC), source=source, activate=not args.no_activate,
        )  # fmt: skip
    except (ConfigError, CsvFormatError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TradingError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    figures = stored["walk_forward"]["model"]
    print(
        f"imported {args.file} as {stored['scope']}/{stored['name']} {stored['version']}"
        f"{'' if args.no_activate else ' (active)'}: walk-forward on {source}: accuracy "
        f"{figures['accuracy']:.3f}, ROC AUC {figures.get('roc_auc')}"
    )
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.ml_model.train", description=__doc__.split("\n")[0]
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return train(settings, args)


if __name__ == "__main__":
    sys.exit(main())
