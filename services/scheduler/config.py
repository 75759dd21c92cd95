"""The ``[scheduler]`` config section: the default schedule, changes to it, and history upkeep.

``[scheduler.tasks.<id>]`` adds a task or replaces a default one whole; ``disable`` leaves
defaults out::

    [scheduler]
    disable = ["paper_trading_eod"]

    [scheduler.tasks.morning_analysis]
    service = "prediction"
    method = "generate_predictions"
    schedule = { at = "09:35" }
"""

from __future__ import annotations

import graphlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from services.base.config import register_section
from services.base.errors import InvalidParams
from services.scheduler.tasks import DEFAULT_TASKS, Task, parse_task


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerConfig:
    # Start from the stack's default schedule (see tasks.DEFAULT_TASKS); false: only [scheduler.tasks].
    default_tasks: bool = True
    # Default task ids to leave out.
    disable: tuple[str, ...] = ()
    tasks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # Runs older than this many days are dropped from the history (once a day).
    history_days: int = 90
    # After a long outage, at most this many missed fire times are recorded per task.
    max_missed_records: int = 200

    def __post_init__(self) -> None:
        if self.history_days < 1 or self.max_missed_records < 1:
            raise ValueError("history_days and max_missed_records must be at least 1")
        defaults = {task["id"] for task in DEFAULT_TASKS}
        unknown = [task_id for task_id in self.disable if task_id not in defaults]
        if unknown:
            raise ValueError(f"disable: {unknown[0]!r} is not a default task ({', '.join(sorted(defaults))})")
        try:
            check_task_set(self.configured_tasks().values())
        except InvalidParams as exc:
            raise ValueError(f"{exc.data['field']}: {exc.message}") from None

    def configured_tasks(self) -> dict[str, Task]:
        """The default tasks left enabled, with ``[scheduler.tasks]`` added or replacing them."""
        tasks: dict[str, Task] = {}
        if self.default_tasks:
            for raw in DEFAULT_TASKS:
                if raw["id"] not in self.disable:
                    tasks[raw["id"]] = parse_task(raw, where=f"default task {raw['id']}")
        raw_task: Mapping[str, Any]
        for task_id, raw_task in self.tasks.items():
            tasks[task_id] = parse_task(raw_task, where=f"tasks.{task_id}", task_id=task_id)
        return tasks


def check_task_set(tasks: Iterable[Task], *, where: str = "tasks") -> None:
    """Every dependency names a task of the set, and no task waits on itself through others."""
    by_id = {task.id: task for task in tasks}
    for task in by_id.values():
        for dependency in task.depends_on:
            if dependency not in by_id:
                raise InvalidParams(
                    f"task {task.id!r} depends on {dependency!r}, which is not scheduled",
                    field=f"{where}.{task.id}.depends_on",
                )
    try:
        graphlib.TopologicalSorter({t.id: t.depends_on for t in by_id.values()}).prepare()
    except graphlib.CycleError as exc:
        cycle = " -> ".join(exc.args[1])
        raise InvalidParams(f"dependencies form a cycle: {cycle}", field=f"{where}.depends_on") from None


register_section("scheduler", SchedulerConfig)
