"""Point-cloud fusion and evaluation: voxel down-sampling and accuracy metrics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def voxel_downsample(points: np.ndarray, colors: np.ndarray, confidence: np.ndarray,
                     voxel: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average points, colours and confidences per cubic voxel of edge ``voxel`` (metres).

    Returns the inputs unchanged when ``voxel <= 0`` or the cloud is empty.
    """
    if voxel <= 0 or len(points) == 0:
        return points, colors, confidence
    cells = np.floor(points / voxel).astype(np.int64)
    cells -= cells.min(axis=0)
    extent = cells.max(axis=0) + 1
    keys = (cells[:, 0] * extent[1] + cells[:, 1]) * extent[2] + cells[:, 2]
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)

    def mean(values: np.ndarray) -> np.ndarray:
        columns = values.reshape(len(values), -1).astype(np.float64)
        sums = np.stack([np.bincount(inverse, weights=c, minlength=len(counts))
                         for c in columns.T], axis=1)
        return (sums / counts[:, None]).reshape((len(counts),) + values.shape[1:])

    return (mean(points).astype(np.float32), np.round(mean(colors)).astype(np.uint8),
            mean(confidence).astype(np.float32))


@dataclass(frozen=True)
class CloudMetrics:
    """Reconstruction quality against a ground-truth surface sample (metres, fractions).

    Attributes:
        mean: Mean distance of reconstructed points to the nearest ground-truth point.
        median: Median of the same distances.
        completeness: Fraction of ground-truth points within ``threshold`` of the reconstruction.
        threshold: The distance used for completeness.
    """

    mean: float
    median: float
    completeness: float
    threshold: float


def accuracy_completeness(points: np.ndarray, truth: np.ndarray, threshold: float
                          ) -> CloudMetrics:
    """Accuracy (reconstruction -> truth) and completeness (truth -> reconstruction)."""
    from scipy.spatial import cKDTree

    if len(points) == 0:
        return CloudMetrics(float("inf"), float("inf"), 0.0, threshold)
    to_truth, _ = cKDTree(truth).query(points)
    to_recon, _ = cKDTree(points).query(truth, distance_upper_bound=threshold)
    return CloudMetrics(float(np.mean(to_truth)), float(np.median(to_truth)),
                        float(np.mean(np.isfinite(to_recon))), threshold)
