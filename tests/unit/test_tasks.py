"""Stopping background tasks never waits past its deadline, even for a task that swallows its
cancellation (what CPython gh-86296 does inside `asyncio.wait_for` on Python 3.11)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import pytest

from core.tasks import finish_task, raise_if_cancelled, stop_tasks


async def _stubborn(release: asyncio.Event) -> None:
    while not release.is_set():
        with contextlib.suppress(asyncio.CancelledError):
            await release.wait()  # a lost cancellation: the loop goes on


async def test_a_task_that_swallows_its_cancellation_does_not_hang_the_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()
    stubborn = asyncio.create_task(_stubborn(release))
    polite = asyncio.create_task(asyncio.Event().wait())
    await asyncio.sleep(0)  # both running
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="core.tasks"):
        assert await stop_tasks([stubborn, polite], "test tasks", timeout_s=0.2) is False
    assert time.monotonic() - started < 2.0
    assert polite.cancelled() and not stubborn.done()
    assert "test tasks did not stop in time" in caplog.text
    release.set()
    await asyncio.wait({stubborn}, timeout=2.0)
    assert stubborn.done()


async def test_errors_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def boom() -> None:
        raise RuntimeError("broken")

    failed = asyncio.create_task(boom())
    await asyncio.wait({failed})
    with caplog.at_level(logging.WARNING, logger="core.tasks"):
        assert await stop_tasks([failed], "failing task") is True
    assert "failing task ended with an error" in caplog.text and "broken" in caplog.text


async def test_finish_waits_for_a_graceful_end_then_cancels() -> None:
    stop = asyncio.Event()

    async def worker() -> str:
        await stop.wait()
        return "done"

    task = asyncio.create_task(worker())
    stop.set()
    assert await finish_task(task, "worker", grace_s=1.0) is True
    assert task.result() == "done"

    deaf = asyncio.create_task(asyncio.Event().wait())  # ignores the stop flag
    assert await finish_task(deaf, "deaf worker", grace_s=0.05, timeout_s=1.0) is True
    assert deaf.cancelled()


async def _retrying_loop(turns: list[int]) -> None:
    """A background loop as the agent event writer and the outbox dispatcher run: a failure
    is logged and tried again. A library turns the cancellation into another exception."""
    while True:
        turns.append(1)
        try:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                raise ConnectionError("a cancellation a library turned into this") from None
        except Exception:
            raise_if_cancelled()
            await asyncio.sleep(0)  # retried: without the check, for ever


async def test_a_retry_loop_ends_at_its_stop_though_a_library_swallowed_the_cancellation() -> None:
    turns: list[int] = []
    task = asyncio.create_task(_retrying_loop(turns))
    await asyncio.sleep(0)
    assert await stop_tasks([task], "retrying loop", timeout_s=1.0)
    assert task.cancelled()
    assert len(turns) == 1


async def test_raise_if_cancelled_is_quiet_when_no_stop_was_asked() -> None:
    raise_if_cancelled()  # the test's own task: not cancelled
