"""A tree of coordinate frames joined by rigid transforms, with tf2's semantics (no ROS).

Each frame has at most one parent. An edge ``parent -> child`` holds the 4x4 matrix ``T`` that
maps child coordinates into the parent frame (``p_parent = T @ p_child``, metres), i.e. the
child's pose in the parent, as ``geometry_msgs/TransformStamped`` carries it. Only the newest
transform of each edge is kept: the tree answers "where is frame A in frame B now", enough for
a rig whose camera frames are static or slowly re-published.
"""

from __future__ import annotations

import numpy as np


class TransformTree:
    """Frames and their parent edges; :meth:`lookup` composes chains through common ancestors."""

    def __init__(self) -> None:
        self._edges: dict[str, tuple[str, np.ndarray]] = {}   # child -> (parent, T parent<-child)

    def set(self, parent: str, child: str, transform: np.ndarray) -> None:
        """Set (or replace) the edge ``parent -> child``; the child's previous parent, if any,
        is replaced, as tf2 does.

        Raises:
            ValueError: empty names, ``parent == child``, a transform that is not 4x4 and
                finite, or an edge that would close a loop (``parent`` below ``child``).
        """
        matrix = np.asarray(transform, dtype=np.float64)
        if not parent or not child or parent == child:
            raise ValueError(f"a transform needs two distinct frames, got {parent!r} -> {child!r}")
        if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
            raise ValueError(f"transform {parent!r} -> {child!r} is not a finite 4x4 matrix")
        if child in self._to_ancestors(parent):
            raise ValueError(f"transform {parent!r} -> {child!r} would close a loop: "
                             f"{parent!r} is already below {child!r}")
        self._edges[child] = (parent, matrix)

    def parent(self, frame: str) -> str | None:
        """The parent of ``frame``, or None for a root or an unknown frame."""
        edge = self._edges.get(frame)
        return edge[0] if edge else None

    def frames(self) -> set[str]:
        """Every frame named by an edge."""
        return set(self._edges) | {parent for parent, _ in self._edges.values()}

    def lookup(self, target: str, source: str) -> np.ndarray | None:
        """The pose of ``source`` in ``target``: ``T`` with ``p_target = T @ p_source``
        (a 4x4 array), or None when the two frames are not connected."""
        if target == source:
            return np.eye(4) if target in self.frames() else None
        up_source = self._to_ancestors(source)
        up_target = self._to_ancestors(target)
        common = next((frame for frame in up_source if frame in up_target), None)
        if common is None:
            return None
        return np.linalg.inv(up_target[common]) @ up_source[common]

    def _to_ancestors(self, frame: str) -> dict[str, np.ndarray]:
        """``frame`` and each of its ancestors (nearest first) -> pose of ``frame`` in it."""
        chain = {frame: np.eye(4)}
        pose, current = np.eye(4), frame
        while current in self._edges:
            parent, matrix = self._edges[current]
            pose = matrix @ pose
            chain[parent] = pose
            current = parent
        return chain
