"""The N-camera synchroniser: grouping under jitter, partial sets, duplicates, resets, memory."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from threer_ros.ros.sync import FrameSynchronizer

CAMS = tuple(f"cam{i}" for i in range(6))
MS = 1_000_000
TOL = 5 * MS
PERIOD = 40 * MS


def _sync(**kw) -> FrameSynchronizer:
    return FrameSynchronizer(CAMS, tolerance_ns=TOL, min_cameras=kw.pop("min_cameras", 4), **kw)


def test_a_complete_set_is_emitted_as_soon_as_the_last_camera_arrives():
    sync = _sync()
    out = []
    for i, cam in enumerate(CAMS):
        out += sync.add(cam, 1000 * MS + i * MS // 2, f"{cam}-frame")
        if i < len(CAMS) - 1:
            assert out == []
    assert len(out) == 1 and out[0].missing == ()
    assert out[0].items == {c: f"{c}-frame" for c in CAMS}
    assert out[0].stamp_ns == 1000 * MS + (len(CAMS) - 1) * MS // 2  # newest member
    assert sync.stats.completed == 1 and sync.pending == 0


def test_a_silent_camera_gives_a_partial_set_once_others_are_max_delay_ahead():
    sync = _sync(max_delay_ns=2 * PERIOD)
    for cam in CAMS[:-1]:
        assert sync.add(cam, 1000 * MS, cam) == []
    assert sync.add(CAMS[0], 1000 * MS + PERIOD, "next") == []   # the camera may still be late
    out = sync.add(CAMS[1], 1000 * MS + 3 * PERIOD, "later")     # now it is not coming
    assert len(out) == 1 and out[0].missing == (CAMS[-1],)
    assert sync.stats.partial == 1


def test_a_camera_that_skipped_the_set_closes_it_at_once():
    sync = _sync()
    for cam in CAMS[:-1]:
        sync.add(cam, 1000 * MS, cam)
    out = sync.add(CAMS[-1], 1000 * MS + PERIOD, "its next frame")  # it lost this trigger
    assert len(out) == 1 and out[0].missing == (CAMS[-1],)


def test_too_small_a_set_is_dropped_and_counted():
    sync = _sync(min_cameras=4)
    sync.add(CAMS[0], 1000 * MS, "a")
    sync.add(CAMS[1], 1000 * MS, "b")
    assert sync.add(CAMS[0], 1000 * MS + 10 * PERIOD, "c") == []
    assert sync.stats.dropped == 1


def test_duplicates_late_frames_and_unknown_cameras_are_counted_not_used():
    sync = _sync()
    sync.add(CAMS[0], 1000 * MS, "first")
    sync.add(CAMS[0], 1000 * MS, "again")
    assert sync.stats.duplicates == 1
    out = []
    for cam in CAMS[1:]:
        out += sync.add(cam, 1000 * MS, cam)
    assert out[0].items[CAMS[0]] == "first"
    assert sync.add(CAMS[2], 1000 * MS + MS, "late") == []
    assert sync.stats.late == 1
    assert sync.add("intruder", 1000 * MS, "x") == []
    assert sync.stats.unknown_camera == 1


def test_stamps_jumping_backwards_reset_the_synchroniser():
    sync = _sync()
    sync.add(CAMS[0], 50_000 * MS, "old session")
    out = []
    for cam in CAMS:
        out += sync.add(cam, 1000 * MS, cam)          # a bag restarted from its beginning
    assert sync.stats.resets == 1
    assert len(out) == 1 and out[0].missing == ()


def test_memory_stays_bounded_when_sets_never_complete():
    sync = _sync(max_pending=8)
    for k in range(1000):  # only one camera publishes, stamps far apart but within reset window
        sync.add(CAMS[k % 2], 1000 * MS + k * (TOL // 3), k)
        assert sync.pending <= 8


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="min_cameras"):
        FrameSynchronizer(CAMS, TOL, min_cameras=7)
    with pytest.raises(ValueError, match="tolerance"):
        FrameSynchronizer(CAMS, 0, min_cameras=1)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), sets=st.integers(1, 6),
       jitter=st.integers(0, TOL // 2), dropout=st.floats(0.0, 0.3))
def test_every_true_set_comes_out_once_with_the_right_members(seed, sets, jitter, dropout):
    """Stamps jitter by up to half the tolerance, some frames are lost, and each camera's frames
    arrive in order but up to 1.5 periods late, so the next trigger's frames often overtake the
    current one's: every trigger with >= min_cameras frames is emitted exactly once, holding
    exactly its own frames; nothing mixes two triggers."""
    rng = random.Random(seed)
    sync = _sync(min_cameras=3, max_delay_ns=2 * PERIOD)
    frames = []
    for cam in CAMS:
        arrival = 0
        for k in range(sets):
            stamp = 1000 * MS + k * PERIOD + rng.randint(-jitter, jitter)
            arrival = max(arrival, stamp + rng.randint(0, 3 * PERIOD // 2))
            if rng.random() >= dropout:
                frames.append((arrival, stamp, cam, (k, cam)))
    frames.sort()
    out = []
    for _, stamp, cam, item in frames:
        out += sync.add(cam, stamp, item)
    out += sync.add(CAMS[0], 1000 * MS + (sets + 5) * PERIOD, "flush")
    emitted = {}
    for s in out:
        triggers = {item[0] for item in s.items.values() if item != "flush"}
        assert len(triggers) <= 1, "a set mixed two triggers"
        if triggers:
            k = triggers.pop()
            assert k not in emitted, "a trigger came out twice"
            emitted[k] = s
            assert all(item == (k, cam) for cam, item in s.items.items())
            assert set(s.missing) == set(CAMS) - set(s.items)
    for k in range(sets):
        present = {f[2] for f in frames if f[3][0] == k}
        if len(present) >= 3:
            assert k in emitted and set(emitted[k].items) == present
        else:
            assert k not in emitted
