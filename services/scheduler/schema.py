"""Tables of ``data/scheduler.db``."""

from services.base.db import Migration

MIGRATIONS = [
    Migration(
        1,
        "tasks, runs and attempts",
        """
        -- One row per task the scheduler has known. origin: default, config or rpc. A task
        -- removed with unschedule_task keeps its row with removed = 1, so the removal outlives
        -- a restart even for a task the config defines. next_run is the fire time planned next:
        -- after a restart, fire times between it and now were missed while the scheduler was down.
        CREATE TABLE tasks (
            id TEXT PRIMARY KEY,
            definition TEXT NOT NULL,    -- JSON, the form schedule_task takes
            origin TEXT NOT NULL,
            removed INTEGER NOT NULL DEFAULT 0,
            next_run TEXT,
            updated_at TEXT NOT NULL
        ) WITHOUT ROWID;

        -- One row per firing of a task. trigger: schedule, misfire, manual,
        -- resume (run again after a stop cut the run short).
        -- outcome: running, succeeded, failed, blocked (a dependency had not succeeded),
        -- skipped (the previous run was still going), missed, interrupted (the scheduler stopped).
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            task_id TEXT NOT NULL,
            trigger TEXT NOT NULL,
            scheduled_for TEXT,
            started_at TEXT NOT NULL,
            ended_at TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            outcome TEXT NOT NULL,
            error TEXT,
            result TEXT                 -- JSON summary of the answer, cut to a few KiB
        );
        CREATE INDEX runs_by_task ON runs (task_id, id);
        CREATE INDEX runs_by_start ON runs (started_at);

        CREATE TABLE attempts (
            run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            attempt INTEGER NOT NULL,
            started_at TEXT NOT NULL,
            ended_at TEXT,
            outcome TEXT NOT NULL,       -- running, succeeded, failed
            error TEXT,
            PRIMARY KEY (run_id, attempt)
        ) WITHOUT ROWID;
        """,
    ),
]
