"""Background reconstruction with a newest-set-wins slot, pipelined (plain Python, no ROS).

The ROS executor hands complete frame sets to :meth:`LatestSetWorker.submit` and returns at
once. A worker thread reconstructs the newest pending set; a set that is replaced before the
worker takes it is dropped and counted, so inference never blocks the executor and never falls
behind the cameras. A second thread delivers the results (builds and publishes the messages)
in order, so that the reconstruction of set k + 1 runs while set k is published: a set costs
the longer of the two stages, not their sum. A finished result is never dropped: when
delivery falls :data:`DELIVERY_DEPTH` results behind, the worker waits for it.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: Results that may wait for delivery while the worker reconstructs the next set.
DELIVERY_DEPTH = 2


@dataclass
class WorkerStats:
    """Counters of a :class:`LatestSetWorker` (monotonic; read for diagnostics)."""

    submitted: int = 0
    dropped: int = 0       # replaced by a newer set before the worker took it
    rate_limited: int = 0  # dropped because the last reconstruction started < 1/max_rate ago
    completed: int = 0     # delivered
    failed: int = 0        # the job or its delivery raised
    last_duration_s: float = 0.0


class LatestSetWorker(Generic[T, R]):
    """Run ``process(item)`` on a worker thread for the newest submitted item.

    Args:
        process: The work (e.g. a backend's ``reconstruct``); runs on the worker thread.
        on_result: Called on the delivery thread with ``(item, result)``, in job order.
        on_error: Called with ``(item, exception)`` when the job (on the worker thread) or
            ``on_result`` (on the delivery thread) raised; both threads continue.
        max_rate: Start at most this many jobs per second (0 = unlimited); items arriving
            sooner are dropped and counted as ``rate_limited``.
    """

    def __init__(self, process: Callable[[T], R], on_result: Callable[[T, R], None],
                 on_error: Callable[[T, BaseException], None], max_rate: float = 0.0,
                 name: str = "reconstruction") -> None:
        self._process = process
        self._on_result = on_result
        self._on_error = on_error
        self._min_period = 1.0 / max_rate if max_rate > 0 else 0.0
        self._cond = threading.Condition()
        self._pending: T | None = None
        self._pending_requested = False   # the pending item was asked for: never replaced
        self._busy = False
        self._undelivered = 0             # results handed to the delivery thread, not yet done
        self._stopping = False
        self._last_start = -float("inf")
        self._delivery: queue.Queue = queue.Queue(maxsize=DELIVERY_DEPTH)
        self.stats = WorkerStats()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._deliverer = threading.Thread(target=self._deliver, name=f"{name} delivery",
                                           daemon=True)
        self._thread.start()
        self._deliverer.start()

    def submit(self, item: T, requested: bool = False) -> None:
        """Offer ``item``; it replaces a pending item that the worker has not started.

        A ``requested`` item (a service asked for it) ignores the rate limit and is never
        replaced by a later unrequested one (which is dropped instead) nor discarded by
        :meth:`discard_pending`; the caller learns its outcome through ``on_result`` /
        ``on_error``.
        """
        with self._cond:
            self.stats.submitted += 1
            if self._pending is not None and self._pending_requested and not requested:
                self.stats.dropped += 1
                return
            if self._pending is not None:
                self.stats.dropped += 1
            elif not requested and not self._busy and \
                    time.monotonic() - self._last_start < self._min_period:
                self.stats.rate_limited += 1
                return
            self._pending, self._pending_requested = item, requested
            self._cond.notify()

    def set_max_rate(self, max_rate: float) -> None:
        """Change the rate limit (jobs per second, 0 = unlimited) from now on."""
        with self._cond:
            self._min_period = 1.0 / max_rate if max_rate > 0 else 0.0

    def discard_pending(self) -> None:
        """Forget the pending item unless it was requested (a paused node)."""
        with self._cond:
            if not self._pending_requested:
                self._pending = None
            self._cond.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is pending, running or waiting for delivery; True unless
        ``timeout`` expired."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self._pending is None and not self._busy and self._undelivered == 0,
                timeout=timeout)

    def stop(self, timeout: float | None = None) -> None:
        """Finish the running job and deliver the finished results (pending items are
        discarded), then end both threads; by default waits for them (a reconstruction cannot
        be interrupted half-way)."""
        with self._cond:
            self._stopping = True
            self._pending = None
            self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        self._thread.join(timeout)

        def remaining() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        try:                              # after the worker's last result: ends the deliverer
            self._delivery.put(None, timeout=remaining())
        except queue.Full:                # delivery is stuck past the timeout: leave it
            return
        self._deliverer.join(remaining())

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._stopping)
                if self._stopping:
                    return
                item, self._pending = self._pending, None
                self._busy = True
                self._last_start = time.monotonic()
            try:
                result = self._process(item)
            except Exception as exc:  # noqa: BLE001 - reported; the worker must survive
                self._count_failure(item, exc)
            else:
                with self._cond:
                    self._undelivered += 1
                self._delivery.put((item, result))    # waits while delivery is behind
            finally:
                with self._cond:
                    self._busy = False
                    self.stats.last_duration_s = time.monotonic() - self._last_start
                    self._cond.notify_all()

    def _deliver(self) -> None:
        while (job := self._delivery.get()) is not None:
            item, result = job
            try:
                self._on_result(item, result)
                with self._cond:
                    self.stats.completed += 1
            except Exception as exc:  # noqa: BLE001 - reported; delivery must survive
                self._count_failure(item, exc)
            finally:
                with self._cond:
                    self._undelivered -= 1
                    self._cond.notify_all()

    def _count_failure(self, item: T, exc: BaseException) -> None:
        with self._cond:
            self.stats.failed += 1
        self._on_error(item, exc)
