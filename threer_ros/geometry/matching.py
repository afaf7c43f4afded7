"""Reciprocal (mutual) nearest-neighbour matching of dense per-pixel descriptors.

Implements the fast reciprocal matching of MASt3R (Leroy et al. 2024, arXiv 2406.09756,
section 3.3): starting from a sparse grid of seed pixels in image 1, alternate nearest-neighbour
look-ups image 1 -> image 2 -> image 1 and keep the seeds that come back to themselves. Every
such fixed point is a mutual nearest neighbour over the full images, and the cost is
``O(seeds * pixels)`` dot products per iteration instead of ``O(pixels^2)``.

Similarity is the dot product of descriptors, computed in their dtype on their device. Pixel
``(x, y)`` is column ``x``, row ``y``; flat pixel indices are row-major (``y * W + x``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

DEFAULT_CHUNK = 4096


@dataclass(frozen=True)
class ReciprocalMatches:
    """Mutual nearest-neighbour pixel pairs between two images.

    Attributes:
        pixels1: ``(M, 2)`` int64 ``(x, y)`` pixels of image 1, sorted by flat index.
        pixels2: ``(M, 2)`` int64 ``(x, y)`` pixels of image 2 matched to ``pixels1``.
        similarity: ``(M,)`` descriptor dot product of each pair, in the descriptors' dtype.
        comparisons: Number of descriptor dot products computed to find the matches.
    """

    pixels1: Tensor
    pixels2: Tensor
    similarity: Tensor
    comparisons: int


def nearest_neighbours(queries: Tensor, database: Tensor, chunk: int = DEFAULT_CHUNK) -> Tensor:
    """Index of the database row with the largest dot product with each query.

    Args:
        queries: ``(Q, D)`` float descriptors.
        database: ``(M, D)`` float descriptors (``M >= 1``), same dtype and device.
        chunk: Queries scored at once; peak extra memory is ``chunk * M`` similarities.

    Returns:
        ``(Q,)`` int64 indices into ``database`` (first maximum on ties).
    """
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    if database.shape[0] == 0:
        raise ValueError("database is empty")
    parts = [(block @ database.T).argmax(dim=1) for block in queries.split(chunk)]
    if not parts:
        return torch.empty(0, dtype=torch.int64, device=queries.device)
    return torch.cat(parts)


def reciprocal_matches_brute_force(desc1: Tensor, desc2: Tensor) -> tuple[Tensor, Tensor]:
    """All mutual nearest neighbours from the full ``(N1, N2)`` similarity matrix.

    Meant for small inputs (tests, references).

    Args:
        desc1: ``(N1, D)`` descriptors.
        desc2: ``(N2, D)`` descriptors.

    Returns:
        ``(idx1, idx2)``: ``(M,)`` int64 row indices, sorted by ``idx1``, with
        ``NN_2(desc1[idx1]) == idx2`` and ``NN_1(desc2[idx2]) == idx1``.
    """
    similarity = desc1 @ desc2.T
    nn12 = similarity.argmax(dim=1)
    nn21 = similarity.argmax(dim=0)
    idx1 = torch.nonzero(nn21[nn12] == torch.arange(len(desc1), device=desc1.device))[:, 0]
    return idx1, nn12[idx1]


class _CachedNeighbours:
    """Nearest neighbour in ``targets`` of each ``sources`` row, computed once per row."""

    def __init__(self, sources: Tensor, targets: Tensor, chunk: int) -> None:
        self.sources, self.targets, self.chunk = sources, targets, chunk
        self.table = torch.full((len(sources),), -1, dtype=torch.int64, device=sources.device)
        self.comparisons = 0

    def __call__(self, indices: Tensor) -> Tensor:
        missing = torch.unique(indices[self.table[indices] < 0])
        if len(missing):
            found = nearest_neighbours(self.sources[missing], self.targets, self.chunk)
            self.table[missing] = found
            self.comparisons += len(missing) * len(self.targets)
        return self.table[indices]


def _grid_seeds(height: int, width: int, stride: int, device: torch.device) -> Tensor:
    """Flat indices of the pixels ``(x, y)`` with ``x, y = stride // 2 + k * stride``."""
    ys = torch.arange(stride // 2, height, stride, device=device)
    xs = torch.arange(stride // 2, width, stride, device=device)
    return (ys[:, None] * width + xs[None, :]).reshape(-1)


def _to_pixels(flat: Tensor, width: int) -> Tensor:
    """``(M,)`` row-major flat indices -> ``(M, 2)`` ``(x, y)`` pixels."""
    return torch.stack([flat % width, flat // width], dim=1)


def fast_reciprocal_matches(desc1: Tensor, desc2: Tensor, subsample: int = 8,
                            max_iterations: int = 6,
                            chunk: int = DEFAULT_CHUNK) -> ReciprocalMatches:
    """Mutual nearest neighbours reached from a seed grid of image 1 (MASt3R fast matching).

    Each iteration maps the active pixels ``U`` of image 1 to ``V = NN_2(U)`` and back to
    ``NN_1(V)``; pixels that map to themselves are mutual matches and leave the active set, the
    others are replaced by their images. Nearest neighbours are searched over the full images
    and each pixel's is computed at most once, so every returned pair is an exact mutual
    nearest neighbour; the result is a subset of all of them (all of them when
    ``subsample == 1``).

    Args:
        desc1: ``(H1, W1, D)`` descriptors of image 1.
        desc2: ``(H2, W2, D)`` descriptors of image 2, same dtype and device.
        subsample: Seed grid stride in pixels (offset ``subsample // 2``).
        max_iterations: Round trips before unconverged pixels are dropped.
        chunk: Query chunk size of the nearest-neighbour searches.

    Returns:
        The deduplicated matches and the number of dot products computed.
    """
    if desc1.dim() != 3 or desc2.dim() != 3 or desc1.shape[2] != desc2.shape[2]:
        raise ValueError(f"expected (H, W, D) descriptors, got {tuple(desc1.shape)} and "
                         f"{tuple(desc2.shape)}")
    if subsample < 1:
        raise ValueError(f"subsample must be positive, got {subsample}")
    flat1, flat2 = desc1.reshape(-1, desc1.shape[2]), desc2.reshape(-1, desc2.shape[2])
    nn12 = _CachedNeighbours(flat1, flat2, chunk)
    nn21 = _CachedNeighbours(flat2, flat1, chunk)
    active = torch.unique(_grid_seeds(desc1.shape[0], desc1.shape[1], subsample, desc1.device))
    converged = torch.zeros(len(flat1), dtype=torch.bool, device=desc1.device)
    for _ in range(max_iterations):
        if not len(active):
            break
        back = nn21(nn12(active))
        fixed = back == active
        converged[active[fixed]] = True
        active = torch.unique(back[~fixed])
        active = active[~converged[active]]
    idx1 = torch.nonzero(converged)[:, 0]
    idx2 = nn12.table[idx1]
    return ReciprocalMatches(pixels1=_to_pixels(idx1, desc1.shape[1]),
                             pixels2=_to_pixels(idx2, desc2.shape[1]),
                             similarity=(flat1[idx1] * flat2[idx2]).sum(dim=1),
                             comparisons=nn12.comparisons + nn21.comparisons)
