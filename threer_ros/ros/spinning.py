"""Nodes spun by a background thread and stopped in the one safe order.

rclpy is not safe when a node or its context is destroyed while another thread is spinning
it (ros2/rclpy#255, #663): the spinning thread is left inside the executor's wait set, and it
can wait there for good or loop holding the GIL, so that nothing else in the process runs
again. :class:`SpinningNodes` is the project's one way of spinning in a thread (the demo's
and latency's probe, ``threer-ros record`` and ``replay``, the tests); it stops in this order:

1. mark the executor shut down and trigger its guard condition, which wakes the thread's
   wait (the thread also re-checks at least every :data:`SPIN_PERIOD_S`, so a wake-up lost
   in a race with that wait cannot keep it there);
2. join the thread (with a time limit: a thread still running after it is reported with
   :class:`SpinThreadStuck`, and nothing is destroyed under it);
3. destroy the nodes, newest first;
4. shut the context down.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import TypeVar

import rclpy
from rclpy.context import Context
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node

#: Longest time the spinning thread waits before it checks again whether to stop (seconds).
SPIN_PERIOD_S = 0.5
#: How often :meth:`SpinningNodes.wait` checks that ROS is still up (seconds).
WAIT_PERIOD_S = 0.5

NodeT = TypeVar("NodeT", bound=Node)


class SpinThreadStuck(RuntimeError):
    """The spinning thread did not end within its time limit after it was told to stop."""


class SpinningNodes:
    """A single-threaded executor spinning nodes in a background thread.

    Use it as a context manager; nodes are created with ``context=spinning.context`` and then
    handed to :meth:`add`::

        with SpinningNodes(domain_id=7) as ros:
            probe = ros.add(OutputProbe(context=ros.context))
            probe.wait_for(...)
        # here the executor is shut down, its thread joined, the nodes and the context gone

    Args:
        domain_id: ROS domain of a private context (None: ``ROS_DOMAIN_ID``).
        command_line: Use the default context with rclpy's signal handlers (a command-line
            tool: Ctrl-C shuts ROS down and raises ``KeyboardInterrupt`` in the main thread,
            and the ``with`` block then ends quietly). Otherwise a private context without
            signal handlers (the tests: several domains in one process).
        join_timeout_s: How long :meth:`stop` waits for the spinning thread.
    """

    def __init__(self, domain_id: int | None = None, *, command_line: bool = False,
                 join_timeout_s: float = 30.0) -> None:
        if command_line and domain_id is not None:
            raise ValueError("a command-line tool takes its domain from ROS_DOMAIN_ID")
        self._command_line = command_line
        self._join_timeout_s = join_timeout_s
        self.context = rclpy.get_default_context() if command_line else Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self._executor = SingleThreadedExecutor(context=self.context)
        self._nodes: list[Node] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._spin, name="ros-spin", daemon=True)
        self._thread.start()
        #: An exception raised by a callback; it ended the spinning and is raised by stop().
        self.error: BaseException | None = None

    def add(self, node: NodeT) -> NodeT:
        """Spin ``node`` (created with ``context=self.context``) from now on; returns it.
        It is destroyed by :meth:`stop`."""
        if node.context is not self.context:
            raise ValueError(f"node {node.get_name()!r} was not created in this context")
        self._nodes.append(node)
        self._executor.add_node(node)
        return node

    def _spin(self) -> None:
        try:
            while not self._stopping.is_set() and self.context.ok():
                self._executor.spin_once(timeout_sec=SPIN_PERIOD_S)
        except ExternalShutdownException:      # Ctrl-C shut the context down
            pass
        except BaseException as exc:  # noqa: BLE001 - reported by stop(), in the caller
            if self.context.ok():
                self.error = exc
            # else Ctrl-C shut ROS down under a running callback, whose publish then failed:
            # the end the user asked for, not an error

    def ok(self) -> bool:
        """True while ROS is up and the thread spins."""
        return self.context.ok() and self._thread.is_alive()

    def wait(self, event: threading.Event | None = None, timeout: float | None = None) -> bool:
        """Block the calling thread until ``event`` is set (True), or ``timeout`` seconds
        pass, ROS is shut down or spinning ends (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        event = event or threading.Event()
        while self.ok():
            left = WAIT_PERIOD_S if deadline is None else min(WAIT_PERIOD_S,
                                                             deadline - time.monotonic())
            if left <= 0:
                return False
            if event.wait(left):
                return True
        return event.is_set()

    def stop(self) -> None:
        """Shut the executor down, join the thread, destroy the nodes, then the context.

        Raises:
            SpinThreadStuck: the thread still runs after ``join_timeout_s``; the nodes and
                the context are left alone (destroying them under it is what hangs).
            RuntimeError: a callback raised (the exception is the cause).
        """
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._executor.shutdown(timeout_sec=0)    # triggers the guard condition: a wake-up
        self._thread.join(self._join_timeout_s)
        if self._thread.is_alive():
            raise SpinThreadStuck(f"the thread spinning {[n.get_name() for n in self._nodes]} "
                                  f"did not stop within {self._join_timeout_s:.0f} s")
        for node in reversed(self._nodes):
            node.destroy_node()
        self._nodes.clear()
        if self._command_line:
            rclpy.try_shutdown()
        else:
            self.context.try_shutdown()
        if self.error is not None:
            raise RuntimeError(f"a callback failed: {self.error!r}") from self.error

    def __enter__(self) -> "SpinningNodes":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        self.stop()     # an error here is raised with the block's own exception as context
        interrupted = exc_type is not None and issubclass(
            exc_type, (KeyboardInterrupt, ExternalShutdownException))
        return self._command_line and interrupted
