"""Tables of ``data/ml_model.db``."""

from services.base.db import Migration

MIGRATIONS = [
    Migration(
        1,
        "predictions and their outcomes",
        """
        CREATE TABLE predictions (
            symbol TEXT NOT NULL,
            model TEXT NOT NULL,            -- a model name, or 'ensemble'
            as_of TEXT NOT NULL,            -- the session date the features describe (Sydney)
            scope TEXT NOT NULL,            -- whose models answered: the symbol's own, or 'pooled'
            version TEXT,                   -- the model version (NULL for the ensemble)
            made_at TEXT NOT NULL,          -- UTC
            asked INTEGER NOT NULL DEFAULT 1,
            horizon INTEGER NOT NULL,
            threshold REAL NOT NULL,
            p_up REAL NOT NULL,
            predicted INTEGER NOT NULL,     -- 1 up, 0 down
            realised_return REAL,
            outcome INTEGER,                -- 1 up, 0 down, NULL flat or not scored yet
            scored_at TEXT,
            unscorable TEXT,                -- why it can never be scored (market data lacks the symbol)
            PRIMARY KEY (symbol, model, as_of)
        ) WITHOUT ROWID;
        CREATE INDEX predictions_unscored ON predictions (symbol, as_of) WHERE scored_at IS NULL;
        """,
    ),
]
