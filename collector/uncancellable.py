"""Run a shutdown to its end even when the task that asked for it is cancelled."""

from __future__ import annotations

import asyncio
from typing import Coroutine, TypeVar

T = TypeVar("T")


async def finish_despite_cancel(coro: Coroutine[object, object, T], name: str) -> T:
    """``await coro`` in a task of its own; a cancel of the caller waits for that task to finish
    and is passed on afterwards.

    A shutdown cancelled half-way (a second Ctrl-C, a supervisor's timeout around it) left
    acknowledged calls queued and unprocessed, detector state unsaved and child processes running.
    The caller still sees its cancel, once everything the shutdown does is done. The shutdown's
    own failure, if any, is raised when there was no cancel (with one, the cancel wins: the
    failure was logged where it happened)."""
    task = asyncio.create_task(coro, name=name)
    interrupted: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.wait({task})  # a cancel of this task does not reach ``task``
        except asyncio.CancelledError as exc:
            interrupted = exc
    if interrupted is not None:
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not report it as never retrieved
        raise interrupted
    return task.result()


async def stop_task(task: asyncio.Task[object] | None) -> None:
    """Cancel a background loop and wait for it to end. Its own ``CancelledError`` is swallowed; a
    cancel of the task calling this (a caller's timeout, a cancelled shutdown) is passed on."""
    if task is None:
        return
    me = asyncio.current_task()
    cancels = me.cancelling() if me is not None else 0
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        if me is not None and me.cancelling() > cancels:
            raise  # the caller was cancelled, not only the loop
