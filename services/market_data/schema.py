"""Tables of ``data/market_data.db``."""

from services.base.db import Migration

MIGRATIONS = [
    Migration(
        1,
        "bars and the state of each series",
        """
        CREATE TABLE bars (
            symbol TEXT NOT NULL,
            interval TEXT NOT NULL,
            time TEXT NOT NULL,          -- session date (daily) or UTC start (intraday)
            open REAL, high REAL, low REAL, close REAL, adj_close REAL, volume REAL,
            source TEXT NOT NULL,
            fetched_at TEXT NOT NULL,
            PRIMARY KEY (symbol, interval, time)
        ) WITHOUT ROWID;

        -- One row per (symbol, interval): what the store holds and how the last refresh went.
        -- revision grows whenever bars change, so caches keyed on it see every refresh.
        CREATE TABLE series (
            symbol TEXT NOT NULL,
            interval TEXT NOT NULL,
            revision INTEGER NOT NULL DEFAULT 0,
            newest TEXT,
            bar_count INTEGER NOT NULL DEFAULT 0,
            source TEXT,
            last_attempt TEXT,
            last_success TEXT,
            last_error TEXT,
            PRIMARY KEY (symbol, interval)
        ) WITHOUT ROWID;
        """,
    ),
]
