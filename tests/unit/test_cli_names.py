"""tradingctl takes services as the design document names them: market-data is market_data."""

from __future__ import annotations

import pytest

from services.management.service_manager import build_parser


@pytest.mark.parametrize(
    ("argv", "field", "expected"),
    [
        (["restart", "market-data"], "service", "market_data"),
        (["logs", "paper-trading"], "service", "paper_trading"),
        (["health", "ml-model"], "service", "ml_model"),
        (["call", "market-data", "health"], "service", "market_data"),
        (["start", "market-data", "prediction"], "services", ["market_data", "prediction"]),
        (["stop", "paper-trading"], "services", ["paper_trading"]),
        (["restart", "market_data"], "service", "market_data"),
    ],
)
def test_hyphenated_service_names_are_the_services_names(
    argv: list[str], field: str, expected: object
) -> None:
    assert getattr(build_parser().parse_args(argv), field) == expected
