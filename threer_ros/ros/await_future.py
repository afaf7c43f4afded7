"""Wait for another thread's result inside a callback without blocking the executor.

A service whose answer comes from the worker thread (``~/reconstruct_now``) must not hold the
node's single-threaded executor: the images of the next sets keep arriving while it waits. An
``async def`` callback runs as an rclpy task, which the executor resumes each time it wakes up;
:func:`wait_for_future` suspends such a callback until a :class:`concurrent.futures.Future` is
done or a timeout passed, and triggers a guard condition at both moments, so the executor
wakes up (and resumes the callback) then, also when no message arrives.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any, Generator

from rclpy.exceptions import InvalidHandle
from rclpy.guard_condition import GuardCondition


class _NextWakeUp:
    """Awaiting it suspends the task until the executor resumes it (its next wake-up)."""

    def __await__(self) -> Generator[None, None, None]:
        yield


def _wake_up(wake: GuardCondition) -> None:
    """Trigger ``wake``; nothing to wake once its node is destroyed (a shutdown that came
    while a callback waited)."""
    try:
        wake.trigger()
    except InvalidHandle:
        pass


async def wait_for_future(future: Future[Any], wake: GuardCondition, timeout_s: float) -> bool:
    """Suspend the calling coroutine callback until ``future`` is done or ``timeout_s``
    seconds have passed; the executor runs other callbacks meanwhile.

    Args:
        future: Completed by another thread.
        wake: A guard condition of a node in the executor, in a callback group that is free
            while the caller waits (its callback may do nothing); it is triggered when
            ``future`` completes and at the timeout.
        timeout_s: Longest wait (seconds).

    Returns:
        Whether ``future`` is done.
    """
    deadline = time.monotonic() + timeout_s
    future.add_done_callback(lambda _: _wake_up(wake))
    timer = threading.Timer(timeout_s, _wake_up, args=(wake,))
    timer.daemon = True
    timer.start()
    try:
        while not future.done() and time.monotonic() < deadline:
            await _NextWakeUp()
    finally:
        timer.cancel()
    return future.done()
