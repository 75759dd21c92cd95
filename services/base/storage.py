"""Service databases that cannot silently become someone else's, or nothing.

A home has an identity (``data/identity.json``: a random id, when it was made, and each database it
created, with when). Each database carries the same id in a table of its own (``_identity``). A
service opens its database through ``open_service_database``, which refuses, naming the file and
what to do (restore it from ``backups/``):

- a database this home created that is now missing or empty (a fresh $100,000 account would
  silently replace a trader's book);
- a database of another home, or of another service (a file copied into the wrong place);
- a database that fails ``PRAGMA quick_check`` (a damaged page goes unnoticed otherwise), or that
  is not a database at all.

A first start creates the database and records it. A database from before identities existed is
adopted once: it is given this home's identity.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson

from services.base.config import TradingHome
from services.base.db import Database, transaction
from services.base.errors import OperationalError
from services.base.files import write_synced

IDENTITY_FILE = "identity.json"
IDENTITY_TABLE = "_identity"


class DatabaseRefused(OperationalError):
    """A service database that must not be opened as it is; ``data``: path and reason."""


def identity_path(home: TradingHome) -> Path:
    return home.data / IDENTITY_FILE


@contextlib.contextmanager
def _identity(home: TradingHome) -> Iterator[dict[str, Any]]:
    """The home's identity, read and written under a lock (services start concurrently)."""
    home.data.mkdir(parents=True, exist_ok=True)
    with (home.data / ".identity.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = identity_path(home)
        try:
            identity = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            identity = {"home_id": secrets.token_hex(16), "created_at": _now(), "databases": {}}
        except (OSError, orjson.JSONDecodeError) as exc:
            raise DatabaseRefused(
                f"{path} is unreadable ({exc}): it says which databases this home made; restore it "
                "from a backup of the home, or move it away to adopt the databases as they are",
                path=str(path),
                reason="identity_unreadable",
            ) from None
        before = orjson.dumps(identity)
        yield identity
        if orjson.dumps(identity) != before or not path.exists():
            temporary = path.with_suffix(".tmp")
            write_synced(temporary, orjson.dumps(identity, option=orjson.OPT_INDENT_2))
            os.chmod(temporary, 0o600)
            temporary.replace(path)


def open_service_database(
    home: TradingHome, service: str, *, synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
) -> Database:
    """``service``'s database, checked as the module says; ``DatabaseRefused`` when it must not
    be used."""
    path = home.database(service)
    with _identity(home) as identity:
        created = identity["databases"].get(service)
        present = path.exists() and path.stat().st_size > 0
        if not present and created:
            state = "empty" if path.exists() else "missing"
            raise DatabaseRefused(
                f"{path} is {state}, but this home created it on {created}: starting would make a new, "
                f"empty one in its place. {_restore(home, service)}",
                path=str(path),
                reason=state,
            )
        database = _open(path, synchronous, home, service)
        try:
            if present:
                _check(database.conn, path, home, service)
            found = _stamp(database.conn, service)
            if found is None and created:
                raise DatabaseRefused(
                    f"{path} does not carry this home's identity, though this home created it on {created}: "
                    f"it was replaced by another file. {_restore(home, service)}",
                    path=str(path),
                    reason="other_home",
                )
            if found is None:  # new, or from before identities: it becomes this home's
                database.conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {IDENTITY_TABLE} "
                    "(home_id TEXT NOT NULL, service TEXT NOT NULL, created_at TEXT NOT NULL)"
                )
                with transaction(database.conn):
                    database.conn.execute(
                        f"INSERT INTO {IDENTITY_TABLE} VALUES (?, ?, ?)",
                        (identity["home_id"], service, created or _now()),
                    )
            elif found != (identity["home_id"], service):
                home_id, owner = found
                whose = (
                    f"of the {owner} service" if owner != service else f"of another home ({home_id[:8]}...)"
                )
                raise DatabaseRefused(
                    f"{path} is the database {whose}, not {service}'s in this home. "
                    f"{_restore(home, service)}",
                    path=str(path),
                    reason="other_home" if owner == service else "other_service",
                )
        except BaseException:
            database.close()
            raise
        identity["databases"].setdefault(service, created or _now())
    os.chmod(path, 0o600)
    return database


def _open(path: Path, synchronous: Literal["NORMAL", "FULL"], home: TradingHome, service: str) -> Database:
    try:
        return Database(path, synchronous=synchronous)
    except OperationalError as exc:
        raise DatabaseRefused(
            f"{exc.message}: not a usable SQLite database. {_restore(home, service)}",
            path=str(path),
            reason="unreadable",
        ) from None


def _check(conn: sqlite3.Connection, path: Path, home: TradingHome, service: str) -> None:
    try:
        problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check").fetchall()]
    except sqlite3.DatabaseError as exc:
        problems = [str(exc)]
    if problems != ["ok"]:
        raise DatabaseRefused(
            f"{path} is damaged (quick_check: {'; '.join(problems[:3])}). {_restore(home, service)}",
            path=str(path),
            reason="damaged",
        )


def _stamp(conn: sqlite3.Connection, service: str) -> tuple[str, str] | None:
    """(home id, service) the database carries, or None when it carries none."""
    try:
        row = conn.execute(f"SELECT home_id, service FROM {IDENTITY_TABLE} LIMIT 1").fetchone()
    except sqlite3.OperationalError:  # no such table
        return None
    return (str(row[0]), str(row[1])) if row else None


def _restore(home: TradingHome, service: str) -> str:
    return (
        f"Restore it from a backup (cp {home.backups}/<YYYY-MM-DD>/{service}.db {home.database(service)}, "
        f"then rm -f {home.database(service)}-wal {home.database(service)}-shm); to start {service}'s data "
        f'afresh on purpose, move the file away and remove "{service}" from {identity_path(home)}'
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
