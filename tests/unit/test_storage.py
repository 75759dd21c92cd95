"""Service databases carry their home's identity: missing, empty, foreign or damaged ones are refused."""

from __future__ import annotations

import shutil
import sqlite3
import stat
from pathlib import Path

import orjson
import pytest

from services.base.config import TradingHome
from services.base.db import Database, StorageFailed
from services.base.storage import DatabaseRefused, identity_path, open_service_database


@pytest.fixture
def home(tmp_path: Path) -> TradingHome:
    made = TradingHome(tmp_path / "home")
    made.create()
    return made


def first_start(home: TradingHome, service: str = "paper_trading") -> None:
    database = open_service_database(home, service)
    with database.conn:
        database.conn.execute("CREATE TABLE IF NOT EXISTS book (id INTEGER PRIMARY KEY, note TEXT)")
        database.conn.executemany("INSERT INTO book (note) VALUES (?)", [("x" * 500,)] * 200)
    database.close()


def refused(home: TradingHome, service: str = "paper_trading") -> DatabaseRefused:
    with pytest.raises(DatabaseRefused) as caught:
        open_service_database(home, service).close()
    return caught.value


def test_a_first_start_creates_the_database_and_records_it_privately(home: TradingHome) -> None:
    first_start(home)
    identity = orjson.loads(identity_path(home).read_bytes())
    assert set(identity["databases"]) == {"paper_trading"}
    assert stat.S_IMODE(identity_path(home).stat().st_mode) == 0o600
    assert stat.S_IMODE(home.database("paper_trading").stat().st_mode) == 0o600
    open_service_database(home, "paper_trading").close()  # and opens again


@pytest.mark.parametrize("state", ["empty", "missing"])
def test_a_database_this_home_made_that_is_now_empty_or_missing_is_refused(
    home: TradingHome, state: str
) -> None:
    first_start(home)
    path = home.database("paper_trading")
    if state == "empty":
        path.write_bytes(b"")
    else:
        path.unlink()
    error = refused(home)
    assert error.data == {"path": str(path), "reason": state}
    assert f"{path} is {state}" in error.message
    assert str(home.backups) in error.message  # what to do
    assert not path.exists() or path.stat().st_size == 0  # nothing was created in its place


def test_a_database_of_another_home_or_service_is_refused(home: TradingHome, tmp_path: Path) -> None:
    other = TradingHome(tmp_path / "other")
    other.create()
    first_start(other)
    first_start(home, "sentiment")
    shutil.copy(other.database("paper_trading"), home.database("paper_trading"))
    assert refused(home).data["reason"] == "other_home"
    shutil.copy(home.database("sentiment"), home.database("paper_trading"))
    error = refused(home)
    assert error.data["reason"] == "other_service"
    assert "of the sentiment service" in error.message


def test_a_damaged_database_is_refused(home: TradingHome) -> None:
    first_start(home)
    path = home.database("paper_trading")
    data = bytearray(path.read_bytes())
    page = 4096
    data[3 * page : 3 * page + 200] = b"\xff" * 200  # a table page, header intact
    path.write_bytes(bytes(data))
    error = refused(home)
    assert error.data["reason"] == "damaged"
    assert "quick_check" in error.message
    path.write_bytes(b"this is not a database" * 100)
    assert refused(home).data["reason"] in {"damaged", "unreadable"}


def test_a_database_from_before_identities_is_adopted_once(home: TradingHome) -> None:
    with sqlite3.connect(home.database("scheduler")) as conn:
        conn.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY)")
    open_service_database(home, "scheduler").close()
    assert "scheduler" in orjson.loads(identity_path(home).read_bytes())["databases"]
    # Now the home knows it: a file without the identity in its place is not this home's.
    home.database("scheduler").unlink()
    with sqlite3.connect(home.database("scheduler")) as conn:
        conn.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY)")
    assert refused(home, "scheduler").data["reason"] == "other_home"


# -- failures while running -------------------------------------------------------------------


async def test_a_damaged_page_found_while_running_fails_the_database_for_good(home: TradingHome) -> None:
    first_start(home)
    database = Database(home.database("paper_trading"))  # its pages not yet read into its cache
    told: list[str] = []
    database.on_failure = told.append
    path = home.database("paper_trading")
    data = bytearray(path.read_bytes())
    data[3 * 4096 : 3 * 4096 + 200] = b"\xff" * 200  # under the open connection
    path.write_bytes(bytes(data))
    try:
        for _ in range(2):
            with pytest.raises(StorageFailed) as caught:
                await database.run(
                    lambda conn: conn.execute("SELECT count(*), max(note) FROM book").fetchall()
                )
        assert caught.value.data == {"path": str(path), "fault": "SQLITE_CORRUPT"}
        assert str(path) in caught.value.message
        assert database.failure is not None
        assert len(told) == 1  # told once, not on every failing call
        await database.run(lambda conn: conn.execute("SELECT 1").fetchall())
        assert database.failure is not None  # a damaged file stays failed
    finally:
        database.close()


async def test_a_full_disk_fails_writes_until_one_goes_through(home: TradingHome) -> None:
    first_start(home)
    database = open_service_database(home, "paper_trading")
    pages = database.conn.execute("PRAGMA page_count").fetchone()[0]
    database.conn.execute(f"PRAGMA max_page_count = {pages}")  # as if the disk were full

    def write(conn: sqlite3.Connection) -> None:
        with conn:
            conn.executemany("INSERT INTO book (note) VALUES (?)", [("y" * 500,)] * 100)

    try:
        with pytest.raises(StorageFailed) as caught:
            await database.run(write)
        assert caught.value.data["fault"] == "SQLITE_FULL"
        assert "full" in (database.failure or "")
        count = await database.run(lambda conn: conn.execute("SELECT count(*) FROM book").fetchone()[0])
        assert count == 200  # nothing half-written
        assert database.failure is not None  # a read says nothing about the space
        database.conn.execute(f"PRAGMA max_page_count = {pages * 10}")  # space freed
        await database.run(write)
        assert database.failure is None
    finally:
        database.close()
