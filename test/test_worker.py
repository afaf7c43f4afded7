"""The newest-set-wins worker: never blocks the caller, drops stale sets, survives failures."""

from __future__ import annotations

import threading

from threer_ros.ros.worker import LatestSetWorker


def test_newest_pending_item_replaces_older_ones_and_drops_are_counted():
    gate = threading.Event()
    started = threading.Event()
    done: list[int] = []

    def process(item: int) -> int:
        if item == 0:
            started.set()
            gate.wait(10)
        return item * 10

    worker = LatestSetWorker(process, lambda item, result: done.append(result),
                             lambda item, exc: None)
    worker.submit(0)
    assert started.wait(10)
    for item in (1, 2, 3):        # the worker is busy: only the newest survives
        worker.submit(item)
    gate.set()
    assert worker.wait_idle(10)
    worker.stop()
    assert done == [0, 30]
    assert (worker.stats.submitted, worker.stats.dropped, worker.stats.completed) == (4, 2, 2)


def test_a_failing_job_is_reported_and_the_worker_keeps_going():
    errors: list[str] = []
    results: list[int] = []

    def process(item: int) -> int:
        if item == 1:
            raise ValueError("bad set")
        return item

    worker = LatestSetWorker(process, lambda item, r: results.append(r),
                             lambda item, exc: errors.append(str(exc)))
    for item in (1, 2):
        worker.submit(item)
        assert worker.wait_idle(10)
    worker.stop()
    assert errors == ["bad set"] and results == [2]
    assert worker.stats.failed == 1 and worker.stats.completed == 1


def test_max_rate_limits_how_often_jobs_start():
    results: list[int] = []
    worker = LatestSetWorker(lambda item: item, lambda item, r: results.append(r),
                             lambda item, exc: None, max_rate=0.001)  # one job per 1000 s
    worker.submit(1)
    assert worker.wait_idle(10)
    worker.submit(2)
    assert worker.wait_idle(10)
    worker.stop()
    assert results == [1] and worker.stats.rate_limited == 1
