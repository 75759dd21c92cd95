"""The ``[paper_trading]`` config section: the account, the trading rules, execution and IG Markets.

Money settings are in dollars here and kept in integer cents in the ledger. IG credentials are
secrets: ``IG_USERNAME``, ``IG_PASSWORD`` and ``IG_API_KEY`` in the environment, or ``ig_username``,
``ig_password`` and ``ig_api_key`` in ``$TRADING_HOME/secrets.toml`` (mode 0600).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from services.base.config import register_section

BIG4 = ("CBA.AX", "WBC.AX", "ANZ.AX", "NAB.AX")


@dataclass(frozen=True, slots=True, kw_only=True)
class IgConfig:
    account_type: Literal["DEMO", "LIVE"] = "DEMO"
    account_id: str = ""
    # Place every paper fill as a demo order too.
    mirror_orders: bool = False
    # Paper symbol -> IG epic, for comparing positions and mirroring orders.
    epics: dict[str, str] = field(
        default_factory=lambda: {
            "CBA.AX": "AA.D.CBA.CASH.IP",
            "WBC.AX": "AA.D.WBC.CASH.IP",
            "ANZ.AX": "AA.D.ANZ.CASH.IP",
            "NAB.AX": "AA.D.NAB.CASH.IP",
        }
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class PaperTradingConfig:
    symbols: tuple[str, ...] = BIG4
    starting_capital: float = 100_000.0
    position_size: float = 0.05  # of portfolio value
    max_position_value: float = 10_000.0
    max_exposure: float = 0.80  # positions' market value over equity
    max_daily_loss: float = 5_000.0
    commission_fixed: float = 10.0
    commission_rate: float = 0.001  # of trade value
    # Exits and the BUY bar as `tradingctl tune` chose them on the shared 2010-2022 prices.
    stop_loss: float = 0.10
    take_profit: float = 0.20
    slippage_bps: float = 5.0
    # A BUY signal opens a position only if its calibrated probability of being right is at least
    # buy_confidence, with at least min_cases past cases behind it; an uncalibrated one never does.
    buy_confidence: float = 0.61
    min_cases: int = 200
    # Outside market hours an order waits for the next session's first price, or expires.
    after_hours: Literal["wait", "expire"] = "wait"
    check_interval_s: float = 60.0
    price_timeout_s: float = 10.0
    ig: IgConfig = field(default_factory=IgConfig)

    def __post_init__(self) -> None:
        if self.starting_capital <= 0 or self.max_position_value <= 0 or self.max_daily_loss <= 0:
            raise ValueError("starting_capital, max_position_value and max_daily_loss must be > 0")
        for name in ("position_size", "max_exposure", "stop_loss", "take_profit", "buy_confidence"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1]")
        if (
            self.commission_fixed < 0
            or not 0 <= self.commission_rate < 0.1
            or not 0 <= self.slippage_bps < 1000
        ):
            raise ValueError("commission_fixed >= 0, commission_rate in [0, 0.1), slippage_bps in [0, 1000)")
        if self.ig.mirror_orders and self.ig.account_type != "DEMO":
            raise ValueError("ig.mirror_orders places orders: it is allowed on a DEMO account only")
        if self.min_cases < 0:
            raise ValueError("min_cases must be >= 0")
        if not self.symbols or self.check_interval_s <= 0:
            raise ValueError("symbols must name one symbol at least; check_interval_s > 0")


register_section("paper_trading", PaperTradingConfig)
