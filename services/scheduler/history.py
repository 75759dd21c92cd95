"""The scheduler's SQLite tables: task definitions with their planned next run, runs and attempts."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import orjson

from services.base.clock import utc_iso
from services.base.db import Database, transaction

# Outcomes of a run that actually tried (or was refused for a reason of its own).
FAILURES = frozenset({"failed", "blocked", "interrupted"})
RAN = FAILURES | {"succeeded"}
RESULT_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class TaskRow:
    id: str
    definition: dict[str, Any]
    origin: str
    removed: bool
    next_run: str | None


@dataclass(frozen=True, slots=True)
class RunSummary:
    id: int
    trigger: str
    scheduled_for: str | None
    started_at: str
    ended_at: str | None
    outcome: str
    error: str | None

    def to_wire(self) -> dict[str, Any]:
        return {
            "run_id": self.id,
            "trigger": self.trigger,
            "scheduled_for": self.scheduled_for,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "outcome": self.outcome,
            "error": self.error,
        }


class NewRun(NamedTuple):
    """A run to insert: one starting (outcome ``running``) or one settled at once (``skipped``)."""

    trigger: str
    scheduled_for: datetime | None
    outcome: str = "running"
    error: str | None = None


_RUN_COLUMNS = "id, trigger, scheduled_for, started_at, ended_at, outcome, error"


def _iso(when: datetime | None) -> str | None:
    return utc_iso(when) if when is not None else None


class RunStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- tasks ----------------------------------------------------------------------------

    async def load_tasks(self) -> dict[str, TaskRow]:
        rows = await self.db.run(
            lambda conn: conn.execute(
                "SELECT id, definition, origin, removed, next_run FROM tasks"
            ).fetchall()
        )
        return {row[0]: TaskRow(row[0], orjson.loads(row[1]), row[2], bool(row[3]), row[4]) for row in rows}

    async def save_tasks(self, definitions: list[tuple[dict[str, Any], str]], at: datetime) -> None:
        """Store (definition, origin) pairs as active tasks, clearing earlier removals; planned runs kept."""
        stamp = utc_iso(at)
        await self._write_many(
            "INSERT INTO tasks (id, definition, origin, removed, updated_at) VALUES (?, ?, ?, 0, ?)"
            " ON CONFLICT (id) DO UPDATE SET definition = excluded.definition,"
            " origin = excluded.origin, removed = 0, updated_at = excluded.updated_at",
            [(d["id"], orjson.dumps(d).decode(), origin, stamp) for d, origin in definitions],
        )

    async def mark_removed(self, task_id: str, at: datetime) -> None:
        await self._write(
            "UPDATE tasks SET removed = 1, next_run = NULL, updated_at = ? WHERE id = ?",
            (utc_iso(at), task_id),
        )

    async def forget_tasks(self, task_ids: list[str]) -> None:
        """Drop definitions no longer configured (their runs stay in the history)."""
        await self._write_many("DELETE FROM tasks WHERE id = ?", [(task_id,) for task_id in task_ids])

    async def set_next_run(self, task_id: str, next_run: datetime | None) -> None:
        await self._write("UPDATE tasks SET next_run = ? WHERE id = ?", (_iso(next_run), task_id))

    # -- runs -----------------------------------------------------------------------------

    async def interrupt_running(self, at: datetime, reason: str) -> list[tuple[str, RunSummary]]:
        """Close the runs and attempts a stopped scheduler left open; returns (task id, run) of each."""
        stamp = utc_iso(at)

        def write(conn: sqlite3.Connection) -> list[tuple[str, RunSummary]]:
            with transaction(conn):
                rows = conn.execute(
                    f"SELECT task_id, {_RUN_COLUMNS} FROM runs WHERE outcome = 'running'"
                ).fetchall()
                conn.execute(
                    "UPDATE attempts SET outcome = 'failed', ended_at = ?, error = ?"
                    " WHERE outcome = 'running'",
                    (stamp, reason),
                )
                conn.execute(
                    "UPDATE runs SET outcome = 'interrupted', ended_at = ?, error = ?"
                    " WHERE outcome = 'running'",
                    (stamp, reason),
                )
            return [
                (row[0], RunSummary(row[1], row[2], row[3], row[4], stamp, "interrupted", reason))
                for row in rows
            ]

        return await self.db.run(write)

    async def interrupt_run(self, run: RunSummary, at: datetime, reason: str) -> RunSummary:
        """Close one run (and its attempt in progress) that a stop cut short."""
        stamp = utc_iso(at)

        def write(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute(
                    "UPDATE attempts SET outcome = 'failed', ended_at = ?, error = ?"
                    " WHERE run_id = ? AND outcome = 'running'",
                    (stamp, reason, run.id),
                )
                conn.execute(
                    "UPDATE runs SET outcome = 'interrupted', ended_at = ?, error = ? WHERE id = ?",
                    (stamp, reason, run.id),
                )

        await self.db.run(write)
        return RunSummary(
            run.id, run.trigger, run.scheduled_for, run.started_at, stamp, "interrupted", reason
        )

    async def start_run(
        self, task_id: str, *, trigger: str, at: datetime, scheduled_for: datetime | None = None
    ) -> RunSummary:
        """Insert a run starting now, outside the schedule (``execute_task``)."""
        values = (trigger, _iso(scheduled_for), utc_iso(at), None, "running", None)

        def write(conn: sqlite3.Connection) -> int:
            with transaction(conn):
                return _insert_run(conn, task_id, values)

        return RunSummary(await self.db.run(write), *values)

    async def record_fire(
        self,
        task_id: str,
        *,
        missed: list[datetime],
        missed_reason: str,
        next_run: datetime | None,
        new_run: NewRun | None,
        at: datetime,
    ) -> tuple[list[RunSummary], RunSummary | None]:
        """In one transaction: the missed fire times, the task's next planned run, and a new run."""
        stamp = utc_iso(at)
        missed_rows = [("schedule", utc_iso(when), stamp, stamp, "missed", missed_reason) for when in missed]
        new_row = None
        if new_run is not None:
            ended = None if new_run.outcome == "running" else stamp
            scheduled = _iso(new_run.scheduled_for)
            new_row = (new_run.trigger, scheduled, stamp, ended, new_run.outcome, new_run.error)

        def write(conn: sqlite3.Connection) -> tuple[list[RunSummary], RunSummary | None]:
            with transaction(conn):
                runs = [RunSummary(_insert_run(conn, task_id, row), *row) for row in missed_rows]
                conn.execute("UPDATE tasks SET next_run = ? WHERE id = ?", (_iso(next_run), task_id))
                run = RunSummary(_insert_run(conn, task_id, new_row), *new_row) if new_row else None
            return runs, run

        return await self.db.run(write)

    async def start_attempt(self, run_id: int, attempt: int, at: datetime) -> None:
        def write(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute(
                    "INSERT INTO attempts (run_id, attempt, started_at, outcome) VALUES (?, ?, ?, 'running')",
                    (run_id, attempt, utc_iso(at)),
                )
                conn.execute("UPDATE runs SET attempts = ? WHERE id = ?", (attempt, run_id))

        await self.db.run(write)

    async def fail_attempt(self, run_id: int, attempt: int, at: datetime, error: str) -> None:
        await self._write(
            "UPDATE attempts SET ended_at = ?, outcome = 'failed', error = ?"
            " WHERE run_id = ? AND attempt = ?",
            (utc_iso(at), error, run_id, attempt),
        )

    async def finish_run(
        self, run: RunSummary, at: datetime, outcome: str, error: str | None, result: Any = None
    ) -> RunSummary:
        """Settle a run, and its last attempt if that is still open, in one transaction."""
        ended = utc_iso(at)
        summary = _summarise(result)
        attempt_outcome = "succeeded" if outcome == "succeeded" else "failed"

        def write(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute(
                    "UPDATE attempts SET ended_at = ?, outcome = ?, error = ?"
                    " WHERE run_id = ? AND outcome = 'running'",
                    (ended, attempt_outcome, error, run.id),
                )
                conn.execute(
                    "UPDATE runs SET ended_at = ?, outcome = ?, error = ?, result = ? WHERE id = ?",
                    (ended, outcome, error, summary, run.id),
                )

        await self.db.run(write)
        return RunSummary(run.id, run.trigger, run.scheduled_for, run.started_at, ended, outcome, error)

    async def recent(self, task_ids: list[str], per_task: int = 50) -> dict[str, list[RunSummary]]:
        """The newest runs of each task, newest first (for last-run and failure-streak figures)."""

        def read(conn: sqlite3.Connection) -> dict[str, list[RunSummary]]:
            found: dict[str, list[RunSummary]] = {}
            for task_id in task_ids:
                rows = conn.execute(
                    f"SELECT {_RUN_COLUMNS} FROM runs WHERE task_id = ? ORDER BY id DESC LIMIT ?",
                    (task_id, per_task),
                ).fetchall()
                found[task_id] = [RunSummary(*row) for row in rows]
            return found

        return await self.db.run(read)

    async def history(self, task_id: str, limit: int) -> list[dict[str, Any]]:
        """Runs of ``task_id``, newest first, each with its attempts and result summary."""

        def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            runs = conn.execute(
                f"SELECT {_RUN_COLUMNS}, attempts, result FROM runs"
                " WHERE task_id = ? ORDER BY id DESC LIMIT ?",
                (task_id, limit),
            ).fetchall()
            records = []
            for row in runs:
                record = RunSummary(*row[:7]).to_wire()
                record["attempt_count"] = row[7]
                record["result"] = orjson.loads(row[8]) if row[8] is not None else None
                record["attempts"] = [
                    {"attempt": a, "started_at": s, "ended_at": e, "outcome": o, "error": err}
                    for a, s, e, o, err in conn.execute(
                        "SELECT attempt, started_at, ended_at, outcome, error FROM attempts"
                        " WHERE run_id = ? ORDER BY attempt",
                        (row[0],),
                    )
                ]
                records.append(record)
            return records

        return await self.db.run(read)

    async def has_runs(self, task_id: str) -> bool:
        row = await self.db.run(
            lambda conn: conn.execute("SELECT 1 FROM runs WHERE task_id = ? LIMIT 1", (task_id,)).fetchone()
        )
        return row is not None

    async def prune(self, before: datetime) -> int:
        """Delete finished runs that started before ``before``, with their attempts."""

        def write(conn: sqlite3.Connection) -> int:
            with transaction(conn):
                return conn.execute(
                    "DELETE FROM runs WHERE started_at < ? AND outcome != 'running'", (utc_iso(before),)
                ).rowcount

        return await self.db.run(write)

    async def _write(self, sql: str, args: tuple[Any, ...]) -> None:
        await self._write_many(sql, [args])

    async def _write_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        def write(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.executemany(sql, rows)

        if rows:
            await self.db.run(write)


def _insert_run(conn: sqlite3.Connection, task_id: str, row: tuple[Any, ...]) -> int:
    """Insert (trigger, scheduled_for, started_at, ended_at, outcome, error) as a run; its id."""
    cursor = conn.execute(
        "INSERT INTO runs (task_id, trigger, scheduled_for, started_at, ended_at, outcome, error)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (task_id, *row),
    )
    return int(cursor.lastrowid or 0)


def _summarise(result: Any) -> str | None:
    """The answer as JSON, or a note of its size when it is too long to keep whole."""
    if result is None:
        return None
    text = orjson.dumps(result, default=str).decode()
    if len(text) <= RESULT_LIMIT:
        return text
    return orjson.dumps({"truncated": True, "bytes": len(text), "start": text[:512]}).decode()


def consecutive_failures(runs: list[RunSummary]) -> int:
    """Failed, blocked or interrupted runs in a row, newest first; missed and skipped runs pass."""
    count = 0
    for run in runs:
        if run.outcome == "succeeded":
            break
        if run.outcome in FAILURES:
            count += 1
    return count
