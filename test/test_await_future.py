"""wait_for_future: a callback that waits for another thread's result leaves the
single-threaded executor free, and resumes when the result comes or the time is up, also
when no message wakes the executor (real rclpy executor, this module's domain)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import pytest

rclpy = pytest.importorskip("rclpy", reason="the ROS layer needs rclpy (make test installs it)")

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup  # noqa: E402
from rclpy.node import Node  # noqa: E402

from threer_ros.ros.await_future import wait_for_future  # noqa: E402
from threer_ros.ros.spinning import SpinningNodes  # noqa: E402

LIMIT_S = 60.0      # generous: the point is that it ends at all, not how fast


class Waiter(Node):
    """Starts one waiting callback (a one-shot timer in a group of its own) and counts the
    ticks of another timer meanwhile."""

    def __init__(self, context, job: Future, timeout_s: float) -> None:
        super().__init__("test_waiter", context=context)
        self.ticks = 0
        self.ticks_while_waiting = threading.Event()
        self.finished = threading.Event()
        self.result: bool | None = None
        self.waited_s = 0.0
        self._job, self._timeout_s = job, timeout_s
        self._wake = self.create_guard_condition(lambda: None)
        self._start = self.create_timer(0.01, self._wait,
                                        callback_group=MutuallyExclusiveCallbackGroup())
        self._waiting = False
        self.create_timer(0.01, self._tick)

    async def _wait(self) -> None:
        self._start.cancel()
        self._waiting = True
        started = time.monotonic()
        self.result = await wait_for_future(self._job, self._wake, self._timeout_s)
        self.waited_s = time.monotonic() - started
        self._waiting = False
        self.finished.set()

    def _tick(self) -> None:
        self.ticks += 1 if self._waiting else 0
        if self.ticks >= 5:
            self.ticks_while_waiting.set()


def test_the_executor_runs_on_while_a_callback_waits_and_the_result_resumes_it(ros_domain_id):
    job: Future[int] = Future()
    with SpinningNodes(ros_domain_id) as ros:
        waiter = ros.add(Waiter(ros.context, job, timeout_s=LIMIT_S))
        assert ros.wait(waiter.ticks_while_waiting, timeout=LIMIT_S)   # executor not held
        job.set_result(7)                    # from this thread, as the worker does
        assert ros.wait(waiter.finished, timeout=LIMIT_S)
    assert waiter.result is True and job.result() == 7
    assert waiter.waited_s < LIMIT_S / 2


def test_a_result_that_never_comes_ends_the_wait_at_its_timeout(ros_domain_id):
    job: Future[int] = Future()
    with SpinningNodes(ros_domain_id) as ros:
        waiter = ros.add(Waiter(ros.context, job, timeout_s=0.5))
        assert ros.wait(waiter.finished, timeout=LIMIT_S)
    assert waiter.result is False and not job.done()
    assert waiter.waited_s >= 0.5
