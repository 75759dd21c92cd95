"""SQLite helpers: WAL, transactions, migrations, init_all."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.base.config import TradingHome
from services.base.db import (
    Database,
    Migration,
    connect,
    fetch_all,
    init_all,
    migrate,
    registered_schemas,
    transaction,
)
from services.base.errors import OperationalError

V1 = Migration(1, "orders", "CREATE TABLE orders (id INTEGER PRIMARY KEY, symbol TEXT NOT NULL);")
V2 = Migration(
    2,
    "fills and an index",
    """
    CREATE TABLE fills (
        id INTEGER PRIMARY KEY,
        order_id INTEGER NOT NULL REFERENCES orders(id),
        -- a comment with a semicolon; inside
        price REAL NOT NULL
    );
    CREATE INDEX fills_by_order ON fills(order_id);
    """,
)
V3 = Migration(3, "order status", "ALTER TABLE orders ADD COLUMN status TEXT NOT NULL DEFAULT 'new';")


@pytest.fixture
def conn(home: TradingHome) -> Iterator[sqlite3.Connection]:
    connection = connect(home.database("test"))
    yield connection
    connection.close()


def tables(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def test_connect_sets_wal_and_foreign_keys(conn: sqlite3.Connection) -> None:
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.isolation_level is None


def test_connect_full_sync_and_creates_parent(tmp_path: Path) -> None:
    path = tmp_path / "deeper" / "x.db"
    connection = connect(path, synchronous="FULL")
    try:
        assert path.exists()
        assert connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        connection.close()


def test_connect_to_a_non_database_is_an_operational_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not a sqlite database at all, just junk bytes" * 100)
    with pytest.raises(OperationalError, match=r"junk\.db"):
        connect(path)


def test_transaction_commits(home: TradingHome, conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE t (x INTEGER)")
    with transaction(conn):
        conn.execute("INSERT INTO t VALUES (1)")
        conn.execute("INSERT INTO t VALUES (2)")
    assert not conn.in_transaction
    # A second connection sees the committed rows.
    other = connect(home.database("test"))
    try:
        assert fetch_all(other, "SELECT x FROM t ORDER BY x") == [(1,), (2,)]
    finally:
        other.close()


def test_transaction_rolls_back_on_error(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE t (x INTEGER)")
    with transaction(conn):
        conn.execute("INSERT INTO t VALUES (1)")

    def failing_change() -> None:
        with transaction(conn):
            conn.execute("INSERT INTO t VALUES (2)")
            conn.execute("UPDATE t SET x = 10 WHERE x = 1")
            raise RuntimeError("half way")

    with pytest.raises(RuntimeError, match="half way"):
        failing_change()
    assert not conn.in_transaction
    assert fetch_all(conn, "SELECT x FROM t") == [(1,)]


def test_transaction_rolls_back_on_sql_error(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE t (x INTEGER NOT NULL)")

    def failing_change() -> None:
        with transaction(conn):
            conn.execute("INSERT INTO t VALUES (1)")
            conn.execute("INSERT INTO t VALUES (NULL)")

    with pytest.raises(sqlite3.IntegrityError):
        failing_change()
    assert fetch_all(conn, "SELECT x FROM t") == []
    assert not conn.in_transaction


def test_migrate_applies_in_order_and_sets_user_version(conn: sqlite3.Connection) -> None:
    assert user_version(conn) == 0
    assert migrate(conn, [V1, V2]) == 2
    assert user_version(conn) == 2
    assert {"orders", "fills"} <= tables(conn)
    assert conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND name = 'fills_by_order'"
    ).fetchone()
    # The foreign key made by V2 is enforced.
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO fills (order_id, price) VALUES (99, 1.0)")


def test_migrate_is_idempotent_and_applies_only_newer(conn: sqlite3.Connection) -> None:
    assert migrate(conn, [V1]) == 1
    conn.execute("INSERT INTO orders (symbol) VALUES ('BHP')")
    # Re-running V1 would fail (table exists) if it were applied again.
    assert migrate(conn, [V1]) == 1
    assert migrate(conn, [V1, V2, V3]) == 3
    assert migrate(conn, [V1, V2, V3]) == 3
    assert user_version(conn) == 3
    assert fetch_all(conn, "SELECT symbol, status FROM orders") == [("BHP", "new")]


def test_migrate_with_no_migrations(conn: sqlite3.Connection) -> None:
    assert migrate(conn, []) == 0
    assert user_version(conn) == 0


def test_failing_migration_rolls_back_entirely(conn: sqlite3.Connection) -> None:
    broken = Migration(
        2,
        "half good, half broken",
        "CREATE TABLE fills (id INTEGER PRIMARY KEY);\nINSERT INTO orders (symbol) VALUES ('CBA');\n"
        "INSERT INTO no_such_table VALUES (1);\n",
    )
    assert migrate(conn, [V1]) == 1
    with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
        migrate(conn, [V1, broken, V3])
    assert user_version(conn) == 1
    assert "fills" not in tables(conn)
    assert fetch_all(conn, "SELECT count(*) FROM orders") == [(0,)]
    assert not conn.in_transaction
    # Once fixed, the migration applies.
    assert migrate(conn, [V1, V2, V3]) == 3


def test_failing_first_migration_leaves_version_zero(conn: sqlite3.Connection) -> None:
    broken = Migration(1, "typo", "CREATE TABLE a (x INTEGER);\nCREAT TABLE b (y INTEGER);\n")
    with pytest.raises(sqlite3.OperationalError):
        migrate(conn, [broken])
    assert user_version(conn) == 0
    assert "a" not in tables(conn)


def test_incomplete_statement_rolls_back_the_migration(conn: sqlite3.Connection) -> None:
    sql = "CREATE TABLE a (x INTEGER);\nCREATE TABLE b (y INTEGER)"
    with pytest.raises(ValueError, match="incomplete"):
        migrate(conn, [Migration(1, "missing semicolon", sql)])
    assert user_version(conn) == 0
    assert "a" not in tables(conn)


@pytest.mark.parametrize("versions", [[1, 1], [2, 1], [1, 3, 2], [0, 1], [-1], [0]])
def test_non_increasing_versions_raise(conn: sqlite3.Connection, versions: list[int]) -> None:
    migrations = [Migration(v, f"m{i}", f"CREATE TABLE t{i} (x INTEGER);") for i, v in enumerate(versions)]
    with pytest.raises(ValueError, match="increasing"):
        migrate(conn, migrations)
    assert user_version(conn) == 0
    assert tables(conn) == set()


def test_init_all_creates_each_service_database(home: TradingHome) -> None:
    versions = init_all(home, {"paper_trading": [V1, V2], "signals": [V1]})
    assert versions == {"paper_trading": 2, "signals": 1}
    assert home.database("paper_trading").is_file()
    assert home.database("signals").is_file()
    assert home.database("paper_trading").parent == home.data
    for service, expected in versions.items():
        connection = sqlite3.connect(home.database(service))
        try:
            assert user_version(connection) == expected
            assert "orders" in tables(connection)
        finally:
            connection.close()
    # Running again upgrades, and leaves the up-to-date one as it is.
    assert init_all(home, {"paper_trading": [V1, V2, V3], "signals": [V1]}) == {
        "paper_trading": 3,
        "signals": 1,
    }


def test_init_all_with_empty_schemas(home: TradingHome) -> None:
    assert init_all(home, {}) == {}
    assert list(home.data.iterdir()) == []


def test_registered_schemas_returns_a_dict_of_migrations() -> None:
    schemas = registered_schemas()
    assert isinstance(schemas, dict)
    assert "base" not in schemas
    for name, migrations in schemas.items():
        assert name.isidentifier()
        assert all(isinstance(m, Migration) for m in migrations)


async def test_database_runs_work_off_the_loop(home: TradingHome) -> None:
    database = Database(home.database("async"))
    try:
        await database.run(lambda c: migrate(c, [V1]))

        def insert(c: sqlite3.Connection) -> None:
            with transaction(c):
                c.execute("INSERT INTO orders (symbol) VALUES ('WES')")

        await database.run(insert)
        rows = await database.run(lambda c: fetch_all(c, "SELECT symbol FROM orders"))
        assert rows == [("WES",)]
    finally:
        database.close()


async def test_close_waits_for_the_operation_a_cancelled_task_left_running(tmp_path: Path) -> None:
    # Cancelling the waiting task cannot stop the worker thread; closing the connection under it
    # would fail its statement (or crash the process inside SQLite).
    database = Database(tmp_path / "busy.db")
    started = threading.Event()
    finished: list[int] = []

    def slow_work(conn: sqlite3.Connection) -> None:
        started.set()
        time.sleep(0.2)  # still inside the worker thread when close() is called
        finished.append(conn.execute("SELECT 41 + 1").fetchone()[0])

    waiter = asyncio.create_task(database.run(slow_work))
    await asyncio.to_thread(started.wait, 5)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    database.close()
    assert finished == [42]
    with pytest.raises(sqlite3.ProgrammingError):
        database.conn.execute("SELECT 1")
