"""Per-camera work off the executor thread: one thread per camera, keep-last queues.

Decoding a compressed 1100 x 1604 image takes milliseconds of CPU; a 16-camera rig at 10 Hz
sends 160 a second, more than the executor thread can decode alone while it also takes the
messages. OpenCV releases the GIL while it decodes, so :class:`CameraQueues` runs each camera's
jobs on a thread of its own: cameras decode in parallel and each camera's images stay in
arrival order (the synchroniser relies on that). A camera whose thread falls behind keeps its
newest ``depth`` jobs, like a keep-last QoS queue, and counts the ones it dropped.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

Job = Callable[[], None]


class _CameraThread:
    """One camera's queue and the thread that empties it."""

    def __init__(self, name: str, depth: int, on_error: Callable[[Exception], None]
                 ) -> None:
        self.jobs: deque[Job] = deque()
        self.depth = depth
        self.dropped = 0
        self.busy = False
        self.closing = False
        self.cond = threading.Condition()
        self._on_error = on_error
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def put(self, job: Job) -> None:
        with self.cond:
            if len(self.jobs) >= self.depth:
                self.jobs.popleft()
                self.dropped += 1
            self.jobs.append(job)
            self.cond.notify_all()

    def _run(self) -> None:
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.jobs or self.closing)
                if not self.jobs:                    # closing, nothing left
                    return
                job, self.busy = self.jobs.popleft(), True
            try:
                job()
            except Exception as exc:  # noqa: BLE001 - reported; the thread goes on
                self._on_error(exc)
            finally:
                with self.cond:
                    self.busy = False
                    self.cond.notify_all()

    def idle(self) -> bool:
        return not self.jobs and not self.busy


class CameraQueues:
    """Run each camera's jobs in order on that camera's own thread.

    Args:
        depth: Most jobs waiting per camera; a new job beyond it drops the oldest waiting one.
        on_error: Called (on the camera's thread) with an exception a job raised; the thread
            goes on with the next job.
    """

    def __init__(self, depth: int, on_error: Callable[[str, Exception], None]) -> None:
        if depth < 1:
            raise ValueError(f"a queue depth of {depth}: need at least 1")
        self._depth = depth
        self._on_error = on_error
        self._cameras: dict[str, _CameraThread] = {}
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, camera: str, job: Job) -> None:
        """Queue ``job`` behind ``camera``'s earlier jobs (nothing after :meth:`close`)."""
        with self._lock:
            if self._closed:
                return
            queue = self._cameras.get(camera)
            if queue is None:
                queue = self._cameras[camera] = _CameraThread(
                    f"camera-{camera}", self._depth,
                    lambda exc, camera=camera: self._on_error(camera, exc))
        queue.put(job)

    def dropped(self, camera: str) -> int:
        """Jobs of ``camera`` dropped because its thread was ``depth`` jobs behind."""
        queue = self._cameras.get(camera)
        return queue.dropped if queue is not None else 0

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s`` in all) until every camera's queue is empty and its
        last job done; whether they are."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            queues = list(self._cameras.values())
        for queue in queues:
            with queue.cond:
                if not queue.cond.wait_for(queue.idle,
                                           timeout=max(0.0, deadline - time.monotonic())):
                    return False
        return True

    def close(self, timeout_s: float) -> None:
        """Drop waiting jobs, let running ones finish, and join the threads (each at most
        ``timeout_s``); later :meth:`submit` calls do nothing."""
        with self._lock:
            self._closed = True
            queues = list(self._cameras.values())
        for queue in queues:
            with queue.cond:
                queue.jobs.clear()
                queue.closing = True
                queue.cond.notify_all()
        for queue in queues:
            queue.thread.join(timeout_s)

