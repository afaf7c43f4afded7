"""Requested items (a service asked for them) are never replaced, discarded or rate limited."""

from __future__ import annotations

import threading

from threer_ros.ros.worker import LatestSetWorker


def test_a_requested_item_survives_newer_sets_the_rate_limit_and_a_pause():
    started, gate = threading.Event(), threading.Event()
    done: list[str] = []

    def process(item: str) -> str:
        if item == "first":
            started.set()
            gate.wait(10)
        return item

    worker = LatestSetWorker(process, lambda item, result: done.append(result),
                             lambda item, exc: None, max_rate=0.001)   # one job per 1000 s
    try:
        worker.submit("first")                   # running, held at the gate
        assert started.wait(10)
        worker.submit("requested", requested=True)
        worker.submit("newer")                   # dropped: a requested item waits
        worker.discard_pending()                 # a pause keeps the requested item
        gate.set()
        assert worker.wait_idle(10)
        worker.submit("rate limited")            # within 1000 s of the last start
        worker.submit("asked again", requested=True)
        assert worker.wait_idle(10)
        assert done == ["first", "requested", "asked again"]
        assert worker.stats.dropped == 1 and worker.stats.rate_limited == 1
    finally:
        worker.stop()


def test_the_rate_limit_changes_live_and_a_pause_forgets_the_pending_set():
    started, gate = threading.Event(), threading.Event()
    done: list[str] = []

    def process(item: str) -> str:
        started.set()
        gate.wait(10)
        return item

    worker = LatestSetWorker(process, lambda item, result: done.append(result),
                             lambda item, exc: None, max_rate=0.001)
    try:
        worker.submit("first")
        assert started.wait(10)
        worker.submit("pending")
        worker.discard_pending()
        gate.set()
        assert worker.wait_idle(10)
        worker.set_max_rate(0.0)                 # unlimited from now on
        worker.submit("second")
        assert worker.wait_idle(10)
        assert done == ["first", "second"]
    finally:
        worker.stop()
