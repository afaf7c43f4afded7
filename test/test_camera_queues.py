"""CameraQueues: each camera's jobs in order on its own thread, cameras in parallel, a keep-last
queue per camera, errors reported without stopping the thread, and a close that joins."""

from __future__ import annotations

import threading

import pytest

from threer_ros.ros.camera_queues import CameraQueues

LIMIT_S = 60.0


def test_a_blocked_camera_does_not_hold_the_others_and_each_keeps_its_order():
    errors: list[tuple[str, Exception]] = []
    queues = CameraQueues(depth=10, on_error=lambda c, e: errors.append((c, e)))
    release, started = threading.Event(), threading.Event()
    done: dict[str, list[int]] = {"a": [], "b": []}

    def blocked() -> None:
        started.set()
        assert release.wait(LIMIT_S)

    queues.submit("a", blocked)
    assert started.wait(LIMIT_S)
    for i in range(5):
        queues.submit("a", lambda i=i: done["a"].append(i))
        queues.submit("b", lambda i=i: done["b"].append(i))
    b_done = threading.Event()
    queues.submit("b", b_done.set)
    assert b_done.wait(LIMIT_S) and done["b"] == [0, 1, 2, 3, 4] and done["a"] == []
    release.set()
    assert queues.wait_idle(LIMIT_S)
    assert done["a"] == [0, 1, 2, 3, 4] and not errors
    queues.close(LIMIT_S)


def test_a_camera_that_falls_behind_keeps_its_newest_jobs_and_counts_the_rest():
    queues = CameraQueues(depth=2, on_error=lambda c, e: None)
    release, started = threading.Event(), threading.Event()
    ran: list[int] = []
    queues.submit("a", lambda: (started.set(), release.wait(LIMIT_S)))
    assert started.wait(LIMIT_S)
    for i in range(5):                       # two may wait: 0, 1, 2 are dropped
        queues.submit("a", lambda i=i: ran.append(i))
    release.set()
    assert queues.wait_idle(LIMIT_S)
    assert ran == [3, 4] and queues.dropped("a") == 3 and queues.dropped("b") == 0
    queues.close(LIMIT_S)


def test_a_failing_job_is_reported_and_the_camera_goes_on():
    errors: list[tuple[str, Exception]] = []
    queues = CameraQueues(depth=5, on_error=lambda c, e: errors.append((c, e)))
    after = threading.Event()
    queues.submit("cam", lambda: 1 / 0)
    queues.submit("cam", after.set)
    assert after.wait(LIMIT_S)
    assert [(c, type(e)) for c, e in errors] == [("cam", ZeroDivisionError)]
    queues.close(LIMIT_S)


def test_close_drops_waiting_jobs_joins_the_threads_and_ignores_later_ones():
    queues = CameraQueues(depth=5, on_error=lambda c, e: None)
    release, started = threading.Event(), threading.Event()
    ran: list[str] = []
    queues.submit("a", lambda: (started.set(), release.wait(LIMIT_S), ran.append("running")))
    assert started.wait(LIMIT_S)
    queues.submit("a", lambda: ran.append("waiting"))
    thread = next(t for t in threading.enumerate() if t.name == "camera-a")
    queues.close(timeout_s=0.0)              # drops "waiting"; the running job goes on
    release.set()
    thread.join(LIMIT_S)
    assert not thread.is_alive() and ran == ["running"]
    queues.submit("a", lambda: ran.append("late"))
    assert ran == ["running"] and queues.wait_idle(LIMIT_S)
    with pytest.raises(ValueError, match="depth"):
        CameraQueues(depth=0, on_error=lambda c, e: None)
