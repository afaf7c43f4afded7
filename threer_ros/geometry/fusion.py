"""Point-cloud fusion and evaluation: per-view fusion with confidence filtering, voxel
down-sampling, statistical outlier removal, and accuracy metrics (all in metres or the unit of
the points).

Fusion runs in PyTorch on the device the points are on (the GPU for the network backends), so
that a million-point cloud is fused in milliseconds rather than seconds on the CPU.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

#: Points per chunk of the outlier test's neighbour search (bounds its memory: ~1 KB a point).
_CHUNK = 1 << 18
#: The 27 cell offsets of a 3 x 3 x 3 block of grid cells.
_BLOCK = torch.tensor(list(itertools.product((-1, 0, 1), repeat=3)))


def _cell_keys(cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One int64 key per integer cell of ``cells`` (P, 3), and the key offsets of the 27
    cells of the 3 x 3 x 3 block around a cell (the grid leaves room for them)."""
    cells = cells - cells.min(dim=0).values + 1
    extent = cells.max(dim=0).values + 2
    steps = torch.stack((extent[1] * extent[2], extent[2], torch.ones_like(extent[2])))
    return (cells * steps).sum(dim=1), (_BLOCK.to(cells.device) * steps).sum(dim=1)


def voxel_downsample(points: torch.Tensor, colors: torch.Tensor, confidence: torch.Tensor,
                     voxel: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Average points ``(P, 3)``, uint8 colours ``(P, 3)`` and confidences ``(P,)`` per cubic
    voxel of edge ``voxel`` (metres), on their device. Returns the inputs unchanged when
    ``voxel <= 0`` or the cloud is empty."""
    if voxel <= 0 or len(points) == 0:
        return points, colors, confidence
    keys, _ = _cell_keys(torch.floor(points / voxel).long())
    _, inverse, counts = torch.unique(keys, return_inverse=True, return_counts=True)
    values = torch.cat((points.double(), colors.double(), confidence.double()[:, None]), dim=1)
    sums = torch.zeros(len(counts), values.shape[1], dtype=torch.float64, device=points.device)
    means = sums.index_add_(0, inverse, values) / counts[:, None]
    return (means[:, :3].float(), means[:, 3:6].round().to(torch.uint8), means[:, 6].float())


def remove_statistical_outliers(points: torch.Tensor, neighbours: int = 16,
                                std_ratio: float = 2.0, cell: float = 0.0) -> torch.Tensor:
    """Mask of points ``(P, 3)`` to keep: those whose mean distance to their ``neighbours``
    nearest points is at most ``mean + std_ratio * std`` of that statistic over the cloud.

    With ``cell > 0`` neighbours are searched on the device in the 3 x 3 x 3 grid cells of
    edge ``cell`` around each point, at most 8 points a cell: exact for a cloud voxel-averaged
    at ``cell / 2`` (each such cell holds at most 8 voxels) as far as the ``neighbours``
    nearest lie within ``cell`` of the point; a neighbour not found there counts at distance
    ``2 * cell``, so isolated points stand out. With ``cell <= 0`` the exact k-d tree search
    runs on the CPU. Returns all-True when the cloud has at most ``neighbours`` points or
    ``neighbours <= 0``.
    """
    if neighbours <= 0 or len(points) <= neighbours:
        return torch.ones(len(points), dtype=torch.bool, device=points.device)
    if cell > 0:
        mean_distance = _grid_mean_neighbour_distance(points, neighbours, cell)
    else:
        from scipy.spatial import cKDTree

        cpu = points.detach().cpu().numpy()
        distances, _ = cKDTree(cpu).query(cpu, k=neighbours + 1, workers=-1)
        mean_distance = torch.from_numpy(distances[:, 1:].mean(axis=1)).to(points.device)
    return mean_distance <= mean_distance.mean() + std_ratio * mean_distance.std(correction=0)


def _grid_mean_neighbour_distance(points: torch.Tensor, neighbours: int,
                                  cell: float) -> torch.Tensor:
    """Mean distance of each point to its ``neighbours`` nearest within its 3 x 3 x 3 cells
    (see :func:`remove_statistical_outliers`)."""
    device, slots = points.device, 8
    keys, offsets = _cell_keys(torch.floor(points / cell).long())
    order = torch.argsort(keys)
    cell_keys, counts = torch.unique_consecutive(keys[order], return_counts=True)
    # table[c, j] = index of the j-th point of cell c (-1: empty slot)
    cell_of = torch.repeat_interleave(torch.arange(len(cell_keys), device=device), counts)
    rank = torch.arange(len(order), device=device) - (torch.cumsum(counts, 0) - counts)[cell_of]
    fits = rank < slots
    table = torch.full((len(cell_keys), slots), -1, dtype=torch.long, device=device)
    table[cell_of[fits], rank[fits]] = order[fits]
    mean = torch.empty(len(points), dtype=torch.float32, device=device)
    missing = 2.0 * cell
    for begin in range(0, len(points), _CHUNK):
        chunk = slice(begin, begin + _CHUNK)
        wanted = keys[chunk, None] + offsets                              # (C, 27)
        where = torch.searchsorted(cell_keys, wanted).clamp(max=len(cell_keys) - 1)
        found = cell_keys[where] == wanted
        candidates = torch.where(found[..., None], table[where], -1).flatten(1)   # (C, 216)
        own = torch.arange(begin, begin + len(wanted), device=device)[:, None]
        valid = (candidates >= 0) & (candidates != own)
        d = (points[candidates.clamp(min=0)] - points[chunk, None]).norm(dim=-1)
        d = torch.where(valid, d, torch.full_like(d, float("inf")))
        nearest = torch.topk(d, neighbours, dim=1, largest=False).values
        mean[chunk] = torch.where(torch.isinf(nearest), missing, nearest).mean(dim=1)
    return mean


def stratified_subset(count: int, budget: int, seed: int,
                      device: str | torch.device = "cpu") -> torch.Tensor:
    """Sorted int64 indices (on ``device``) of ``budget`` of ``count`` points
    (``budget < count``): one point drawn at random from each of ``budget`` equal,
    consecutive strata of the index range.

    A fused cloud is ordered by voxel, so the subset thins the cloud evenly in space; it costs
    O(budget), where drawing without replacement costs a permutation of all ``count`` points.
    The draws come from a ``seed``-ed generator of ``device``: the same subset for the same
    arguments on one kind of device.
    """
    if not 0 <= budget < count:
        raise ValueError(f"a subset of {budget} of {count} points: need 0 <= budget < count")
    if budget == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    bounds = torch.arange(budget + 1, dtype=torch.int64, device=device) * count // budget
    widths = bounds.diff()                                                  # >= 1 each
    draws = torch.rand(budget, dtype=torch.float64, device=device,
                       generator=torch.Generator(device=device).manual_seed(seed))
    return bounds[:-1] + torch.minimum((draws * widths).long(), widths - 1)


@dataclass(frozen=True)
class FusionSettings:
    """How per-view points become one cloud.

    Attributes:
        confidence_threshold: Points below this confidence are dropped.
        voxel_size: Voxel edge (cloud unit) of the averaging down-sampling; 0 disables it.
        outlier_neighbours: Neighbours of the statistical outlier test; 0 disables it.
        outlier_std_ratio: Points farther than mean + ratio * std (mean neighbour distance) go.
        view_quantile: The least confident fraction of every view's pixels is dropped
            (Fast3R's demo: 0.1).
        min_view_confidence: Views whose most confident pixel is below this are dropped
            (Fast3R's demo: 1.5).
        max_points: Most points of the fused cloud (0 = no limit): above it, a stratified
            subset (:func:`stratified_subset`), taken on the cloud's device.
    """

    confidence_threshold: float = 0.0
    voxel_size: float = 0.0
    outlier_neighbours: int = 16
    outlier_std_ratio: float = 2.0
    view_quantile: float = 0.0
    min_view_confidence: float = 0.0
    max_points: int = 0


def view_confidence_mask(confidence: torch.Tensor, settings: FusionSettings) -> torch.Tensor:
    """``(N, H, W)`` bool: the pixels of N views that the per-view rules of ``settings`` keep
    (``view_quantile``, ``min_view_confidence``; the absolute threshold is applied by
    :func:`fuse_points`)."""
    flat = confidence.flatten(1).float()
    keep = torch.ones_like(confidence, dtype=torch.bool)
    if settings.view_quantile > 0:
        cut = torch.quantile(flat, settings.view_quantile, dim=1)
        keep &= confidence >= cut[:, None, None].to(confidence.dtype)
    if settings.min_view_confidence > 0:
        keep &= (flat.amax(1) >= settings.min_view_confidence)[:, None, None]
    return keep


def fuse_points(points: torch.Tensor, colors: torch.Tensor, confidence: torch.Tensor,
                settings: FusionSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fuse ``(P, 3)`` points with their ``(P, 3)`` uint8 colours and ``(P,)`` confidences
    (tensors on one device): drop non-finite and low-confidence points, voxel-average, remove
    statistical outliers (neighbours searched on the voxel grid for a voxel-averaged cloud on a
    GPU, by a k-d tree otherwise) and keep at most ``settings.max_points`` of them, all on the
    points' device. Returns float32 points, uint8 colours and float32 confidences as numpy
    arrays (copied to the host once, within the budget)."""
    keep = torch.isfinite(points).all(dim=1) & (confidence >= settings.confidence_threshold)
    points, colors, confidence = voxel_downsample(points[keep], colors[keep], confidence[keep],
                                                  settings.voxel_size)
    on_gpu = points.device.type != "cpu"      # the k-d tree is faster on a CPU, the grid on a GPU
    inliers = remove_statistical_outliers(points, settings.outlier_neighbours,
                                          settings.outlier_std_ratio,
                                          cell=2.0 * settings.voxel_size if on_gpu else 0.0)
    kept = inliers.nonzero().squeeze(1)
    if 0 < settings.max_points < len(kept):
        kept = kept[stratified_subset(len(kept), settings.max_points, 0, kept.device)]
    return (points[kept].float().cpu().numpy(), colors[kept].cpu().numpy(),
            confidence[kept].float().cpu().numpy())


@dataclass(frozen=True)
class CloudMetrics:
    """Reconstruction quality against a ground-truth surface sample (metres, fractions).

    Attributes:
        mean: Mean distance of reconstructed points to the nearest ground-truth point.
        median: Median of the same distances.
        completeness: Fraction of the (visible) ground-truth points within ``threshold`` of
            the reconstruction.
        threshold: The distance used for completeness and ``inliers``.
        inliers: Fraction of reconstructed points within ``threshold`` of the ground truth.
    """

    mean: float
    median: float
    completeness: float
    threshold: float
    inliers: float = 0.0


def accuracy_completeness(points: np.ndarray, truth: np.ndarray, threshold: float,
                          visible: np.ndarray | None = None) -> CloudMetrics:
    """Accuracy (reconstruction -> ``truth``) and completeness (``visible`` -> reconstruction;
    ``visible`` defaults to ``truth``, e.g. a subject's surface while ``truth`` also holds the
    background the reconstruction may rightly contain)."""
    from scipy.spatial import cKDTree

    if len(points) == 0:
        return CloudMetrics(float("inf"), float("inf"), 0.0, threshold, 0.0)
    to_truth, _ = cKDTree(truth).query(points)
    to_recon, _ = cKDTree(points).query(truth if visible is None else visible,
                                        distance_upper_bound=threshold)
    return CloudMetrics(float(np.mean(to_truth)), float(np.median(to_truth)),
                        float(np.mean(np.isfinite(to_recon))), threshold,
                        float(np.mean(to_truth <= threshold)))
