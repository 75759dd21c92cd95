"""Articles, mentions, API usage and last results in SQLite; every write is one transaction.

An article is stored once: a second copy (the same URL without tracking parameters, or a title
near-identical to one published within three days) adds only the mentions the first lacked.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson

from services.base.clock import utc_iso
from services.base.db import Database, fetch_all, transaction
from services.sentiment.articles import Article, same_story, title_key, url_key

# Near-duplicate titles are looked for among articles published this close to the new one.
DUPLICATE_WINDOW = timedelta(days=3)


@dataclass(frozen=True, slots=True)
class ScoredArticle:
    article: Article
    text_score: float
    matches: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SaveResult:
    new: int
    duplicates: int
    mentions_added: int
    newest: datetime | None  # the latest publication time among the new articles


@dataclass(frozen=True, slots=True)
class MentionRow:
    """One article's mention of a symbol (or the market), with what aggregation needs."""

    article_id: int
    symbol: str
    relevance: float
    provider_score: float | None
    text_score: float
    title: str
    url: str
    source: str
    provider: str
    published_at: datetime


_MENTION_COLUMNS = """
    a.id, m.symbol, m.relevance, m.provider_score, a.text_score, a.title, a.url, a.source,
    m.provider, a.published_at
"""


class NewsStore:
    def __init__(self, db: Database, *, title_similarity: float, market_symbol: str = "^AXJO") -> None:
        self.db = db
        self.title_similarity = title_similarity
        self.market_symbol = market_symbol

    # -- articles ---------------------------------------------------------------------------

    async def save(self, items: Sequence[ScoredArticle], now: datetime) -> SaveResult:
        return await self.db.run(lambda conn: self._save(conn, items, utc_iso(now)))

    def _save(self, conn: sqlite3.Connection, items: Sequence[ScoredArticle], fetched_at: str) -> SaveResult:
        new = duplicates = added = 0
        newest: datetime | None = None
        with transaction(conn):
            for item in items:
                article = item.article
                existing = self._find_copy(conn, article)
                known: set[str] = set()
                if existing is None:
                    article_id = _insert_article(conn, item, fetched_at)
                    new += 1
                    if newest is None or article.published_at > newest:
                        newest = article.published_at
                else:
                    article_id = existing
                    duplicates += 1
                    rows = conn.execute("SELECT symbol FROM mentions WHERE article_id = ?", (article_id,))
                    known = {symbol for (symbol,) in rows}
                for mention in article.mentions:
                    highlights = [
                        {"text": h.text, "sentiment": h.sentiment, "where": h.where}
                        for h in mention.highlights
                    ]
                    conn.execute(
                        """
                        INSERT INTO mentions
                            (symbol, article_id, relevance, provider_score, highlights, provider)
                        VALUES (?, ?, ?, ?, ?, ?)
                        ON CONFLICT (symbol, article_id) DO UPDATE SET
                            relevance = max(relevance, excluded.relevance),
                            provider_score = coalesce(provider_score, excluded.provider_score),
                            highlights = CASE WHEN highlights = '[]'
                                THEN excluded.highlights ELSE highlights END
                        """,
                        (
                            mention.symbol,
                            article_id,
                            mention.relevance,
                            mention.provider_score,
                            orjson.dumps(highlights).decode(),
                            article.provider,
                        ),
                    )
                    if existing is not None and mention.symbol not in known:
                        added += 1
                        known.add(mention.symbol)
        return SaveResult(new, duplicates, added, newest)

    def _find_copy(self, conn: sqlite3.Connection, article: Article) -> int | None:
        row = conn.execute("SELECT id FROM articles WHERE url_key = ?", (url_key(article.url),)).fetchone()
        if row is not None:
            return int(row[0])
        key = title_key(article.title)
        candidates = conn.execute(
            "SELECT id, title_key FROM articles WHERE published_at BETWEEN ? AND ?",
            (
                utc_iso(article.published_at - DUPLICATE_WINDOW),
                utc_iso(article.published_at + DUPLICATE_WINDOW),
            ),
        )
        symbols = [m.symbol for m in article.mentions if m.symbol != self.market_symbol]
        marks = ",".join("?" * len(symbols))
        for article_id, other in candidates.fetchall():
            if not same_story(key, other, self.title_similarity):
                continue
            # "ANZ shares gain after upgrade" and "NAB shares gain after upgrade" are two stories: a
            # similar title about companies is a copy only when it shares one of them.
            if (
                not symbols
                or conn.execute(
                    f"SELECT 1 FROM mentions WHERE article_id = ? AND symbol IN ({marks})",
                    (article_id, *symbols),
                ).fetchone()
            ):
                return int(article_id)
        return None

    async def mentions_since(self, scopes: Sequence[str], since: datetime) -> list[MentionRow]:
        marks = ",".join("?" * len(scopes))
        rows = await self.db.run(
            lambda conn: fetch_all(
                conn,
                f"""
                SELECT {_MENTION_COLUMNS} FROM mentions m JOIN articles a ON a.id = m.article_id
                WHERE m.symbol IN ({marks}) AND a.published_at >= ?
                """,
                (*scopes, utc_iso(since)),
            )
        )
        return [_mention_row(row) for row in rows]

    async def news(self, symbol: str, limit: int) -> list[dict[str, Any]]:
        rows = await self.db.run(
            lambda conn: fetch_all(
                conn,
                """
                SELECT a.title, a.url, a.source, a.provider, a.published_at, a.fetched_at, a.summary,
                       a.text_score, a.matches, m.relevance, m.provider_score, m.highlights
                FROM mentions m JOIN articles a ON a.id = m.article_id
                WHERE m.symbol = ? ORDER BY a.published_at DESC, a.id DESC LIMIT ?
                """,
                (symbol, limit),
            )
        )
        keys = [
            *("title", "url", "source", "provider", "published_at", "fetched_at", "summary"),
            *("text_score", "matches", "relevance", "provider_score", "highlights"),
        ]
        news = [dict(zip(keys, row, strict=True)) for row in rows]
        for item in news:
            item["matches"] = orjson.loads(item["matches"])
            item["highlights"] = orjson.loads(item["highlights"])
        return news

    async def newest_published(self, provider: str, symbol: str) -> datetime | None:
        row = await self.db.run(
            lambda conn: conn.execute(
                """
                SELECT max(a.published_at) FROM mentions m JOIN articles a ON a.id = m.article_id
                WHERE m.symbol = ? AND m.provider = ?
                """,
                (symbol, provider),
            ).fetchone()
        )
        return datetime.fromisoformat(row[0]) if row and row[0] else None

    async def summary(self) -> tuple[int, datetime | None]:
        """How many articles are stored, and when the newest was published."""
        count, newest = await self.db.run(
            lambda conn: conn.execute("SELECT count(*), max(published_at) FROM articles").fetchone()
        )
        return int(count), datetime.fromisoformat(newest) if newest else None

    async def prune(self, before: datetime) -> int:
        """Delete articles published before ``before`` with their mentions; how many went."""

        def work(conn: sqlite3.Connection) -> int:
            with transaction(conn):
                stamp = utc_iso(before)
                old = "SELECT id FROM articles WHERE published_at < ?"
                conn.execute(f"DELETE FROM mentions WHERE article_id IN ({old})", (stamp,))
                return conn.execute("DELETE FROM articles WHERE published_at < ?", (stamp,)).rowcount

        return await self.db.run(work)

    # -- API usage (services.sentiment.marketaux.UsageLedger) -------------------------------

    async def usage(self, provider: str, day: str) -> tuple[int, bool]:
        row = await self.db.run(
            lambda conn: conn.execute(
                "SELECT calls, exhausted FROM api_usage WHERE provider = ? AND day = ?", (provider, day)
            ).fetchone()
        )
        return (int(row[0]), bool(row[1])) if row else (0, False)

    async def record_usage(self, provider: str, day: str, calls: int, exhausted: bool) -> None:
        def work(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute(
                    """
                    INSERT INTO api_usage (provider, day, calls, exhausted) VALUES (?, ?, ?, ?)
                    ON CONFLICT (provider, day) DO UPDATE SET
                        calls = max(calls, excluded.calls), exhausted = max(exhausted, excluded.exhausted)
                    """,
                    (provider, day, calls, int(exhausted)),
                )
                conn.execute(
                    "DELETE FROM api_usage WHERE provider = ? AND day < date(?, '-30 days')", (provider, day)
                )

        await self.db.run(work)

    async def set_usage(self, provider: str, day: str, calls: int, exhausted: bool) -> None:
        """Overwrite the day's count (a request that never left is given back)."""

        def work(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute(
                    "INSERT OR REPLACE INTO api_usage (provider, day, calls, exhausted) VALUES (?, ?, ?, ?)",
                    (provider, day, calls, int(exhausted)),
                )

        await self.db.run(work)

    # -- last results -----------------------------------------------------------------------

    async def save_result(self, scope: str, computed_at: datetime, payload: dict[str, Any]) -> None:
        def work(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute(
                    "INSERT OR REPLACE INTO results (scope, computed_at, payload) VALUES (?, ?, ?)",
                    (scope, utc_iso(computed_at), orjson.dumps(payload).decode()),
                )

        await self.db.run(work)

    async def load_results(self) -> dict[str, tuple[datetime, dict[str, Any]]]:
        rows = await self.db.run(
            lambda conn: fetch_all(conn, "SELECT scope, computed_at, payload FROM results")
        )
        return {scope: (datetime.fromisoformat(at), orjson.loads(payload)) for scope, at, payload in rows}


def _insert_article(conn: sqlite3.Connection, item: ScoredArticle, fetched_at: str) -> int:
    article = item.article
    cursor = conn.execute(
        """
        INSERT INTO articles (url, url_key, title, title_key, summary, source, provider, published_at,
                              fetched_at, text_score, matches)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
        """,
        (
            article.url,
            url_key(article.url),
            article.title,
            title_key(article.title),
            article.summary,
            article.source,
            article.provider,
            utc_iso(article.published_at),
            fetched_at,
            item.text_score,
            orjson.dumps(list(item.matches)).decode(),
        ),
    )
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def _mention_row(row: tuple[Any, ...]) -> MentionRow:
    return MentionRow(
        article_id=int(row[0]),
        symbol=row[1],
        relevance=float(row[2]),
        provider_score=None if row[3] is None else float(row[3]),
        text_score=float(row[4]),
        title=row[5],
        url=row[6],
        source=row[7],
        provider=row[8],
        published_at=datetime.fromisoformat(row[9]),
    )
