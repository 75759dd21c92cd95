"""Tables of ``data/paper_trading.db`` (the applied-event table is the event bus's ``Inbox``)."""

from services.base.db import Migration

MIGRATIONS = [
    Migration(
        1,
        "account, orders, fills, positions, daily equity",
        """
        CREATE TABLE account (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            starting_cents INTEGER NOT NULL,
            cash_cents INTEGER NOT NULL,
            realised_cents INTEGER NOT NULL,
            commissions_cents INTEGER NOT NULL,
            opened_at TEXT NOT NULL,
            resets INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE orders (
            id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, a reset included
            symbol TEXT NOT NULL,
            side TEXT NOT NULL,               -- BUY | SELL
            quantity INTEGER,                 -- NULL: sized at fill time (a BUY signal)
            status TEXT NOT NULL,             -- pending | filled | rejected | expired | cancelled
            reason TEXT,                      -- why rejected, expired or waiting
            origin TEXT NOT NULL,             -- manual | signal | stop_loss | take_profit
            signal_id TEXT,
            confidence REAL,
            idempotency_key TEXT UNIQUE,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE INDEX orders_pending ON orders (status) WHERE status = 'pending';
        CREATE TABLE fills (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            order_id INTEGER NOT NULL REFERENCES orders (id),
            symbol TEXT NOT NULL,
            side TEXT NOT NULL,
            quantity INTEGER NOT NULL,
            price TEXT NOT NULL,              -- Decimal, slippage included
            market_price TEXT NOT NULL,       -- the price before slippage
            price_time TEXT NOT NULL,
            value_cents INTEGER NOT NULL,
            commission_cents INTEGER NOT NULL,
            cost_cents INTEGER NOT NULL,      -- a sell: the position cost it closed
            realised_cents INTEGER NOT NULL,  -- a sell: value - cost; a buy: 0
            entry_commission_cents INTEGER NOT NULL DEFAULT 0,  -- a sell: the buys' commission share
            reason TEXT NOT NULL,             -- signal | manual | stop_loss | take_profit
            filled_at TEXT NOT NULL
        );
        CREATE INDEX fills_symbol ON fills (symbol, id);
        CREATE TABLE positions (
            symbol TEXT PRIMARY KEY,
            quantity INTEGER NOT NULL CHECK (quantity > 0),
            cost_cents INTEGER NOT NULL,
            commission_cents INTEGER NOT NULL,  -- the buys' commissions on the shares still held
            entry_price TEXT NOT NULL,        -- average, Decimal
            stop_price TEXT NOT NULL,
            take_profit_price TEXT NOT NULL,
            opened_at TEXT NOT NULL
        ) WITHOUT ROWID;
        -- Equity at the day's first valuation: the base of the day's P&L (max_daily_loss).
        CREATE TABLE day_open (
            day TEXT PRIMARY KEY,
            equity_cents INTEGER NOT NULL,
            alerted INTEGER NOT NULL DEFAULT 0   -- the day's risk_alert was sent
        ) WITHOUT ROWID;
        CREATE TABLE equity (
            day TEXT PRIMARY KEY,             -- Sydney session date
            equity_cents INTEGER NOT NULL,
            cash_cents INTEGER NOT NULL,
            market_value_cents INTEGER NOT NULL,
            taken_at TEXT NOT NULL
        ) WITHOUT ROWID;
        """,
    ),
]
