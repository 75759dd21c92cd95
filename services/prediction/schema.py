"""Tables of ``data/prediction.db`` (the outbox's tables are the event bus's own)."""

from services.base.db import Migration

MIGRATIONS = [
    Migration(
        1,
        "predictions, and the buy-rate alert state",
        """
        CREATE TABLE predictions (
            id INTEGER PRIMARY KEY,
            batch_id TEXT NOT NULL,
            symbol TEXT NOT NULL,
            signal TEXT NOT NULL,            -- BUY | HOLD | SELL
            confidence REAL NOT NULL,
            combined REAL NOT NULL,          -- -1..1
            regime TEXT,
            price REAL NOT NULL,
            price_time TEXT NOT NULL,
            degraded INTEGER NOT NULL,
            created_at TEXT NOT NULL,        -- UTC
            event_id TEXT NOT NULL,          -- the signal's id on trading:signals
            payload TEXT NOT NULL            -- the whole answer as JSON
        );
        CREATE INDEX predictions_symbol ON predictions (symbol, id);

        CREATE TABLE state (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        ) WITHOUT ROWID;
        """,
    ),
    Migration(
        2,
        "signal ids are derived from the decision's inputs: look them up",
        "CREATE UNIQUE INDEX predictions_event ON predictions (event_id);",
    ),
    Migration(
        3,
        "the calibrated probability a signal carries, its cases and its calibration",
        """
        ALTER TABLE predictions ADD COLUMN probability REAL;      -- NULL: uncalibrated
        ALTER TABLE predictions ADD COLUMN cases INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE predictions ADD COLUMN calibration TEXT NOT NULL DEFAULT 'uncalibrated';
        """,
    ),
]
