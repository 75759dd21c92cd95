"""IG Markets through the trading-ig library: compare the paper book with a demo account, and
mirror paper fills as demo orders.

The real ``IGService`` is used; only its HTTP session can be replaced (tests pass a
``requests.Session`` whose adapter answers with recorded IG responses). Credentials come from
``IG_USERNAME``, ``IG_PASSWORD``, ``IG_API_KEY`` or ``secrets.toml``; without them every call is
``IgNotConfigured``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import requests
from trading_ig import IGService

from services.base.config import TradingHome, load_secret
from services.base.errors import DependencyUnavailable
from services.base.logs import RootLogRedaction
from services.paper_trading.config import IgConfig
from services.paper_trading.ledger import Account, Position, dollars

log = logging.getLogger("services.paper_trading.ig")

CREDENTIALS = (("ig_username", "IG_USERNAME"), ("ig_password", "IG_PASSWORD"), ("ig_api_key", "IG_API_KEY"))


class IgNotConfigured(Exception):
    pass


def connect(
    config: IgConfig,
    home: TradingHome,
    env: Mapping[str, str] | None = None,
    session: requests.Session | None = None,
) -> IGService:
    """A logged-in IGService, or IgNotConfigured / DependencyUnavailable with the reason."""
    values = {}
    for name, variable in CREDENTIALS:
        secret = load_secret(name, env_var=variable, home=home, env=env, redact=RootLogRedaction())
        if secret is None:
            raise IgNotConfigured(
                f"IG not configured: set {', '.join(v for _n, v in CREDENTIALS)} "
                f"(or {', '.join(n for n, _v in CREDENTIALS)} in secrets.toml)"
            )
        values[name] = secret.reveal()
    service = IGService(
        values["ig_username"], values["ig_password"], values["ig_api_key"],
        acc_type=config.account_type, acc_number=config.account_id or None,
        session=session, return_dataframe=False,
    )  # fmt: skip
    try:
        service.create_session()
    except Exception as exc:  # trading-ig raises IGException, requests errors, KeyError on odd bodies
        raise DependencyUnavailable(f"IG Markets refused or did not answer the login: {_brief(exc)}",
                                    service="ig_markets") from None  # fmt: skip
    return service


def compare_with_ig(
    config: IgConfig,
    home: TradingHome,
    book: tuple[Account, dict[str, Position]],
    marks: Mapping[str, Decimal],
    env: Mapping[str, str] | None = None,
    session: requests.Session | None = None,
) -> dict[str, Any]:
    """The IG demo account's balance and positions next to the paper book, and their differences."""
    service = connect(config, home, env, session)
    try:
        accounts = service.fetch_accounts()["accounts"]
        positions = service.fetch_open_positions()["positions"]
    except Exception as exc:
        raise DependencyUnavailable(f"IG Markets: {_brief(exc)}", service="ig_markets") from None
    account = next((a for a in accounts if a.get("accountId") == config.account_id), None) or next(
        (a for a in accounts if a.get("preferred")), accounts[0] if accounts else None
    )
    paper_account, paper_positions = book
    by_epic = {epic: symbol for symbol, epic in config.epics.items()}
    ig_sizes: dict[str, float] = {}
    unmapped = []
    for entry in positions:
        epic = entry["market"]["epic"]
        size = float(entry["position"]["size"]) * (1 if entry["position"]["direction"] == "BUY" else -1)
        symbol = by_epic.get(epic)
        if symbol is None:
            unmapped.append({"epic": epic, "size": size})
            continue
        ig_sizes[symbol] = ig_sizes.get(symbol, 0.0) + size
    differences = []
    for symbol in sorted(set(ig_sizes) | set(paper_positions)):
        paper = paper_positions[symbol].quantity if symbol in paper_positions else 0
        ig = ig_sizes.get(symbol, 0.0)
        if paper != ig:
            differences.append(
                {"symbol": symbol, "paper_quantity": paper, "ig_size": ig, "difference": paper - ig}
            )
    balance = (account or {}).get("balance") or {}
    paper_value = sum(float(marks.get(s, p.entry_price)) * p.quantity for s, p in paper_positions.items())
    return {
        "account": {"id": (account or {}).get("accountId"), "type": config.account_type,
                    "balance": balance.get("balance"), "available": balance.get("available"),
                    "profit_loss": balance.get("profitLoss"), "currency": (account or {}).get("currency")},
        "ig_positions": [{"epic": p["market"]["epic"], "direction": p["position"]["direction"],
                          "size": float(p["position"]["size"]), "level": p["position"].get("level")}
                         for p in positions],
        "paper": {"cash": dollars(paper_account.cash_cents), "positions_value": round(paper_value, 2),
                  "positions": {s: p.quantity for s, p in paper_positions.items()}},
        "position_differences": differences,
        "unmapped_ig_positions": unmapped,
        "in_sync": not differences and not unmapped,
    }  # fmt: skip


def mirror_fill(
    service: IGService, config: IgConfig, symbol: str, side: str, quantity: int
) -> dict[str, Any]:
    """Place a paper fill on the demo account as a market order; the deal confirmation."""
    epic = config.epics.get(symbol)
    if epic is None:
        raise DependencyUnavailable(f"no IG epic configured for {symbol} (paper_trading.ig.epics)",
                                    service="ig_markets")  # fmt: skip
    try:
        return dict(service.create_open_position(
            currency_code="AUD", direction=side, epic=epic, expiry="-", force_open=side == "BUY",
            guaranteed_stop=False, level=None, limit_distance=None, limit_level=None, order_type="MARKET",
            quote_id=None, size=quantity, stop_distance=None, stop_level=None, trailing_stop=False,
            trailing_stop_increment=None,
        ))  # fmt: skip
    except Exception as exc:
        raise DependencyUnavailable(f"IG Markets did not take the order: {_brief(exc)}",
                                    service="ig_markets") from None  # fmt: skip


def _brief(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:300]}"
