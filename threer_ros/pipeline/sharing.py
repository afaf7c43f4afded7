"""Several capture-node workers on one rig: which worker reconstructs which set (no ROS).

Every worker subscribes to the same camera topics and so sees the same synchronized sets with
the same stamps. Each decides from a set's own stamp whether the set is its own, so exactly one
worker reconstructs it, with no coordinator and no traffic between the workers (DESIGN.md,
"Beyond one process"). With the rig's trigger period known, consecutive triggers go to the
workers in turn (round robin); without it, a hash of the stamp spreads them evenly on average.
"""

from __future__ import annotations

from dataclasses import dataclass

_GOLDEN = 0x9E3779B97F4A7C15     # 2**64 / golden ratio: Fibonacci hashing
_MASK = (1 << 64) - 1


@dataclass(frozen=True)
class SetSharing:
    """This worker's share of the sets.

    Attributes:
        worker_index: This worker's index, ``0 <= worker_index < worker_count``.
        worker_count: Workers sharing the rig (1: this worker reconstructs every set).
        trigger_period_ns: The rig's trigger period in nanoseconds; sets then go round robin
            by trigger number ``round(stamp / period)``. 0: by a hash of the stamp.
    """

    worker_index: int = 0
    worker_count: int = 1
    trigger_period_ns: int = 0

    def __post_init__(self) -> None:
        if self.worker_count < 1 or not 0 <= self.worker_index < self.worker_count:
            raise ValueError(f"worker_index {self.worker_index} of worker_count "
                             f"{self.worker_count}: need 0 <= worker_index < worker_count")
        if self.trigger_period_ns < 0:
            raise ValueError(f"trigger period {self.trigger_period_ns} ns must be >= 0")

    @classmethod
    def from_rate(cls, worker_index: int, worker_count: int, trigger_rate_hz: float
                  ) -> "SetSharing":
        """Sharing for a rig triggered at ``trigger_rate_hz`` (0: unknown, hash the stamps)."""
        if trigger_rate_hz < 0:
            raise ValueError(f"trigger rate {trigger_rate_hz} Hz must be >= 0 (0: unknown)")
        period = round(1e9 / trigger_rate_hz) if trigger_rate_hz > 0 else 0
        return cls(worker_index, worker_count, period)

    @property
    def by_image(self) -> bool:
        """Whether each image's own stamp tells whose set it belongs to (several workers
        sharing by trigger period, where a set's images differ in stamp by far less than a
        period): a worker can then pass over other workers' images as they arrive. With
        hashed stamps only a whole set's stamp does."""
        return self.worker_count > 1 and self.trigger_period_ns > 0

    def trigger(self, stamp_ns: int) -> int:
        """The trigger number of ``stamp_ns`` (the nearest multiple of the period; the stamp
        itself when the period is unknown)."""
        if not self.trigger_period_ns:
            return stamp_ns
        return (stamp_ns + self.trigger_period_ns // 2) // self.trigger_period_ns

    def owner(self, stamp_ns: int) -> int:
        """The index of the worker that reconstructs the set stamped ``stamp_ns``."""
        if self.worker_count == 1:
            return 0
        if self.trigger_period_ns:
            return self.trigger(stamp_ns) % self.worker_count
        return (((stamp_ns * _GOLDEN) & _MASK) >> 32) % self.worker_count

    def owns(self, stamp_ns: int) -> bool:
        """Whether this worker reconstructs the set stamped ``stamp_ns``."""
        return self.owner(stamp_ns) == self.worker_index
