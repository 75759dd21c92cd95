"""Durable events in the producer's own database, and applied-event ids in the consumer's.

The outbox makes "store, then publish" safe: a producer writes the event in the same SQLite
transaction as its own data (``Outbox.add``), and the bus's relay sends unsent rows to their
Redis stream when it can. Sent rows are kept for a retention period, because the embedded
Redis runs without persistence: if it restarts, the relay sends them again and consumers, which
record every applied id (``Inbox``), skip the ones they already have.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from services.base.clock import utc_iso
from services.base.db import transaction

if TYPE_CHECKING:
    from services.base.events import Event

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    stream TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at TEXT NOT NULL,
    sent_at TEXT
);
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (seq) WHERE sent_at IS NULL;
CREATE TABLE IF NOT EXISTS outbox_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

INBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS applied_events (
    event_id TEXT PRIMARY KEY,
    stream TEXT NOT NULL,
    applied_at TEXT NOT NULL
);
"""


class Outbox:
    """Rows of durable events; every method takes the connection so callers choose the transaction."""

    @staticmethod
    def create_tables(conn: sqlite3.Connection) -> None:
        with transaction(conn):
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)

    @staticmethod
    def add(conn: sqlite3.Connection, stream: str, event: Event) -> None:
        """Queue ``event`` for ``stream``; call inside the producer's own transaction."""
        conn.execute(
            "INSERT OR IGNORE INTO outbox (event_id, stream, payload, created_at) VALUES (?, ?, ?, ?)",
            (event.id, stream, event.encode(), event.ts),
        )

    @staticmethod
    def unsent(conn: sqlite3.Connection, limit: int = 500) -> list[tuple[int, str, bytes]]:
        rows = conn.execute(
            "SELECT seq, stream, payload FROM outbox WHERE sent_at IS NULL ORDER BY seq LIMIT ?", (limit,)
        ).fetchall()
        return [(int(seq), str(stream), bytes(payload)) for seq, stream, payload in rows]

    @staticmethod
    def mark_sent(conn: sqlite3.Connection, seqs: list[int], now: datetime) -> None:
        with transaction(conn):
            conn.executemany(
                "UPDATE outbox SET sent_at = ? WHERE seq = ?", [(utc_iso(now), seq) for seq in seqs]
            )

    @staticmethod
    def pending_count(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0])

    @staticmethod
    def resend_recent(conn: sqlite3.Connection, since: datetime) -> int:
        """Mark events sent since ``since`` as unsent again (Redis lost them); returns how many."""
        with transaction(conn):
            cursor = conn.execute(
                "UPDATE outbox SET sent_at = NULL WHERE sent_at IS NOT NULL AND created_at >= ?",
                (utc_iso(since),),
            )
        return cursor.rowcount

    @staticmethod
    def purge_sent(conn: sqlite3.Connection, before: datetime) -> int:
        with transaction(conn):
            cursor = conn.execute(
                "DELETE FROM outbox WHERE sent_at IS NOT NULL AND created_at < ?", (utc_iso(before),)
            )
        return cursor.rowcount

    @staticmethod
    def note_redis_run(conn: sqlite3.Connection, run_id: str) -> str | None:
        """Record the Redis server's run id; returns the previous one."""
        row = conn.execute("SELECT value FROM outbox_meta WHERE key = 'redis_run_id'").fetchone()
        with transaction(conn):
            conn.execute(
                "INSERT INTO outbox_meta (key, value) VALUES ('redis_run_id', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (run_id,),
            )
        return None if row is None else str(row[0])


class Inbox:
    """Ids of stream events a consumer has applied, written in the consumer's own transaction."""

    @staticmethod
    def create_tables(conn: sqlite3.Connection) -> None:
        conn.execute(INBOX_SCHEMA)

    @staticmethod
    def seen(conn: sqlite3.Connection, event_id: str) -> bool:
        return (
            conn.execute("SELECT 1 FROM applied_events WHERE event_id = ?", (event_id,)).fetchone()
            is not None
        )

    @staticmethod
    def record(conn: sqlite3.Connection, stream: str, event_id: str, now: datetime) -> None:
        conn.execute(
            "INSERT INTO applied_events (event_id, stream, applied_at) VALUES (?, ?, ?)",
            (event_id, stream, utc_iso(now)),
        )

    @staticmethod
    def forget_before(conn: sqlite3.Connection, before: datetime) -> int:
        with transaction(conn):
            cursor = conn.execute("DELETE FROM applied_events WHERE applied_at < ?", (utc_iso(before),))
        return cursor.rowcount


def retention_cutoff(now: datetime, days: float) -> datetime:
    return now - timedelta(days=days)
