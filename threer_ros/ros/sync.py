"""N-camera approximate-time synchroniser (plain Python: stamps in, frame sets out).

Frames whose stamps lie within ``tolerance_ns`` of a set's anchor (the stamp of the set's first
frame) belong to that set. A set is emitted

* as soon as every camera has contributed (``complete``), or
* once it can no longer complete (``partial``, if it holds at least ``min_cameras``; the missing
  cameras are named): every missing camera has already sent a frame stamped after the set
  (each camera's stream arrives in order), or a frame stamped more than
  ``tolerance_ns + max_delay_ns`` after the set's anchor has arrived from any camera (a camera
  that stopped publishing), or a newer set completed. Smaller sets are dropped and counted.

Age is measured in stamp time (not wall time), so replayed bags with their original stamps
synchronise exactly like a live rig, and frames of the next trigger may overtake frames of the
current one by up to ``max_delay_ns``. Memory is bounded: at most ``max_pending`` sets are
open; a frame of a camera already in its set is a duplicate; a frame for an already emitted set
is late; a stamp more than ``reset_after_ns`` older than the newest seen (a bag restarting, a
clock jump) resets the synchroniser.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable


@dataclass
class SyncStats:
    """Counters since construction (for /diagnostics)."""

    completed: int = 0       # sets with every camera
    partial: int = 0         # sets emitted with >= min_cameras but not all
    dropped: int = 0         # sets discarded with < min_cameras
    duplicates: int = 0      # a second frame of one camera for one set
    late: int = 0            # frames for a set already emitted or dropped
    unknown_camera: int = 0  # frames from cameras not configured
    resets: int = 0          # stamps jumped backwards by more than reset_after_ns


@dataclass
class SyncedSet:
    """One synchronised set.

    Attributes:
        stamp_ns: The newest stamp among the members (the set's reference time).
        items: Camera name -> the item given to :meth:`FrameSynchronizer.add`.
        missing: Configured cameras absent from the set, in configuration order.
    """

    stamp_ns: int
    items: dict[str, Any]
    missing: tuple[str, ...] = ()


@dataclass
class _Pending:
    anchor_ns: int
    items: dict[str, Any] = field(default_factory=dict)
    stamps: dict[str, int] = field(default_factory=dict)


class FrameSynchronizer:
    """Group frames of ``cameras`` into sets (see the module docstring for the policy).

    Args:
        cameras: Camera names, in rig order.
        tolerance_ns: Largest stamp difference within one set, nanoseconds.
        min_cameras: Smallest partial set worth emitting.
        max_delay_ns: How far (stamp time) other cameras may run ahead of a late camera before
            a set missing it is closed anyway.
        max_pending: Most sets under assembly at once (older ones are closed first).
        reset_after_ns: A stamp this much older than the newest seen resets the state.
    """

    def __init__(self, cameras: Iterable[str], tolerance_ns: int, min_cameras: int,
                 max_delay_ns: int = 50_000_000, max_pending: int = 8,
                 reset_after_ns: int = 1_000_000_000) -> None:
        self.cameras = tuple(cameras)
        if tolerance_ns <= 0:
            raise ValueError("tolerance_ns must be positive")
        if not 1 <= min_cameras <= len(self.cameras):
            raise ValueError(f"min_cameras must be in 1..{len(self.cameras)}")
        self.tolerance_ns = tolerance_ns
        self.min_cameras = min_cameras
        self.max_delay_ns = max_delay_ns
        self.max_pending = max_pending
        self.reset_after_ns = reset_after_ns
        self.stats = SyncStats()
        self._known = frozenset(self.cameras)
        self._pending: list[_Pending] = []          # sorted by anchor
        self._closed: deque[int] = deque(maxlen=4 * max_pending)  # anchors already emitted
        self._newest_ns: int | None = None
        self._latest: dict[str, int] = {}               # camera -> newest stamp it sent

    @property
    def pending(self) -> int:
        """Number of sets under assembly."""
        return len(self._pending)

    def reset(self) -> None:
        """Forget every open set (counters are kept)."""
        self._pending.clear()
        self._closed.clear()
        self._newest_ns = None
        self._latest.clear()

    def add(self, camera: str, stamp_ns: int, item: Any) -> list[SyncedSet]:
        """Add one frame; return the sets this frame completed or aged out, oldest first."""
        if camera not in self._known:
            self.stats.unknown_camera += 1
            return []
        if self._newest_ns is not None and stamp_ns < self._newest_ns - self.reset_after_ns:
            self.stats.resets += 1
            self.reset()
        if any(abs(stamp_ns - anchor) <= self.tolerance_ns for anchor in self._closed):
            self.stats.late += 1
            return []
        self._newest_ns = stamp_ns if self._newest_ns is None else max(self._newest_ns, stamp_ns)
        self._latest[camera] = max(self._latest.get(camera, stamp_ns), stamp_ns)
        target = self._find(stamp_ns)
        if target is None:
            target = _Pending(stamp_ns)
            self._pending.append(target)
            self._pending.sort(key=lambda p: p.anchor_ns)
        if camera in target.items:
            self.stats.duplicates += 1
        else:
            target.items[camera] = item
            target.stamps[camera] = stamp_ns
        return self._collect(target)

    def _find(self, stamp_ns: int) -> _Pending | None:
        best, best_gap = None, self.tolerance_ns + 1
        for pending in self._pending:
            gap = abs(stamp_ns - pending.anchor_ns)
            if gap < best_gap:
                best, best_gap = pending, gap
        return best

    def _closable(self, pending: _Pending, newer_complete: bool) -> bool:
        if newer_complete or len(self._pending) > self.max_pending:
            return True
        if len(pending.items) == len(self.cameras):
            return True
        if self._newest_ns - pending.anchor_ns > self.tolerance_ns + self.max_delay_ns:
            return True
        horizon = pending.anchor_ns + self.tolerance_ns
        return all(self._latest.get(c, horizon) > horizon
                   for c in self.cameras if c not in pending.items)

    def _collect(self, touched: _Pending) -> list[SyncedSet]:
        out: list[SyncedSet] = []
        complete = len(touched.items) == len(self.cameras)
        while self._pending:
            oldest = self._pending[0]
            if not self._closable(oldest, complete and oldest.anchor_ns < touched.anchor_ns):
                break
            out.extend(self._close_or_drop(oldest))
        return out

    def _close(self, pending: _Pending) -> SyncedSet:
        self._pending.remove(pending)
        self._closed.append(pending.anchor_ns)
        missing = tuple(c for c in self.cameras if c not in pending.items)
        if missing:
            self.stats.partial += 1
        else:
            self.stats.completed += 1
        return SyncedSet(max(pending.stamps.values()), dict(pending.items), missing)

    def _close_or_drop(self, pending: _Pending) -> list[SyncedSet]:
        if len(pending.items) >= self.min_cameras:
            return [self._close(pending)]
        self._pending.remove(pending)
        self._closed.append(pending.anchor_ns)
        self.stats.dropped += 1
        return []
