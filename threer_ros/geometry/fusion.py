"""Point-cloud fusion and evaluation: per-view fusion with confidence filtering, voxel
down-sampling, statistical outlier removal, and accuracy metrics (all in metres or the unit of
the points)."""

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


def remove_statistical_outliers(points: np.ndarray, neighbours: int = 16,
                                std_ratio: float = 2.0) -> np.ndarray:
    """Mask of points to keep: those whose mean distance to their ``neighbours`` nearest
    points is at most ``mean + std_ratio * std`` of that statistic over the cloud.

    Returns all-True when the cloud has at most ``neighbours`` points or ``neighbours <= 0``.
    """
    if neighbours <= 0 or len(points) <= neighbours:
        return np.ones(len(points), dtype=bool)
    from scipy.spatial import cKDTree

    distances, _ = cKDTree(points).query(points, k=neighbours + 1)
    mean_distance = distances[:, 1:].mean(axis=1)
    return mean_distance <= mean_distance.mean() + std_ratio * mean_distance.std()


@dataclass(frozen=True)
class FusionSettings:
    """How per-view points become one cloud.

    Attributes:
        confidence_threshold: Points below this confidence are dropped.
        voxel_size: Voxel edge (cloud unit) of the averaging down-sampling; 0 disables it.
        outlier_neighbours: Neighbours of the statistical outlier test; 0 disables it.
        outlier_std_ratio: Points farther than mean + ratio * std (mean neighbour distance) go.
    """

    confidence_threshold: float = 0.0
    voxel_size: float = 0.0
    outlier_neighbours: int = 16
    outlier_std_ratio: float = 2.0


def fuse_points(points: np.ndarray, colors: np.ndarray, confidence: np.ndarray,
                settings: FusionSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fuse ``(P, 3)`` points with their ``(P, 3)`` uint8 colours and ``(P,)`` confidences:
    drop non-finite and low-confidence points, voxel-average, remove statistical outliers."""
    keep = np.isfinite(points).all(axis=1) & (confidence >= settings.confidence_threshold)
    points, colors, confidence = voxel_downsample(points[keep], colors[keep], confidence[keep],
                                                  settings.voxel_size)
    inliers = remove_statistical_outliers(points, settings.outlier_neighbours,
                                          settings.outlier_std_ratio)
    return (points[inliers].astype(np.float32), colors[inliers].astype(np.uint8),
            confidence[inliers].astype(np.float32))


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
