"""The arguments of a training run, shared by ``tradingctl train`` and ``python -m services.ml_model.train``.

Kept apart from ``train`` so that ``tradingctl`` builds its parser without importing scikit-learn.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from services.ml_model.config import MODEL_KINDS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prices", type=Path, metavar="DIR", help="read <SYMBOL>.csv files from DIR "
                        "instead of asking the market data service")  # fmt: skip
    parser.add_argument("--symbols", nargs="+", metavar="SYMBOL", help="default: ml_model.symbols")
    parser.add_argument("--models", nargs="+", choices=MODEL_KINDS, help="default: ml_model.models")
    parser.add_argument("--horizon", type=int, help="label horizon in trading days")
    parser.add_argument("--threshold", type=float, help="label threshold on the forward return")
    parser.add_argument("--folds", type=int, help="walk-forward test blocks")
    parser.add_argument("--no-pooled", action="store_true", help="skip the model over all symbols")
    parser.add_argument(
        "--no-activate", action="store_true", help="save the new versions but keep the active ones"
    )
    parser.add_argument("--report-dir", type=Path, help="default: TRADING_HOME/models/reports")
