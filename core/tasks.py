"""Stopping background tasks within a deadline.

`task.cancel()` followed by `await task` waits for as long as the task takes to notice. On
Python 3.11 a cancellation can be lost inside `asyncio.wait_for` (CPython gh-86296, fixed in
3.12), and the libraries our tasks sit in (redis-py, amqtt, asyncpg) use it; the task then runs
on and a plain `await` hangs the whole shutdown (seen twice: the embedded broker's and the MQTT
drain's stop). Every stop path therefore waits with `asyncio.wait(..., timeout=)`, which never
waits past its deadline, and logs what did not stop instead of hanging.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("core.tasks")

STOP_TIMEOUT_S = 10.0


def raise_if_cancelled() -> None:
    """Raise CancelledError when this task was asked to stop. A retry loop that catches
    `Exception` calls it in its handler: a cancellation turned into another exception inside
    a library (the 3.11 `wait_for` loss above) would otherwise be logged as one more failure
    and retried, and the task would run on after its stop (seen in the test suite: an agent
    event writer outlived its test and reconnected a closed Redis client)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def stop_tasks(
    tasks: Iterable[asyncio.Future[Any]],
    what: str,
    timeout_s: float = STOP_TIMEOUT_S,
) -> bool:
    """Cancel `tasks` and wait for them up to `timeout_s`; True when all have finished. A task
    that ended with an error other than its cancellation is logged, not raised (shutdown goes
    on); one still running at the deadline is logged and left behind."""
    tasks = list(tasks)
    pending = [t for t in tasks if not t.done()]
    for task in pending:
        task.cancel()
    not_done: set[asyncio.Future[Any]] = set()
    if pending:
        _, not_done = await asyncio.wait(pending, timeout=timeout_s)
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.warning("%s ended with an error", what, exc_info=task.exception())
    if not_done:
        log.warning("%s did not stop in time", what, extra={"still_running": len(not_done)})
    return not not_done


async def finish_task(
    task: asyncio.Future[Any],
    what: str,
    grace_s: float = STOP_TIMEOUT_S,
    timeout_s: float = STOP_TIMEOUT_S,
) -> bool:
    """Wait `grace_s` for a task that was asked to stop (a flag it watches), then cancel it
    and wait up to `timeout_s` more; True when it finished."""
    done, _ = await asyncio.wait({task}, timeout=grace_s)
    if done:
        if not task.cancelled() and task.exception() is not None:
            log.warning("%s ended with an error", what, exc_info=task.exception())
        return True
    log.warning("%s did not stop within its grace; cancelling", what)
    return await stop_tasks([task], what, timeout_s)
