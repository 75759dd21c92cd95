"""IG Markets through the real trading-ig client over a fake HTTP session with IG-shaped answers."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from requests.adapters import BaseAdapter

from services.base.config import TradingHome
from services.base.errors import DependencyUnavailable
from services.paper_trading.config import IgConfig
from services.paper_trading.ig import IgNotConfigured, compare_with_ig, connect, mirror_fill
from services.paper_trading.ledger import Account, Position

CREDENTIALS = {"IG_USERNAME": "demo-user", "IG_PASSWORD": "demo-password", "IG_API_KEY": "demo-key"}
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ig"
# Recorded-shape IG REST answers (demo account): login, accounts, positions, a deal confirmation.
SESSION, ACCOUNTS, POSITIONS, CONFIRM = (
    json.loads((FIXTURES / f"{name}.json").read_text())
    for name in ("session", "accounts", "positions", "confirm")
)


class FakeIg(BaseAdapter):
    """Answers the IG REST paths trading-ig asks for; records every request."""

    def __init__(self, login_status: int = 200) -> None:
        super().__init__()
        self.login_status = login_status
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        path = request.path_url.split("?")[0].removeprefix("/gateway/deal")
        body = json.loads(request.body) if request.body else None
        self.requests.append((request.method or "", path, dict(request.headers), body))
        status, payload, headers = 404, {"errorCode": "error.not-found"}, {}
        if path == "/session" and request.method == "POST":
            status = self.login_status
            payload = SESSION if status == 200 else {"errorCode": "error.security.invalid-details"}
            headers = {"CST": "cst-token", "X-SECURITY-TOKEN": "security-token"}
        elif path == "/accounts":
            status, payload = 200, ACCOUNTS
        elif path == "/positions":
            status, payload = 200, POSITIONS
        elif path == "/positions/otc" and request.method == "POST":
            status, payload = 200, {"dealReference": "REF9"}
        elif path == "/confirms/REF9":
            status, payload = 200, CONFIRM
        response = requests.Response()
        response.status_code = status
        response._content = json.dumps(payload).encode()
        response.headers.update({"Content-Type": "application/json", **headers})
        response.url = request.url or ""
        response.request = request
        return response

    def close(self) -> None:
        pass


def session_with(adapter: FakeIg) -> requests.Session:
    session = requests.Session()
    session.mount("https://", adapter)
    return session


@pytest.fixture
def home(tmp_path: Path) -> TradingHome:
    trading_home = TradingHome(tmp_path)
    trading_home.create()
    return trading_home


BOOK = (
    Account(10_000_000, 9_000_000, 0, 2_000, "2026-11-01T00:00:00Z"),
    {
        "CBA.AX": Position(
            "CBA.AX", 50, 500_000, 1_500, Decimal(100), Decimal(95), Decimal(110), "2026-11-19"
        ),
        "WBC.AX": Position(
            "WBC.AX", 20, 60_000, 1_060, Decimal(30), Decimal("28.5"), Decimal(33), "2026-11-19"
        ),
    },
)


def test_the_paper_book_is_compared_with_the_demo_account(home: TradingHome) -> None:
    fake = FakeIg()
    result = compare_with_ig(
        IgConfig(), home, BOOK, {"CBA.AX": Decimal("101")}, CREDENTIALS, session_with(fake)
    )
    assert result["account"]["balance"] == 20000.0
    assert result["account"]["available"] == 18538.3
    assert result["position_differences"] == [
        {"symbol": "WBC.AX", "paper_quantity": 20, "ig_size": 0.0, "difference": 20.0}
    ]
    assert result["unmapped_ig_positions"] == [{"epic": "AA.D.BHP.CASH.IP", "size": 5.0}]
    assert result["in_sync"] is False
    assert result["paper"]["positions_value"] == 101 * 50 + 30 * 20
    login = fake.requests[0]
    assert (login[0], login[1]) == ("POST", "/session")
    assert login[2]["X-IG-API-KEY"] == "demo-key"
    assert login[3] == {"identifier": "demo-user", "password": "demo-password"}
    # Later calls carry the session tokens IG gave at login.
    assert fake.requests[1][2]["CST"] == "cst-token"
    assert fake.requests[1][2]["X-SECURITY-TOKEN"] == "security-token"


def test_without_credentials_it_says_ig_is_not_configured(home: TradingHome) -> None:
    with pytest.raises(IgNotConfigured, match="IG not configured: set IG_USERNAME"):
        compare_with_ig(IgConfig(), home, BOOK, {}, {}, session_with(FakeIg()))


def test_a_refused_login_is_a_dependency_error(home: TradingHome) -> None:
    with pytest.raises(DependencyUnavailable, match="IG Markets refused or did not answer the login"):
        connect(IgConfig(), home, CREDENTIALS, session_with(FakeIg(login_status=401)))


def test_a_fill_is_mirrored_as_a_demo_market_order(home: TradingHome) -> None:
    fake = FakeIg()
    service = connect(IgConfig(), home, CREDENTIALS, session_with(fake))
    deal = mirror_fill(service, IgConfig(), "WBC.AX", "BUY", 20)
    assert deal["dealStatus"] == "ACCEPTED"
    order = next(r for r in fake.requests if r[1] == "/positions/otc")
    assert order[3]["epic"] == "AA.D.WBC.CASH.IP"
    assert order[3]["direction"] == "BUY"
    assert order[3]["size"] == 20
    assert order[3]["orderType"] == "MARKET"
    with pytest.raises(DependencyUnavailable, match=r"no IG epic configured for XYZ\.AX"):
        mirror_fill(service, IgConfig(), "XYZ.AX", "BUY", 1)
