"""Tables of ``data/sentiment.db``."""

from services.base.db import Migration

MIGRATIONS = [
    Migration(
        1,
        "articles, their mentions, API usage and the last result per scope",
        """
        CREATE TABLE articles (
            id INTEGER PRIMARY KEY,
            url TEXT NOT NULL,
            url_key TEXT NOT NULL UNIQUE,    -- the URL without tracking parameters (articles.url_key)
            title TEXT NOT NULL,
            title_key TEXT NOT NULL,         -- normalised title, for near-duplicates
            summary TEXT NOT NULL,
            source TEXT NOT NULL,            -- publisher domain
            provider TEXT NOT NULL,          -- marketaux | rss: who brought it first
            published_at TEXT NOT NULL,      -- UTC ISO-8601
            fetched_at TEXT NOT NULL,
            text_score REAL NOT NULL,        -- our scorer, -1..1
            matches TEXT NOT NULL            -- JSON list of the scorer's rules that fired
        );
        CREATE INDEX articles_published ON articles (published_at);

        -- Which symbols (or the market) an article is about.
        CREATE TABLE mentions (
            symbol TEXT NOT NULL,
            article_id INTEGER NOT NULL REFERENCES articles (id),
            relevance REAL NOT NULL,         -- 0..1
            provider_score REAL,             -- the provider's entity sentiment, when it gave one
            highlights TEXT NOT NULL,        -- JSON list of {text, sentiment, where}
            provider TEXT NOT NULL,
            PRIMARY KEY (symbol, article_id)
        ) WITHOUT ROWID;
        CREATE INDEX mentions_article ON mentions (article_id);

        -- Requests made to a metered API per UTC day; exhausted: the API said the plan is used up.
        CREATE TABLE api_usage (
            provider TEXT NOT NULL,
            day TEXT NOT NULL,
            calls INTEGER NOT NULL,
            exhausted INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (provider, day)
        ) WITHOUT ROWID;

        -- The last computed answer per scope (a symbol, "big4", "market"), served stale when no
        -- source can answer.
        CREATE TABLE results (
            scope TEXT PRIMARY KEY,
            computed_at TEXT NOT NULL,
            payload TEXT NOT NULL
        ) WITHOUT ROWID;
        """,
    ),
]
