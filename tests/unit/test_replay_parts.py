"""The replay's config, the generated market and the SYNTHETIC label on answers."""

from __future__ import annotations

import tomllib
from datetime import date
from pathlib import Path

import pytest

from services.backtest.replay import ReplayPlan, config_text
from services.base.config import TradingHome
from services.base.errors import ConfigError
from services.base.rpc.methods import MethodTable, rpc_method
from services.base.rpc.server import RpcServer
from services.market_data.csv_files import read_price_csv
from services.market_data.synthetic import write_synthetic_market


def plan(tmp_path: Path, **changes: object) -> ReplayPlan:
    fields: dict[str, object] = {"start": date(2019, 1, 1), "end": date(2019, 3, 31)}
    fields |= {"prices": tmp_path, "home": TradingHome(tmp_path / "h")}
    return ReplayPlan(**(fields | changes))  # type: ignore[arg-type]


def test_the_replay_config_is_valid_toml_with_overrides_merged(tmp_path: Path) -> None:
    read = tomllib.loads(config_text(plan(tmp_path, overrides={"paper_trading": {"buy_confidence": 0.35}})))
    assert read["market_data"]["source"] == "clocked_csv"
    assert read["paper_trading"] == {"symbols": ["CBA.AX", "WBC.AX", "ANZ.AX", "NAB.AX"],
                                     "check_interval_s": 86400.0, "buy_confidence": 0.35}  # fmt: skip
    assert read["sentiment"]["rss"] == {"enabled": False}
    assert "intraday_predictions" in read["scheduler"]["disable"]


def test_a_plan_names_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="before --from"):
        plan(tmp_path, end=date(2018, 1, 1)).check()
    with pytest.raises(ConfigError, match=r"no price file for CBA\.AX, .*\^AXJO"):
        plan(tmp_path).check()


def test_the_generated_market_is_deterministic_and_on_asx_sessions(tmp_path: Path) -> None:
    first = write_synthetic_market(tmp_path / "a", date(2024, 12, 20), date(2025, 1, 31), ["CBA.AX"])
    second = write_synthetic_market(tmp_path / "b", date(2024, 12, 20), date(2025, 1, 31), ["CBA.AX"])
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    bars = read_price_csv(tmp_path / "a" / "CBA.AX.csv")
    assert "2024-12-25" not in bars.index  # Christmas: no session
    assert "2025-01-27" not in bars.index  # Australia Day (observed)
    assert (bars["high"] >= bars[["open", "close"]].max(axis=1)).all()
    assert (bars["low"] <= bars[["open", "close"]].min(axis=1)).all()


class Methods:
    @rpc_method
    def one(self) -> dict[str, int]:
        return {"a": 1}

    @rpc_method
    def many(self) -> list[object]:
        return [{"a": 1}, 2]


async def test_a_labelled_server_marks_every_object_it_answers(tmp_path: Path) -> None:
    from services.base.rpc import RpcClient

    server = RpcServer(MethodTable.from_object(Methods()), tmp_path / "s.sock", label={"synthetic": True})
    await server.start()
    try:
        async with RpcClient(tmp_path / "s.sock") as client:
            assert await client.call("one") == {"a": 1, "synthetic": True}
            assert await client.call("many") == [{"a": 1, "synthetic": True}, 2]
    finally:
        await server.close(0)
