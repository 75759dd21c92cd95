"""Online database backups: consistent copies of live WAL databases, atomic placement, pruning."""

from __future__ import annotations

import datetime
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.base.config import TradingHome
from services.base.db import connect, transaction
from services.management.backup import backup_databases, prune_backups, restore_hint

TODAY = datetime.date(2026, 11, 21)


def make_database(home: TradingHome, name: str, rows: int) -> sqlite3.Connection:
    conn = connect(home.database(name))
    conn.execute("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)")
    insert_rows(conn, 1, rows)
    return conn


def insert_rows(conn: sqlite3.Connection, first: int, count: int) -> None:
    with transaction(conn):
        conn.executemany(
            "INSERT INTO items (id, payload) VALUES (?, ?)",
            [(i, f"row {i} " + "x" * 100) for i in range(first, first + count)],
        )


def open_copy(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def ids_in(path: Path) -> list[int]:
    copy = open_copy(path)
    try:
        return [row[0] for row in copy.execute("SELECT id FROM items ORDER BY id")]
    finally:
        copy.close()


def leftovers(directory: Path) -> list[str]:
    """Temporary or SQLite side files anywhere under ``directory``."""
    return sorted(
        str(p.relative_to(directory))
        for p in directory.rglob("*")
        if p.name.startswith(".") or p.name.endswith(("-wal", "-shm", "-journal", ".tmp"))
    )


@pytest.fixture
def writer(home: TradingHome) -> Iterator[sqlite3.Connection]:
    conn = make_database(home, "alpha", 100)
    yield conn
    conn.close()


def test_copy_has_committed_rows_not_uncommitted_and_is_standalone(
    home: TradingHome, writer: sqlite3.Connection
) -> None:
    # The committed rows are still only in the write-ahead log, not yet in alpha.db itself.
    assert home.data.joinpath("alpha.db-wal").stat().st_size > 0
    writer.execute("BEGIN IMMEDIATE")
    writer.executemany(
        "INSERT INTO items (id, payload) VALUES (?, 'pending')", [(i,) for i in range(101, 151)]
    )

    result = backup_databases(home, today=TODAY)

    writer.execute("COMMIT")  # the live database is still writable after the backup
    directory = home.backups / "2026-11-21"
    copy_path = directory / "alpha.db"
    assert result["directory"] == str(directory)
    assert result["files"] == ["alpha.db"]
    assert result["bytes"] == copy_path.stat().st_size > 0
    assert result["removed"] == []
    assert ids_in(copy_path) == list(range(1, 101))
    copy = open_copy(copy_path)
    try:
        assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert copy.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        copy.close()
    assert leftovers(home.backups) == []
    assert sorted(p.name for p in directory.iterdir()) == ["alpha.db"]


def test_copy_under_concurrent_writes_is_a_committed_prefix(home: TradingHome) -> None:
    make_database(home, "beta", 10).close()
    committed = [10]
    stop = threading.Event()
    enough = threading.Event()

    def write() -> None:
        conn = connect(home.database("beta"))
        try:
            while not stop.is_set():
                insert_rows(conn, committed[0] + 1, 10)
                committed[0] += 10
                if committed[0] >= 500:
                    enough.set()
        finally:
            conn.close()

    thread = threading.Thread(target=write, name="backup-test-writer")
    thread.start()
    try:
        assert enough.wait(30)
        before = committed[0]
        backup_databases(home, today=TODAY)
        after = committed[0]
    finally:
        stop.set()
        thread.join(30)
    ids = ids_in(home.backups / "2026-11-21" / "beta.db")
    assert len(ids) % 10 == 0
    assert before <= len(ids) <= after
    assert ids == list(range(1, len(ids) + 1))


def test_every_database_is_copied_and_a_rerun_replaces_the_day(home: TradingHome) -> None:
    first = make_database(home, "alpha", 5)
    make_database(home, "beta", 7).close()
    home.data.joinpath("notes.txt").write_text("not a database")

    result = backup_databases(home, today=TODAY)
    assert result["files"] == ["alpha.db", "beta.db"]
    directory = Path(result["directory"])
    assert result["bytes"] == sum(p.stat().st_size for p in directory.iterdir())

    insert_rows(first, 6, 5)
    first.close()
    again = backup_databases(home, today=TODAY)
    assert again["files"] == ["alpha.db", "beta.db"]
    assert ids_in(directory / "alpha.db") == list(range(1, 11))
    assert ids_in(directory / "beta.db") == list(range(1, 8))
    assert leftovers(home.backups) == []


def test_no_databases_gives_an_empty_day(home: TradingHome) -> None:
    result = backup_databases(home, today=TODAY)
    assert result["files"] == []
    assert result["bytes"] == 0


def test_prunes_date_directories_beyond_keep_days_only(home: TradingHome) -> None:
    make_database(home, "alpha", 3).close()
    for back in range(1, 21):
        day = home.backups / (TODAY - datetime.timedelta(days=back)).isoformat()
        day.mkdir()
        (day / "alpha.db").write_bytes(b"old")
    untouchable = ["before-upgrade", "2026-13-45", "2026-1-1"]
    for name in untouchable:
        (home.backups / name).mkdir()
        (home.backups / name / "keep.db").write_bytes(b"mine")
    (home.backups / "2020-01-01").write_text("a file named like a date is not a backup day")

    result = backup_databases(home, today=TODAY, keep_days=14)

    days = sorted(p.name for p in home.backups.iterdir() if p.is_dir() and p.name not in untouchable)
    assert len(days) == 14
    assert days[0] == "2026-11-08"
    assert days[-1] == "2026-11-21"
    assert result["removed"] == [(TODAY - datetime.timedelta(days=b)).isoformat() for b in range(20, 13, -1)]
    for name in untouchable:
        assert (home.backups / name / "keep.db").read_bytes() == b"mine"
    assert (home.backups / "2020-01-01").is_file()


def test_prune_keeps_future_days_and_rejects_nonsense(home: TradingHome) -> None:
    (home.backups / "2026-12-25").mkdir()
    assert prune_backups(home.backups, today=TODAY, keep_days=1) == []
    assert (home.backups / "2026-12-25").is_dir()
    with pytest.raises(ValueError, match="keep_days"):
        backup_databases(home, today=TODAY, keep_days=0)


def test_a_corrupt_database_is_named_and_the_others_are_backed_up(home: TradingHome) -> None:
    make_database(home, "alpha", 20).close()
    yesterday = TODAY - datetime.timedelta(days=1)
    backup_databases(home, today=yesterday)
    backup_databases(home, today=TODAY)
    (home.data / "x.db").write_bytes(b"this is not an SQLite database " * 200)
    (home.backups / TODAY.isoformat() / "x.db").write_bytes(b"an earlier, good copy")
    # An old day that would be pruned by a run without failures stays while one fails.
    stale = home.backups / "2026-01-01"
    stale.mkdir()

    result = backup_databases(home, today=TODAY, keep_days=3)

    assert result["files"] == ["alpha.db"]
    assert list(result["failed"]) == ["x.db"]
    assert "x.db" in result["failed"]["x.db"]
    assert (home.backups / TODAY.isoformat() / "x.db").read_bytes() == b"an earlier, good copy"
    assert result["removed"] == []
    assert stale.is_dir()
    assert leftovers(home.backups) == []


def test_a_failed_first_backup_of_the_day_leaves_no_directory(home: TradingHome) -> None:
    (home.data / "x.db").write_bytes(b"\0garbage" * 1000)
    result = backup_databases(home, today=TODAY)
    assert list(result["failed"]) == ["x.db"]
    assert list(home.backups.iterdir()) == []


def test_restore_hint_names_the_steps(home: TradingHome) -> None:
    hint = restore_hint(home)
    assert "tradingctl stop <svc>" in hint
    assert f"{home.backups}/<YYYY-MM-DD>/<svc>.db {home.data}/<svc>.db" in hint
    assert f"{home.data}/<svc>.db-wal" in hint
    assert f"{home.data}/<svc>.db-shm" in hint
    assert "tradingctl start <svc>" in hint
