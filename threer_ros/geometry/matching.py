"""Reciprocal (mutual) nearest-neighbour matching of dense per-pixel descriptors.

Implements the fast reciprocal matching of MASt3R (Leroy et al. 2024, arXiv 2406.09756,
section 3.3): starting from a sparse grid of seed pixels in image 1, alternate nearest-neighbour
look-ups image 1 -> image 2 -> image 1 and keep the seeds that come back to themselves. Every
such fixed point is a mutual nearest neighbour over the full images, and the cost is
``O(seeds * pixels)`` dot products per iteration instead of ``O(pixels^2)``.
:func:`four_way_matches` is how MASt3R's sparse alignment matches a pair: in both decodings of
the pair, with seeds in both images.

Similarity is the dot product of descriptors, computed in their dtype on their device. Pixel
``(x, y)`` is column ``x``, row ``y``; flat pixel indices are row-major (``y * W + x``).
"""

from __future__ import annotations

from collections.abc import Sequence
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
    """Nearest neighbour of pixels of image A in image B, for several image pairs at once,
    each pixel's neighbour computed once.

    Pixels are global ids ``pair * P + pixel`` (``P`` pixels per image); the result is the
    pixel index in the same pair's image B. Each call waits for the device twice (to size the
    per-pair searches), however many pairs there are.
    """

    def __init__(self, sources: Sequence[Tensor], targets: Sequence[Tensor], chunk: int
                 ) -> None:
        self.sources, self.targets, self.chunk = sources, targets, chunk
        self.pixels = len(sources[0])
        self.table = torch.full((len(sources) * self.pixels,), -1, dtype=torch.int64,
                                device=sources[0].device)
        self.comparisons = [0] * len(sources)

    def __call__(self, ids: Tensor) -> Tensor:
        missing = torch.unique(ids[self.table[ids] < 0])
        per_pair = torch.bincount(missing // self.pixels, minlength=len(self.sources)).tolist()
        found = []
        for pair, pixels in enumerate(missing.split(per_pair)):
            if len(pixels):
                found.append(nearest_neighbours(self.sources[pair][pixels % self.pixels],
                                                self.targets[pair], self.chunk))
                self.comparisons[pair] += len(pixels) * len(self.targets[pair])
        if found:
            self.table[missing] = torch.cat(found)
        return self.table[ids]


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
    return fast_reciprocal_matches_batched([desc1], [desc2], subsample, max_iterations,
                                           chunk)[0]


def _fixed_points(nn_out: _CachedNeighbours, nn_back: _CachedNeighbours, seeds: Tensor,
                  pixels: int, other_pixels: int, max_iterations: int) -> Tensor:
    """``(B * pixels,)`` bool: the pixels of the seeds' side reached as fixed points of
    ``nn_back(nn_out(.))`` within ``max_iterations`` round trips from the global ``seeds``."""
    active = seeds
    converged = torch.zeros(nn_out.table.shape, dtype=torch.bool, device=seeds.device)
    for _ in range(max_iterations):
        if not len(active):
            break
        pair = active // pixels
        back = pair * pixels + nn_back(pair * other_pixels + nn_out(active))
        fixed = back == active
        converged[active[fixed]] = True
        active = torch.unique(back[~fixed])
        active = active[~converged[active]]
    return converged


def fast_reciprocal_matches_batched(desc1: Tensor | Sequence[Tensor],
                                    desc2: Tensor | Sequence[Tensor], subsample: int = 8,
                                    max_iterations: int = 6, chunk: int = DEFAULT_CHUNK,
                                    both_ways: bool = False) -> list[ReciprocalMatches]:
    """:func:`fast_reciprocal_matches` of many image pairs, run together: the device is
    waited for a few times per iteration, not per pair.

    Args:
        desc1, desc2: ``(B, H1, W1, D)`` and ``(B, H2, W2, D)`` descriptors (or sequences of
            B such maps) of the pairs' first and second images.
        both_ways: Also seed a grid in image 2 (MASt3R's matching of a decoding); both searches
            share their nearest neighbours, and a match found from both sides counts once.

    Returns:
        The matches of each pair, in order.
    """
    desc1, desc2 = list(desc1), list(desc2)
    shapes1, shapes2 = {tuple(d.shape) for d in desc1}, {tuple(d.shape) for d in desc2}
    if len(desc1) != len(desc2) or len(shapes1) > 1 or len(shapes2) > 1 or any(
            len(s) != 3 for s in shapes1 | shapes2) or len({s[-1] for s in shapes1 | shapes2}) > 1:
        raise ValueError(f"expected pairs of (H, W, D) descriptors, each side of one shape and "
                         f"one D, got {sorted(shapes1)} and {sorted(shapes2)}")
    if subsample < 1:
        raise ValueError(f"subsample must be positive, got {subsample}")
    if not desc1:
        return []
    (h1, w1, dim), (_, w2, _) = desc1[0].shape, desc2[0].shape
    flat1 = [d.reshape(-1, dim) for d in desc1]
    flat2 = [d.reshape(-1, dim) for d in desc2]
    p1, p2 = len(flat1[0]), len(flat2[0])
    device = desc1[0].device
    nn12 = _CachedNeighbours(flat1, flat2, chunk)
    nn21 = _CachedNeighbours(flat2, flat1, chunk)
    pair_start = torch.arange(len(desc1), device=device)[:, None]
    seeds = (pair_start * p1 + _grid_seeds(h1, w1, subsample, device)).reshape(-1)
    converged = _fixed_points(nn12, nn21, seeds, p1, p2, max_iterations)
    if both_ways:    # a mutual pair is known by its pixel in image 1
        h2 = desc2[0].shape[0]
        seeds = (pair_start * p2 + _grid_seeds(h2, w2, subsample, device)).reshape(-1)
        found2 = torch.nonzero(_fixed_points(nn21, nn12, seeds, p2, p1, max_iterations))[:, 0]
        converged[found2 // p2 * p1 + nn21.table[found2]] = True
    found = torch.nonzero(converged)[:, 0]
    per_pair = torch.bincount(found // p1, minlength=len(desc1)).tolist()
    out = []
    for k, idx in enumerate(found.split(per_pair)):
        idx1 = idx - k * p1
        idx2 = nn12.table[idx]
        out.append(ReciprocalMatches(pixels1=_to_pixels(idx1, w1), pixels2=_to_pixels(idx2, w2),
                                     similarity=(flat1[k][idx1] * flat2[k][idx2]).sum(dim=1),
                                     comparisons=nn12.comparisons[k] + nn21.comparisons[k]))
    return out


@dataclass(frozen=True)
class Correspondences:
    """Pixel matches of pair ``e`` between views ``first[e]`` and ``second[e]`` of a pair
    batch.

    Attributes:
        pair: ``(M,)`` int64 index of each match's pair.
        pixel1, pixel2: ``(M,)`` int64 flat pixel indices (row * W + column) in each view.
        weight: ``(M,)`` non-negative match confidences.
    """

    pair: Tensor
    pixel1: Tensor
    pixel2: Tensor
    weight: Tensor


def four_way_matches(desc_a: Tensor, desc_b: Tensor, desc_b_swapped: Tensor,
                     desc_a_swapped: Tensor, conf_a: Tensor, conf_b: Tensor,
                     conf_b_swapped: Tensor, conf_a_swapped: Tensor, subsample: int = 8,
                     max_iterations: int = 10, chunk: int = DEFAULT_CHUNK) -> Correspondences:
    """MASt3R's correspondences of B image pairs ``(a, b)`` from both decodings of each pair.

    A pair network decodes a pair twice, ``(a, b)`` and ``(b, a)``, each time with a
    descriptor map for both images. In each decoding, fast reciprocal matching runs with its
    seed grid in image a and again with it in image b (four searches per pair); the union of
    the mutual nearest neighbours found is deduplicated. A match's confidence is the geometric
    mean of the two descriptor confidences of the decoding that found it (the ``(a, b)``
    decoding when both did, seeds in a before seeds in b).

    Args:
        desc_a, desc_b: ``(B, H, W, D)`` descriptors of a and b from the ``(a, b)`` decoding.
        desc_b_swapped, desc_a_swapped: The same from the ``(b, a)`` decoding.
        conf_a, conf_b, conf_b_swapped, conf_a_swapped: ``(B, H, W)`` their confidences.
        subsample: Seed grid stride in pixels (offset ``subsample // 2``).
        max_iterations: Round trips of each search (the official 10).
        chunk: Query chunk size of the nearest-neighbour searches.

    Returns:
        Matches sorted by pair, then pixel in a, then pixel in b; ``pixel1`` in a,
        ``pixel2`` in b, ``pair`` indexes the batch.
    """
    B, H, W, _ = desc_a.shape
    if desc_b.shape[1:3] != (H, W):
        raise ValueError(f"four-way matching needs images of one size, got {tuple(desc_a.shape)}"
                         f" and {tuple(desc_b.shape)}")
    found = fast_reciprocal_matches_batched(
        torch.cat([desc_a, desc_a_swapped]), torch.cat([desc_b, desc_b_swapped]), subsample,
        max_iterations, chunk, both_ways=True)
    conf_a, conf_b = torch.cat([conf_a, conf_a_swapped]), torch.cat([conf_b, conf_b_swapped])
    pair, in_a, in_b, weight = [], [], [], []
    for k, matches in enumerate(found):      # decoding (a, b) first, then (b, a)
        a = matches.pixels1[:, 1] * W + matches.pixels1[:, 0]
        b = matches.pixels2[:, 1] * W + matches.pixels2[:, 0]
        weight.append((conf_a[k].reshape(-1)[a] * conf_b[k].reshape(-1)[b]).float().sqrt())
        pair.append(torch.full_like(a, k % B))
        in_a.append(a)
        in_b.append(b)
    device = desc_a.device
    if not pair:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return Correspondences(empty, empty, empty, torch.zeros(0, device=device))
    pair, in_a, in_b, weight = (torch.cat(x) for x in (pair, in_a, in_b, weight))
    pixels = H * W
    keys, inverse = torch.unique((pair * pixels + in_a) * pixels + in_b, return_inverse=True)
    # the first of the concatenated searches to find each match gives its confidence
    order = torch.arange(len(inverse), device=device)
    first = torch.full((len(keys),), len(inverse), dtype=torch.int64, device=device)
    first = first.scatter_reduce(0, inverse, order, reduce="amin")
    return Correspondences(keys // (pixels * pixels), keys // pixels % pixels, keys % pixels,
                           weight[first])
