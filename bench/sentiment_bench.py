"""The sentiment service's costs against baselines measured in the same run.

    .venv/bin/python bench/sentiment_bench.py [--articles 500] [--calls 1000]

1. Scoring throughput: our scorer versus plain VADER on the same sentences (the labelled
   phrasebank in ../shared/data when present, else a built-in set of financial sentences).
2. ``score_text`` over the service's Unix socket, one call at a time, versus calling the scorer
   directly on the same text.
3. ``analyze_sentiment`` recomputed on every call (``cache_ttl_s = 0``; the sources count as
   recently asked, so no request leaves the process) over ``--articles`` stored articles, versus
   ``summarize`` on the same rows held in memory; and the cached answer.

The stored articles are generated benchmark input (titles "benchmark article N"), never served
as news: the service runs in a temporary TRADING_HOME that is deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from services.base.clock import SimulatedClock
from services.base.config import TradingHome, load_settings
from services.base.redis_server import EmbeddedRedis
from services.base.rpc import RpcClient
from services.sentiment.aggregate import summarize
from services.sentiment.articles import Article, Mention
from services.sentiment.scoring import SentimentScorer
from services.sentiment.sentiment_service import SentimentService
from services.sentiment.store import ScoredArticle

PHRASEBANK = Path(__file__).resolve().parents[2] / "shared" / "data" / "sentiment" / "phrasebank_dev.txt"
NOW = datetime(2026, 11, 20, tzinfo=UTC)
SENTENCES = [
    "Westpac cuts its dividend as bad debts climb",
    "CBA posts a record cash profit, beating expectations",
    "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn",
    "Net sales decreased by 5 % to EUR 20 mn",
    "The company will hold its annual general meeting on 3 May",
    "NAB flags a $300m remediation charge",
    "ANZ upgraded to outperform by analysts",
    "The loss narrowed to EUR 1.2 mn from EUR 3.4 mn",
]


def sentences() -> tuple[list[str], str]:
    if PHRASEBANK.is_file():
        lines = PHRASEBANK.read_bytes().decode("latin-1").splitlines()
        return [line.rsplit("@", 1)[0] for line in lines if "@" in line], "phrasebank_dev"
    return SENTENCES * 300, "built-in sentences x300"


def per_second(work: Callable[[str], object], texts: list[str]) -> float:
    start = time.perf_counter()
    for text in texts:
        work(text)
    return len(texts) / (time.perf_counter() - start)


async def per_call(call: Callable[[], Awaitable[object]], calls: int) -> float:
    """Median seconds per call over three rounds."""
    rounds = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(calls):
            await call()
        rounds.append((time.perf_counter() - start) / calls)
    return statistics.median(rounds)


async def main(articles: int, calls: int) -> None:
    scorer = SentimentScorer()
    vader = SentimentIntensityAnalyzer()
    texts, where = sentences()
    ours_rate = per_second(scorer.score, texts)
    vader_rate = per_second(vader.polarity_scores, texts)
    print(f"scoring {len(texts)} sentences ({where})")
    print(f"  ours        {ours_rate:10,.0f} sentences/s")
    print(f"  plain VADER {vader_rate:10,.0f} sentences/s")
    print(f"  ratio (VADER rate / ours)   {vader_rate / ours_rate:.2f}x")

    root = Path(tempfile.mkdtemp(prefix="sb-", dir="/tmp"))
    redis = EmbeddedRedis(TradingHome(root))
    try:
        home = TradingHome(root)
        home.create()
        redis.start()
        home.config_file.write_text("[sentiment]\ncache_ttl_s = 0\n[sentiment.rss]\nenabled = false\n")
        clock = SimulatedClock(NOW)
        token = {"MARKETAUX_API_TOKEN": "bench"}
        service = SentimentService(load_settings(home, env={"REDIS_URL": redis.url}), clock=clock, env=token)
        await service.start()
        try:
            await fill(service, articles)
            # MarketAux counts as asked a moment ago: no request leaves the process.
            service._marketaux_answered["CBA.AX"] = NOW
            async with RpcClient(home.socket_path("sentiment"), timeout=30) as client:
                text = SENTENCES[1]
                rpc_score = await per_call(lambda: client.call("score_text", {"text": text}), calls)
                direct_score = await per_call(_sync(lambda: scorer.score(text)), calls)
                print(f"\nscore_text, {calls} calls x 3 rounds (median)")
                print(f"  over RPC  {rpc_score * 1e6:8.1f} us/call")
                print(f"  direct    {direct_score * 1e6:8.1f} us/call")
                print(f"  ratio     {rpc_score / direct_score:.1f}x")

                analyze = {"symbol": "CBA.AX"}
                first = await client.call("analyze_sentiment", analyze)
                assert first["article_count"] == articles, first
                uncached = await per_call(
                    lambda: client.call("analyze_sentiment", analyze), max(20, calls // 10)
                )
                rows = await service.store.mentions_since(["CBA.AX"], NOW - timedelta(days=7))
                direct = await per_call(
                    _sync(lambda: summarize(rows, NOW, service.weighting, scorer.label_for)),
                    max(20, calls // 10),
                )
                print(f"\nanalyze_sentiment over {articles} stored articles")
                print(f"  recomputed over RPC (read + aggregate)  {uncached * 1e3:8.2f} ms/call")
                print(f"  summarize() on rows in memory           {direct * 1e3:8.2f} ms/call")
                print(f"  ratio                                   {uncached / direct:.1f}x")
        finally:
            await service.stop()
        home.config_file.write_text("[sentiment.rss]\nenabled = false\n")
        service = SentimentService(load_settings(home, env={"REDIS_URL": redis.url}), clock=clock, env=token)
        await service.start()
        service._marketaux_answered["CBA.AX"] = NOW
        try:
            async with RpcClient(home.socket_path("sentiment"), timeout=30) as client:
                await client.call("analyze_sentiment", {"symbol": "CBA.AX"})
                cached = await per_call(lambda: client.call("analyze_sentiment", {"symbol": "CBA.AX"}), calls)
                health = await per_call(lambda: client.call("health"), calls)
                print(f"  cached answer over RPC                  {cached * 1e3:8.2f} ms/call")
                print(f"  health over RPC (baseline)              {health * 1e3:8.2f} ms/call")
                print(f"  ratio cached / health                   {cached / health:.1f}x")
        finally:
            await service.stop()
    finally:
        redis.stop()
        shutil.rmtree(root, ignore_errors=True)


VOCABULARY = """
bank profit rose fell margin dividend lending arrears deposit record loss upgrade downgrade mortgage
capital charge growth costs shares investors guidance outlook rates housing business quarter result
impairment provisions strong weak steady higher lower
"""
WORDS = VOCABULARY.split()


async def fill(service: SentimentService, count: int) -> None:
    rng = random.Random(7)
    items = []
    for n in range(count):
        # Distinct random titles: near-identical ones would be stored once.
        words = " ".join(rng.choice(WORDS) for _ in range(10))
        article = Article(
            url=f"https://bench.example/{n}",
            title=f"benchmark article {n}: {words}",
            summary="",
            source="bench.example",
            provider="marketaux",
            published_at=NOW - timedelta(minutes=10 * n % (6 * 24 * 60)),
            mentions=(Mention("CBA.AX", 0.5 + (n % 5) / 10, ((n % 7) - 3) / 4),),
        )
        scored = service.scorer.score(article.text)
        items.append(ScoredArticle(article, scored.score, scored.matches))
    await service.store.save(items, NOW)


def _sync(work: Callable[[], object]) -> Callable[[], Awaitable[object]]:
    async def call() -> object:
        return work()

    return call


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--articles", type=int, default=500)
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(main(args.articles, args.calls))
