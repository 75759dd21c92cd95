"""Online backups of the service databases, and pruning of old backup days.

Services keep their state in ``data/<service>.db`` (SQLite, WAL mode) and keep writing while a
backup runs. SQLite's backup API copies a database as of one read transaction, so each copy is
consistent: it holds every transaction committed before the copy started and nothing after, and
never a half-written one. Copying the files with ``cp`` would not be safe: the newest commits may
still sit in ``<service>.db-wal``.

A backup day is ``backups/YYYY-MM-DD/<service>.db``. Every database is first copied to a temporary
file in that directory and checked; the copies that pass are then renamed into place, so a backup
never leaves half files, and a second run on the same day replaces the first one file by file,
atomically. A database that cannot be copied or whose copy fails the check (a damaged file) is
named in ``failed``, and its earlier copy, if any, is left as it was: one broken database never
stops the others from being backed up. Old days are pruned only after a backup with no failure, so
a string of failures never eats into the backups that are left.

Synchronous on purpose: the manager runs it in a thread.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import shutil
import sqlite3
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from services.base.config import TradingHome
from services.base.errors import OperationalError
from services.management.wire import BackupResult

_DATE_NAME = re.compile(r"\d{4}-\d{2}-\d{2}")
# Files SQLite may create next to a database while it is open.
_SIDE_FILES = ("-wal", "-shm", "-journal")


@dataclass(frozen=True, slots=True)
class _Copy:
    source: Path
    temporary: Path
    final: Path


def backup_databases(home: TradingHome, *, today: datetime.date, keep_days: int = 14) -> BackupResult:
    """Copy every ``data/*.db`` into ``backups/<today>/``, then, if none failed, prune days older
    than ``keep_days``.

    ``keep_days`` counts today: with 14, today and the 13 days before it are kept. A database that
    cannot be read or whose copy fails the integrity check is named in ``failed`` with the reason;
    the others are backed up all the same.
    """
    if keep_days < 1:
        raise ValueError(f"keep_days must be at least 1, got {keep_days}")
    directory = home.backups / today.isoformat()
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    copies: list[_Copy] = []
    failed: dict[str, str] = {}
    try:
        for source in _databases(home.data):
            try:
                copies.append(_copy_database(source, directory))
            except OperationalError as exc:
                failed[source.name] = exc.message
    except BaseException:
        for copy in copies:
            _remove_with_side_files(copy.temporary)
        raise
    for copy in copies:
        os.replace(copy.temporary, copy.final)
    if created and not copies:
        with contextlib.suppress(OSError):
            directory.rmdir()  # only if empty: never delete anything else
    else:
        _fsync_directory(directory)
    return BackupResult(
        directory=str(directory),
        files=[copy.final.name for copy in copies],
        bytes=sum(copy.final.stat().st_size for copy in copies),
        removed=[] if failed else prune_backups(home.backups, today=today, keep_days=keep_days),
        failed=failed,
    )


def prune_backups(backups: Path, *, today: datetime.date, keep_days: int) -> list[str]:
    """Remove the day directories older than the newest ``keep_days`` days; return their names.

    Only directories named exactly ``YYYY-MM-DD`` are candidates; anything else in ``backups/``
    (a copy the user made by hand, say) is never touched.
    """
    oldest_kept = today - datetime.timedelta(days=keep_days - 1)
    removed: list[str] = []
    if not backups.is_dir():
        return removed
    for entry in sorted(backups.iterdir()):
        day = _day_of(entry)
        if day is not None and day < oldest_kept:
            shutil.rmtree(entry)
            removed.append(entry.name)
    return removed


def restore_hint(home: TradingHome) -> str:
    """How to put a backed-up database back, for ``tradingctl backup`` to print."""
    backups = home.backups
    data = home.data
    return "\n".join(
        [
            "To restore a service's database from a backup:",
            "  1. tradingctl stop <svc>",
            f"  2. cp {backups}/<YYYY-MM-DD>/<svc>.db {data}/<svc>.db",
            f"  3. rm -f {data}/<svc>.db-wal {data}/<svc>.db-shm",
            "     (the old write-ahead log belongs to the replaced database and must not be applied"
            " onto the restored one)",
            "  4. tradingctl start <svc>",
        ]
    )


def _databases(data: Path) -> list[Path]:
    if not data.is_dir():
        return []
    return sorted(path for path in data.glob("*.db") if path.is_file())


def _copy_database(source: Path, directory: Path) -> _Copy:
    """Copy one live database to a checked, standalone temporary file in ``directory``."""
    fd, name = tempfile.mkstemp(prefix=f".{source.name}.", suffix=".tmp", dir=directory)
    os.close(fd)  # SQLite opens it by name; mkstemp made it 0600, which the copy keeps
    temporary = Path(name)
    try:
        _sqlite_backup(source, temporary)
        _fsync_file(temporary)
    except BaseException:
        _remove_with_side_files(temporary)
        raise
    return _Copy(source=source, temporary=temporary, final=directory / source.name)


def _sqlite_backup(source: Path, target: Path) -> None:
    try:
        src = _open_existing(source)
        try:
            dst = sqlite3.connect(target, isolation_level=None)
            try:
                src.backup(dst)  # all pages in one step: one read transaction, one snapshot
                # The copy inherits WAL mode from the source's header; a backup should be one
                # self-contained file that needs no -wal beside it.
                dst.execute("PRAGMA journal_mode=DELETE").fetchone()
                problems = [row[0] for row in dst.execute("PRAGMA integrity_check").fetchall()]
            finally:
                dst.close()
        finally:
            src.close()
    except (sqlite3.Error, OSError) as exc:
        raise OperationalError(f"backup of {source.name} failed: {exc}", database=str(source)) from exc
    if problems != ["ok"]:
        raise OperationalError(
            f"backup of {source.name} failed the integrity check: {'; '.join(problems[:5])}",
            database=str(source),
        )


def _open_existing(path: Path) -> sqlite3.Connection:
    # mode=rw: a database deleted since it was listed must not be recreated empty.
    uri = "file:" + urllib.parse.quote(str(path)) + "?mode=rw"
    return sqlite3.connect(uri, uri=True, isolation_level=None, timeout=10.0)


def _day_of(entry: Path) -> datetime.date | None:
    if not _DATE_NAME.fullmatch(entry.name) or entry.is_symlink() or not entry.is_dir():
        return None
    try:
        return datetime.date.fromisoformat(entry.name)
    except ValueError:  # 2026-13-45
        return None


def _remove_with_side_files(path: Path) -> None:
    for candidate in (path, *(path.with_name(path.name + suffix) for suffix in _SIDE_FILES)):
        with contextlib.suppress(FileNotFoundError):
            candidate.unlink()


def _fsync_file(path: Path) -> None:
    _fsync(path, os.O_RDONLY)


def _fsync_directory(path: Path) -> None:
    """Make the renames durable, so a power cut cannot bring back the previous copies."""
    _fsync(path, os.O_RDONLY | os.O_DIRECTORY)


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
