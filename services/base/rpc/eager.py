"""Run a coroutine inline until it first suspends, and make a task only if it does.

Most RPC methods answer from memory and never suspend; creating a task for them costs more than
the call. This is what ``asyncio.eager_task_factory`` does from Python 3.12, for 3.11.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine, Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Pending(Generic[T]):
    """A coroutine that suspended on its first step; ``task`` finishes it."""

    __slots__ = ("task",)

    def __init__(self, task: asyncio.Task[T]) -> None:
        self.task = task


def start_eagerly(coroutine: Coroutine[Any, Any, T]) -> T | Pending[T]:
    """Run ``coroutine`` in a fresh context; its result, or ``Pending`` with the task that goes on."""
    context = contextvars.copy_context()
    try:
        yielded = context.run(coroutine.send, None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    loop = asyncio.get_running_loop()
    return Pending(loop.create_task(_resume(coroutine, yielded), context=context))


class _YieldOnce:
    # Hands the suspended coroutine's future (or None, for a bare yield) to the task driving us.
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, None]:
        yield self.value


async def _resume(coroutine: Coroutine[Any, Any, T], yielded: Any) -> T:
    while True:
        try:
            await _YieldOnce(yielded)
        except BaseException as exc:  # the task was cancelled: deliver it to the coroutine
            step = coroutine.throw
            argument: Any = exc
        else:
            step = coroutine.send  # type: ignore[assignment]
            argument = None
        try:
            yielded = step(argument)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
