"""Reciprocal nearest-neighbour matching: chunked search, brute force, MASt3R fast matching."""

from __future__ import annotations

import pytest
import torch
from torch.nn.functional import normalize

from threer_ros.geometry.matching import (ReciprocalMatches, fast_reciprocal_matches,
                                          fast_reciprocal_matches_batched, nearest_neighbours,
                                          reciprocal_matches_brute_force)


def random_descriptors(shape: tuple[int, ...], seed: int,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Unit-norm i.i.d. Gaussian descriptors along the last axis."""
    generator = torch.Generator().manual_seed(seed)
    return normalize(torch.randn(shape, generator=generator, dtype=dtype), dim=-1)


def shifted_pair(height: int, width: int, dim: int, shift: tuple[int, int], seed: int,
                 noise: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """Two crops of one random field: image-2 pixel ``(x, y)`` shows image-1 ``(x+dx, y+dy)``."""
    dx, dy = shift
    field = random_descriptors((height + dy, width + dx, dim), seed)
    generator = torch.Generator().manual_seed(seed + 1)
    moved = field[dy:dy + height, dx:dx + width]
    moved = normalize(moved + noise * torch.randn(moved.shape, generator=generator), dim=-1)
    return field[:height, :width], moved


def pair_set(matches: ReciprocalMatches, width1: int, width2: int) -> set[tuple[int, int]]:
    """Matches as ``{(flat1, flat2)}``."""
    flat1 = matches.pixels1[:, 1] * width1 + matches.pixels1[:, 0]
    flat2 = matches.pixels2[:, 1] * width2 + matches.pixels2[:, 0]
    return set(zip(flat1.tolist(), flat2.tolist()))


def brute_force_set(desc1: torch.Tensor, desc2: torch.Tensor) -> set[tuple[int, int]]:
    idx1, idx2 = reciprocal_matches_brute_force(desc1.reshape(-1, desc1.shape[-1]),
                                                desc2.reshape(-1, desc2.shape[-1]))
    return set(zip(idx1.tolist(), idx2.tolist()))


@pytest.mark.parametrize("chunk", [1, 7, 10_000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nearest_neighbours_matches_cdist(chunk: int, dtype: torch.dtype) -> None:
    queries = random_descriptors((53, 8), 0, dtype)
    database = random_descriptors((41, 8), 1, dtype)
    # For unit vectors the largest dot product is the smallest Euclidean distance.
    expected = torch.cdist(queries, database).argmin(dim=1)
    found = nearest_neighbours(queries, database, chunk=chunk)
    assert found.dtype == torch.int64 and found.shape == (53,)
    assert torch.equal(found, expected)
    assert torch.equal(found, (queries @ database.T).argmax(dim=1))


def test_nearest_neighbours_edge_cases() -> None:
    database = random_descriptors((5, 3), 0)
    assert nearest_neighbours(torch.empty(0, 3), database).shape == (0,)
    assert torch.equal(nearest_neighbours(database, database, chunk=2), torch.arange(5))
    with pytest.raises(ValueError):
        nearest_neighbours(database, database, chunk=0)
    with pytest.raises(ValueError):
        nearest_neighbours(database, torch.empty(0, 3))


def test_brute_force_pairs_are_mutual() -> None:
    desc1, desc2 = random_descriptors((60, 4), 2), random_descriptors((45, 4), 3)
    idx1, idx2 = reciprocal_matches_brute_force(desc1, desc2)
    assert len(idx1) > 0
    assert torch.equal(nearest_neighbours(desc1[idx1], desc2), idx2)
    assert torch.equal(nearest_neighbours(desc2[idx2], desc1), idx1)
    assert len(set(idx2.tolist())) == len(idx2)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("subsample", [2, 3, 5])
def test_fast_matches_are_brute_force_subset(seed: int, subsample: int) -> None:
    # Low-dimensional descriptors give large basins, so seeds need several round trips.
    desc1 = random_descriptors((14, 17, 3), 10 * seed)
    desc2 = random_descriptors((13, 19, 3), 10 * seed + 1)
    matches = fast_reciprocal_matches(desc1, desc2, subsample=subsample)
    found = pair_set(matches, 17, 19)
    assert len(found) == len(matches.similarity) > 0
    assert found <= brute_force_set(desc1, desc2)
    rows1 = desc1[matches.pixels1[:, 1], matches.pixels1[:, 0]]
    rows2 = desc2[matches.pixels2[:, 1], matches.pixels2[:, 0]]
    assert torch.allclose(matches.similarity, (rows1 * rows2).sum(dim=1))


@pytest.mark.parametrize("seed", range(3))
def test_fast_equals_brute_force_with_dense_seeds(seed: int) -> None:
    desc1 = random_descriptors((11, 9, 4), seed)
    desc2 = random_descriptors((8, 12, 4), seed + 100)
    matches = fast_reciprocal_matches(desc1, desc2, subsample=1, max_iterations=1)
    assert pair_set(matches, 9, 12) == brute_force_set(desc1, desc2)


def test_more_iterations_find_more_matches() -> None:
    desc1 = random_descriptors((20, 20, 3), 7)
    desc2 = random_descriptors((20, 20, 3), 8)
    counts = []
    previous: set[tuple[int, int]] = set()
    for iterations in range(1, 7):
        found = pair_set(fast_reciprocal_matches(desc1, desc2, 4, iterations), 20, 20)
        assert previous <= found
        previous = found
        counts.append(len(found))
    assert counts[-1] > counts[0]
    assert fast_reciprocal_matches(desc1, desc2, 4, max_iterations=0).pixels1.shape == (0, 2)


@pytest.mark.parametrize("shift", [(3, 5), (0, 0), (7, 1)])
def test_fast_matches_recover_shift(shift: tuple[int, int]) -> None:
    desc1, desc2 = shifted_pair(40, 48, 16, shift, seed=sum(shift))
    matches = fast_reciprocal_matches(desc1, desc2, subsample=4)
    assert pair_set(matches, 48, 48) <= brute_force_set(desc1, desc2)
    offsets = matches.pixels1 - matches.pixels2
    correct = (offsets == torch.tensor(shift)).all(dim=1)
    # Seeds inside the overlap (x >= dx, y >= dy) are the ones expected to match.
    columns = sum(x >= shift[0] for x in range(2, 48, 4))
    rows = sum(y >= shift[1] for y in range(2, 40, 4))
    assert len(matches.similarity) >= 0.9 * columns * rows
    assert correct.float().mean() >= 0.95


def test_large_input_needs_far_fewer_comparisons() -> None:
    height, width = 96, 128
    desc1, desc2 = shifted_pair(height, width, 24, (6, 4), seed=3)
    matches = fast_reciprocal_matches(desc1, desc2, subsample=8)
    assert matches.comparisons * 10 <= (height * width) ** 2
    assert len(matches.similarity) >= 150
    correct = (matches.pixels1 - matches.pixels2 == torch.tensor([6, 4])).all(dim=1)
    assert correct.float().mean() >= 0.95
    flat1, flat2 = desc1.reshape(-1, 24), desc2.reshape(-1, 24)
    idx1 = matches.pixels1[:, 1] * width + matches.pixels1[:, 0]
    idx2 = matches.pixels2[:, 1] * width + matches.pixels2[:, 0]
    assert torch.equal(nearest_neighbours(flat1[idx1], flat2), idx2)
    assert torch.equal(nearest_neighbours(flat2[idx2], flat1), idx1)
    brute = random_descriptors((height, width, 24), 4), random_descriptors((height, width, 24), 5)
    assert fast_reciprocal_matches(*brute).comparisons * 10 <= (height * width) ** 2


def test_fast_matches_keep_dtype_and_reject_bad_shapes() -> None:
    desc1 = random_descriptors((6, 7, 5), 0, torch.float64)
    matches = fast_reciprocal_matches(desc1, desc1.clone(), subsample=2)
    assert matches.similarity.dtype == torch.float64
    assert matches.pixels1.dtype == matches.pixels2.dtype == torch.int64
    assert torch.equal(matches.pixels1, matches.pixels2)
    assert matches.pixels1.tolist() == [[x, y] for y in (1, 3, 5) for x in (1, 3, 5)]
    with pytest.raises(ValueError):
        fast_reciprocal_matches(desc1, desc1[..., :4])
    with pytest.raises(ValueError):
        fast_reciprocal_matches(desc1, desc1, subsample=0)


def test_pairs_matched_together_match_as_each_alone() -> None:
    """The batched matching keeps the pairs apart: each pair's matches and search count are
    those of matching it alone, with differently sized first and second images."""
    pairs = [shifted_pair(20, 24, 8, shift, seed) for seed, shift in
             enumerate([(0, 0), (3, 1), (1, 4)])]
    first = torch.stack([a for a, _ in pairs])
    second = torch.stack([b[:18] for _, b in pairs])        # 18 x 24 second images
    together = fast_reciprocal_matches_batched(first, second, subsample=3)
    assert len(together) == 3
    for a, b, both in zip(first, second, together):
        alone = fast_reciprocal_matches(a, b, subsample=3)
        assert torch.equal(both.pixels1, alone.pixels1)
        assert torch.equal(both.pixels2, alone.pixels2)
        assert both.comparisons == alone.comparisons
        assert pair_set(both, 24, 24) <= brute_force_set(a, b)
    with pytest.raises(ValueError, match="each side of one shape"):
        fast_reciprocal_matches_batched([first[0], first[1, :10]], list(second[:2]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fast_matches_on_cuda(dtype: torch.dtype) -> None:
    desc1, desc2 = shifted_pair(48, 64, 16, (5, 2), seed=11)
    cpu = fast_reciprocal_matches(desc1, desc2, subsample=4, chunk=100)
    gpu = fast_reciprocal_matches(desc1.cuda().to(dtype), desc2.cuda().to(dtype), subsample=4,
                                  chunk=100)
    assert gpu.pixels1.is_cuda and gpu.similarity.dtype == dtype
    if dtype == torch.float32:
        assert pair_set(gpu, 64, 64) == pair_set(cpu, 64, 64)
    correct = (gpu.pixels1 - gpu.pixels2 == torch.tensor([5, 2], device="cuda")).all(dim=1)
    assert correct.float().mean() >= 0.95 and len(correct) >= 0.9 * len(cpu.similarity)
