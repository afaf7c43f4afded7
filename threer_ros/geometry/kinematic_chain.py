"""The kinematic chain of MASt3R's sparse alignment: a tree over the views along which camera
poses are parametrised relative to their parent (our code, after the official
``sparse_global_alignment``).

The tree comes from the pair scores (number of correspondences of each pair), either as the
maximum-score spanning tree (``mst``) or by Ward hierarchical clustering of the views
(``hclust-ward``, the official default): clusters merge in linkage order and each merge links
the two clusters' representatives, the view with the larger summed normalised score. The chain
is rooted near the middle of the tree (:func:`rooted_chain`) and listed parent before child.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

KINEMATIC_MODES = ("hclust-ward", "mst")


class KinematicChain(NamedTuple):
    """A rooted spanning tree over N views.

    Attributes:
        root: The root view.
        edges: ``(parent, child)`` pairs in breadth-first order (a parent precedes its
            children); N - 1 of them.
    """

    root: int
    edges: list[tuple[int, int]]

    def levels(self) -> list[tuple[list[int], list[int]]]:
        """``(parents, children)`` of each depth of the tree, shallowest first: composing poses
        level by level visits every parent before its children."""
        depth = {self.root: 0}
        out: list[tuple[list[int], list[int]]] = []
        for parent, child in self.edges:
            depth[child] = depth[parent] + 1
            if depth[child] > len(out):
                out.append(([], []))
            out[depth[child] - 1][0].append(parent)
            out[depth[child] - 1][1].append(child)
        return out


def _breadth_first(adjacency: np.ndarray, start: int) -> tuple[list[int], dict[int, int]]:
    """Visiting order and predecessors of a breadth-first walk, neighbours in index order."""
    order, parent, queue = [start], {}, [start]
    while queue:
        node = queue.pop(0)
        for other in np.flatnonzero(adjacency[node]).tolist():
            if other != start and other not in parent:
                parent[other] = node
                order.append(other)
                queue.append(other)
    return order, parent


def rooted_chain(tree: np.ndarray) -> KinematicChain:
    """Root an ``(N, N)`` symmetric tree adjacency as the official code does: walk it
    breadth-first from the last view reached from view 0, and again from the last view reached
    by that walk; the root is the view whose smaller visit rank in the two walks is largest
    (the middle of a path; visit ranks, not depths, so not always the centre of a tree).
    """
    n = len(tree)

    def ranks(start: int) -> np.ndarray:
        order, _ = _breadth_first(tree, start)
        if len(order) != n:
            raise ValueError(f"the kinematic tree does not reach views "
                             f"{sorted(set(range(n)) - set(order))}")
        rank = np.empty(n, dtype=int)
        rank[order] = np.arange(n)
        return rank

    end = int(ranks(0).argmax())
    from_end = ranks(end)
    root = int(np.minimum(from_end, ranks(int(from_end.argmax()))).argmax())
    order, parent = _breadth_first(tree, root)
    return KinematicChain(root, [(parent[v], v) for v in order[1:]])


def _maximum_spanning_tree(scores: np.ndarray) -> np.ndarray:
    """Adjacency of the maximum spanning tree of the positive scores (Kruskal)."""
    n = len(scores)
    label = list(range(n))

    def find(v: int) -> int:
        while label[v] != v:
            label[v] = label[label[v]]
            v = label[v]
        return v

    tree = np.zeros((n, n), dtype=bool)
    i, j = np.triu_indices(n, 1)
    for k in np.argsort(-scores[i, j], kind="stable"):
        a, b = int(i[k]), int(j[k])
        if scores[a, b] > 0 and find(a) != find(b):
            label[find(a)] = find(b)
            tree[a, b] = tree[b, a] = True
    return tree


def _ward_tree(scores: np.ndarray, patches: np.ndarray) -> np.ndarray:
    """Adjacency of the tree of Ward hierarchical clustering on ``1 - normalised score``
    (2 for pairs without score), a pair's score normalised by three times the smaller patch
    count of its two views and capped at 1."""
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    n = len(scores)
    norm = np.minimum(scores / (3.0 * np.minimum(patches[:, None], patches[None])), 1.0)
    np.fill_diagonal(norm, 1.0)
    distance = np.where(norm != 0, 1 - norm, 2.0)
    merges = linkage(squareform(distance, checks=False), method="ward")
    tree = np.zeros((n, n), dtype=bool)
    representative = {v: v for v in range(n)}
    for k, (a, b) in enumerate(merges[:, :2].astype(int)):
        a, b = representative[a], representative[b]
        tree[a, b] = tree[b, a] = True
        best = a if norm[a].sum() > norm[b].sum() else b
        representative[n + k] = best
        norm[best] = np.maximum(norm[a], norm[b])
    return tree


def kinematic_chain(scores: np.ndarray, patches: np.ndarray,
                    mode: str = "hclust-ward") -> KinematicChain:
    """The kinematic chain of N views (module docstring).

    Args:
        scores: ``(N, N)`` symmetric pair scores (correspondence counts; 0 = not a pair).
        patches: ``(N,)`` anchor count of each view (``H // s * W // s`` for subsample s).
        mode: ``hclust-ward`` or ``mst``.

    Raises:
        ValueError: an unknown mode, or (``mst``) pair scores that do not connect the views.
    """
    scores = np.asarray(scores, dtype=float)
    if mode == "hclust-ward":
        tree = _ward_tree(scores, np.asarray(patches, dtype=float))
    elif mode == "mst":
        tree = _maximum_spanning_tree(scores)
    else:
        raise ValueError(f"unknown kinematic chain mode {mode!r}: use "
                         f"{', '.join(KINEMATIC_MODES)}")
    return rooted_chain(tree)
