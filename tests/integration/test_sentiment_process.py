"""The sentiment service as a real process: real httpx against a local HTTP server that answers
like MarketAux and a news feed, real Redis; killed and restarted, it keeps its quota count."""

from __future__ import annotations

import email.utils
import re
import signal
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from services.base.config import TradingHome
from services.base.redis_server import EmbeddedRedis
from services.base.rpc.client import RpcClient
from tests.conftest import ServiceProcess
from tests.sentiment_fakes import TOKEN, fixture

# The fixtures' "now"; the server moves every date so that this instant is the real now.
FIXTURE_NOW = datetime(2026, 11, 20, tzinfo=UTC)


def shifted_json(name: str, shift: timedelta) -> bytes:
    body = orjson.loads(fixture(name))
    for article in body["data"]:
        published = datetime.fromisoformat(article["published_at"]) + shift
        article["published_at"] = published.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return orjson.dumps(body)


def shifted_feed(shift: timedelta) -> bytes:
    def move(match: re.Match[str]) -> str:
        when = email.utils.parsedate_to_datetime(match.group(1)) + shift
        return f"<pubDate>{email.utils.format_datetime(when)}</pubDate>"

    return re.sub(r"<pubDate>(.*?)</pubDate>", move, fixture("business_feed.xml").decode()).encode()


class NewsServer:
    """``/v1/news/all`` like MarketAux (token checked) and ``/feed.xml`` like a news site."""

    def __init__(self) -> None:
        shift = datetime.now(UTC) - FIXTURE_NOW
        answers = {
            "CBA.AX": shifted_json("marketaux_cba.json", shift),
            "NAB.AX": shifted_json("marketaux_nab.json", shift),
        }
        empty = fixture("marketaux_empty.json")
        feed = shifted_feed(shift)
        self.queries: list[dict[str, list[str]]] = []
        queries = self.queries

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path == "/feed.xml":
                    self._send(200, feed, "application/rss+xml")
                    return
                query = parse_qs(url.query)
                queries.append(query)
                if query.get("api_token") != [TOKEN]:
                    self._send(401, orjson.dumps({"error": {"code": "invalid_api_token", "message": "bad"}}))
                    return
                symbol = query.get("symbols", [""])[0]
                self._send(200, answers.get(symbol, empty))

            def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def news_server() -> Iterator[NewsServer]:
    server = NewsServer()
    yield server
    server.close()


def start(home: TradingHome, redis: EmbeddedRedis, news: NewsServer) -> ServiceProcess:
    config = f'[sentiment.marketaux]\nbase_url = "{news.url}/v1"\n'
    config += f'[sentiment.rss]\nfeeds = ["{news.url}/feed.xml"]\n'
    home.config_file.write_text(config)
    service = ServiceProcess(
        home,
        name="sentiment",
        module="services.sentiment",
        REDIS_URL=redis.url,
        MARKETAUX_API_TOKEN=TOKEN,
    )
    service.wait_ready()
    return service


async def test_real_process_fetches_scores_and_keeps_its_quota_across_a_kill(
    home: TradingHome, redis: EmbeddedRedis, news_server: NewsServer
) -> None:
    service = start(home, redis, news_server)
    try:
        async with RpcClient(service.socket, timeout=20) as client:
            cba = await client.call("analyze_sentiment", {"symbol": "CBA.AX"})
            assert cba["source"] == "marketaux+rss"
            assert cba["article_count"] == 3
            assert cba["label"] == "positive"
            health = await client.call("health")
            assert health["status"] == "ok"
            assert health["sources"]["marketaux"]["calls_today"] == 1
        service.process.send_signal(signal.SIGKILL)
        service.process.wait(10)
        service.socket.unlink(missing_ok=True)

        service = start(home, redis, news_server)
        async with RpcClient(service.socket, timeout=20) as client:
            health = await client.call("health")
            assert health["sources"]["marketaux"]["calls_today"] == 1
            assert health["articles_stored"] == 5  # 3 from MarketAux, 2 more from the feed
            nab = await client.call("analyze_sentiment", {"symbol": "NAB.AX"})
            assert nab["article_count"] == 2
            assert (await client.call("health"))["sources"]["marketaux"]["calls_today"] == 2
    finally:
        service.stop()
    assert len(news_server.queries) == 2
    # The token went to MarketAux and nowhere else: not into the logs.
    logs = "".join(path.read_text(errors="replace") for path in home.logs.iterdir() if path.is_file())
    assert "sentiment" in logs
    assert TOKEN not in logs
