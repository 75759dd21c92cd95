"""Recorded MarketAux and RSS answers behind httpx transports, for the sentiment tests.

The real clients run unchanged; only the transport under them answers from the files in
``tests/fixtures/sentiment`` (shaped like MarketAux's documented responses and a real feed).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import orjson

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "sentiment"
TOKEN = "mx-test-token-5f2c9a71"
FEED_URL = "https://feeds.example.com/business.xml"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def error_body(status: int) -> dict[str, Any]:
    errors: dict[str, Any] = orjson.loads(fixture("marketaux_errors.json"))
    return dict(errors[str(status)])


class FakeMarketAux:
    """Answers ``/v1/news/all`` per symbol from fixtures; ``script`` queues other answers first."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        self.by_symbol = {
            "CBA.AX": fixture("marketaux_cba.json"),
            "NAB.AX": fixture("marketaux_nab.json"),
        }
        self.script: list[httpx.Response | Exception] = []
        self.headers: dict[str, str] = {}

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._answer)

    def fail_next(self, status: int, times: int = 1, headers: dict[str, str] | None = None) -> None:
        for _ in range(times):
            self.script.append(httpx.Response(status, json=error_body(status), headers=headers))

    def _answer(self, request: httpx.Request) -> httpx.Response:
        query = {key: values[-1] for key, values in parse_qs(request.url.query.decode()).items()}
        self.requests.append(query)
        if self.script:
            answer = self.script.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer
        if request.url.path != "/v1/news/all":
            return httpx.Response(
                404, json={"error": {"code": "invalid_api_endpoint", "message": "no route"}}
            )
        if query.get("api_token") != TOKEN:
            return httpx.Response(401, json=error_body(401))
        if "symbols" in query:
            body = self.by_symbol.get(query["symbols"], fixture("marketaux_empty.json"))
        else:
            body = fixture("marketaux_market.json")
        return httpx.Response(200, content=body, headers={"Content-Type": "application/json", **self.headers})


class FakeFeeds:
    """Serves RSS documents by URL, with ETag support; ``answers`` overrides one URL's answer."""

    def __init__(self, feeds: dict[str, bytes] | None = None) -> None:
        self.feeds = feeds if feeds is not None else {FEED_URL: fixture("business_feed.xml")}
        self.requests: list[httpx.Request] = []
        self.answers: dict[str, Callable[[httpx.Request], httpx.Response]] = {}

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._answer)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        url = str(request.url)
        if url in self.answers:
            return self.answers[url](request)
        body = self.feeds.get(url)
        if body is None:
            return httpx.Response(404, text="not found")
        etag = f'"{hash(body) & 0xFFFFFFFF:x}"'
        if request.headers.get("If-None-Match") == etag:
            return httpx.Response(304)
        return httpx.Response(
            200, content=body, headers={"ETag": etag, "Content-Type": "application/rss+xml"}
        )
