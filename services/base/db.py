"""SQLite helpers: WAL connections, explicit transactions, schema migrations, async access.

Each service owns ``$TRADING_HOME/data/<service>.db``. A service that has tables puts a
``schema.py`` module in its package with ``MIGRATIONS`` (a list of ``Migration``); ``init_all``
finds those modules and brings every database up to date (``setup_microservices.py --init-db``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import pkgutil
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from services.base.config import TradingHome
from services.base.errors import DependencyUnavailable, OperationalError

T = TypeVar("T")


def connect(path: Path, *, synchronous: Literal["NORMAL", "FULL"] = "NORMAL") -> sqlite3.Connection:
    """Open a database in WAL mode with autocommit off-by-default semantics made explicit.

    ``isolation_level=None`` leaves transactions to ``transaction()``, so nothing is ever
    committed implicitly halfway through a change.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
    except sqlite3.DatabaseError as exc:
        raise OperationalError(f"{path}: cannot open database: {exc}") from exc
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` if the block raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


# SQLite's result codes that say the file itself cannot be used, not that a statement is wrong.
STORAGE_FAULTS = ("SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_FULL", "SQLITE_IOERR", "SQLITE_READONLY",
                  "SQLITE_CANTOPEN")  # fmt: skip
# Of those, the ones that can pass (space freed, permissions given back) once a write succeeds.
PASSING_FAULTS = ("SQLITE_FULL", "SQLITE_IOERR", "SQLITE_READONLY", "SQLITE_CANTOPEN")


class StorageFailed(DependencyUnavailable):
    """The database file cannot be used (damaged, disk full, read-only); ``data``: path, fault."""


class Database:
    """One SQLite connection, used by one worker thread of its own, one operation at a time.

    Cancelling a task that waits on ``run`` does not stop the thread's work, so ``close`` waits
    for the operation in progress before closing the connection under it.

    An operation that fails because of the file itself (``STORAGE_FAULTS``) raises
    ``StorageFailed`` naming the file, and ``failure`` says what is wrong until a later write
    succeeds (a damaged file stays failed); ``on_failure`` is told once per failure.
    """

    def __init__(self, path: Path, *, synchronous: Literal["NORMAL", "FULL"] = "NORMAL") -> None:
        self.path = path
        self.conn = connect(path, synchronous=synchronous)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"db-{path.stem}")
        self.failure: str | None = None
        self._fault: str | None = None
        self.on_failure: Callable[[str], None] | None = None

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work(conn)`` off the event loop, after the operations submitted before it."""
        changes = self.conn.total_changes
        try:
            result = await asyncio.wrap_future(self._worker.submit(work, self.conn))
        except sqlite3.DatabaseError as exc:
            fault = getattr(exc, "sqlite_errorname", None) or ""
            if not fault.startswith(STORAGE_FAULTS):
                raise
            self._failed(fault, exc)
            raise StorageFailed(f"{self.path}: {exc} ({fault})", path=str(self.path), fault=fault) from exc
        if (
            self._fault is not None
            and self._fault.startswith(PASSING_FAULTS)
            and (self.conn.total_changes > changes)
        ):
            self.failure = self._fault = None  # a write went through: the file is usable again
        return result

    def _failed(self, fault: str, exc: sqlite3.DatabaseError) -> None:
        first = self.failure is None
        self._fault = fault
        self.failure = f"{self.path}: {exc} ({fault})"
        if first and self.on_failure is not None:
            self.on_failure(self.failure)

    def close(self) -> None:
        """Drop queued operations, wait for the running one (milliseconds), close the connection."""
        self._worker.shutdown(wait=True, cancel_futures=True)
        self.conn.close()


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    sql: str


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration]) -> int:
    """Apply the migrations newer than the database's ``user_version``; return the new version."""
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)) or (versions and versions[0] < 1):
        raise ValueError(f"migration versions must be increasing from 1, got {versions}")
    current = int(conn.execute("PRAGMA user_version").fetchone()[0])
    for migration in migrations:
        if migration.version <= current:
            continue
        with transaction(conn):
            for statement in _statements(migration.sql):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={migration.version}")
        current = migration.version
    return current


def _statements(sql: str) -> Iterator[str]:
    # executescript() would commit on its own; split so each migration is one transaction.
    buffer = ""
    for line in sql.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                yield buffer
            buffer = ""
    if buffer.strip():
        raise ValueError(f"incomplete SQL statement in migration: {buffer.strip()[:80]!r}")


def registered_schemas() -> dict[str, Sequence[Migration]]:
    """Service name -> migrations, from every ``services/<name>/schema.py``."""
    import services

    found: dict[str, Sequence[Migration]] = {}
    for module in pkgutil.iter_modules(services.__path__):
        if not module.ispkg or module.name == "base":
            continue
        try:
            schema = importlib.import_module(f"services.{module.name}.schema")
        except ModuleNotFoundError as exc:
            if exc.name == f"services.{module.name}.schema":
                continue
            raise
        found[module.name] = schema.MIGRATIONS
    return found


def init_all(home: TradingHome, schemas: dict[str, Sequence[Migration]] | None = None) -> dict[str, int]:
    """Create or upgrade every registered service database; returns each one's schema version.
    Each is opened as its service opens it (``storage.open_service_database``): one this home
    made that is now missing, empty, foreign or damaged is refused, not made anew."""
    from services.base.storage import open_service_database

    schemas = registered_schemas() if schemas is None else schemas
    versions: dict[str, int] = {}
    for service, migrations in sorted(schemas.items()):
        database = open_service_database(home, service)
        try:
            versions[service] = migrate(database.conn, migrations)
        finally:
            database.close()
    return versions


def fetch_all(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    return list(conn.execute(sql, params).fetchall())
