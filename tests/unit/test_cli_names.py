"""tradingctl as a user meets it: service names as the design document spells them, and what start says."""

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


def test_start_says_which_services_run_degraded_and_why() -> None:
    from services.management.service_manager import start_summary

    ok = {"name": "market_data", "status": "ok", "report": {"checks": {"state": {"status": "ok"}}}}
    assert start_summary([ok]).startswith("all services healthy")
    degraded = {
        "name": "prediction",
        "status": "degraded",
        "report": {
            "checks": {
                "state": {"status": "ok", "detail": "running"},
                "calibration": {"status": "degraded", "detail": "uncalibrated: no BUY opens a position"},
            }
        },
    }
    summary = start_summary([ok, degraded])
    assert "all services healthy" not in summary
    assert "prediction degraded: calibration: uncalibrated: no BUY opens a position" in summary
    assert "market_data" not in summary
