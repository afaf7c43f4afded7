"""Compare mode: several backends on the same frame set, side by side (no ROS).

The first backend is the primary one (its reconstruction is the node's main output); every
backend's reconstruction is kept, and :func:`compare` summarises how they differ: each
backend's total time, its camera poses against the primary's (rotation in degrees, centre
distance in the rig unit) and the cloud-to-cloud distances (median nearest-neighbour distance
in both directions).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from threer_ros.geometry.registration import pose_disagreement
from threer_ros.pipeline.types import FrameSet, Reconstruction, Reconstructor


@dataclass
class Comparison:
    """Reconstructions of one set by several backends, and their differences.

    Attributes:
        reconstructions: Backend name -> reconstruction, primary first; failed backends are
            absent and named in ``errors``.
        summary: Backend name -> values (``time_s``, ``points``, and against the primary:
            ``rotation_median_deg``, ``centre_median``, ``cloud_to_primary_median``,
            ``primary_to_cloud_median``).
        errors: Backend name -> error message of a failed backend.
    """

    reconstructions: dict[str, Reconstruction]
    summary: dict[str, dict[str, float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def _median_distance(points: np.ndarray, reference: np.ndarray) -> float:
    """Median distance from each of ``points`` to its nearest ``reference`` point (both
    non-empty)."""
    from scipy.spatial import cKDTree

    return float(np.median(cKDTree(reference).query(points)[0]))


def compare(primary: str, reconstructions: dict[str, Reconstruction],
            durations_s: dict[str, float]) -> dict[str, dict[str, float]]:
    """Summary values per backend against the ``primary`` reconstruction."""
    base = reconstructions[primary]
    summary = {}
    for name, recon in reconstructions.items():
        values = {"time_s": durations_s[name], "points": float(len(recon.points))}
        if name != primary and recon.cameras == base.cameras:
            poses = pose_disagreement(recon.cam_to_rig, base.cam_to_rig)
            values.update(rotation_median_deg=float(np.median(poses.rotation_deg)),
                          centre_median=float(np.median(poses.centre_error)))
            if len(recon.points) and len(base.points):
                values.update(
                    cloud_to_primary_median=_median_distance(recon.points, base.points),
                    primary_to_cloud_median=_median_distance(base.points, recon.points))
        summary[name] = values
    return summary


class CompareReconstructor:
    """Runs every backend of ``backends`` (name -> reconstructor, primary first) on each set.

    A failing secondary backend is reported in the comparison; a failing primary raises.
    """

    name = "compare"

    def __init__(self, backends: dict[str, Reconstructor]) -> None:
        if len(backends) < 2:
            raise ValueError("compare mode needs at least two backends")
        self.backends = backends
        self.primary = next(iter(backends))

    def compare_set(self, frames: FrameSet, done: Callable[[str], Any] | None = None
                    ) -> Comparison:
        """Reconstruct ``frames`` with every backend and compare them; ``done(name)`` is called
        after each backend (e.g. a progress bar)."""
        results, durations, errors = {}, {}, {}
        for name, backend in self.backends.items():
            start = time.perf_counter()
            try:
                results[name] = backend.reconstruct(frames)
            except (ValueError, RuntimeError) as exc:
                if name == self.primary:
                    raise
                errors[name] = f"{type(exc).__name__}: {exc}"
            durations[name] = time.perf_counter() - start
            if done is not None:
                done(name)
        return Comparison(results, compare(self.primary, results, durations), errors)

    def update_fusion(self, options) -> None:
        """Hand the new fusion ``options`` to every backend."""
        for backend in self.backends.values():
            backend.update_fusion(options)

    def reconstruct(self, frames: FrameSet) -> Reconstruction:
        """The primary backend's reconstruction (after running all of them)."""
        return self.compare_set(frames).reconstructions[self.primary]
