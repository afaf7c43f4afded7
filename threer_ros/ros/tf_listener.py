"""``/tf`` and ``/tf_static`` into a :class:`~threer_ros.geometry.tf_tree.TransformTree`
(tf2_ros has no PyPI wheel; this is the small part of its listener the capture node needs)."""

from __future__ import annotations

import threading

import numpy as np
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from tf2_msgs.msg import TFMessage

from threer_ros.geometry.tf_tree import TransformTree
from threer_ros.ros.convert import transform_to_matrix


def latched_qos(depth: int) -> QoSProfile:
    """Reliable, transient-local QoS: what tf2 uses for ``/tf_static``."""
    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL,
                      history=HistoryPolicy.KEEP_LAST)


class TfListener:
    """Keeps the newest transform of every edge published on ``/tf`` and ``/tf_static``
    (tf2's listener QoS: depth 100; static transient-local). Safe to query from any thread.

    Args:
        node: The node that owns the two subscriptions (its executor fills the tree).
    """

    def __init__(self, node: Node) -> None:
        self._tree = TransformTree()
        self._lock = threading.Lock()
        self._logger = node.get_logger()
        self.rejected = 0      # transforms refused (loops, bad numbers)
        node.create_subscription(TFMessage, "/tf", self._on_message, QoSProfile(depth=100))
        node.create_subscription(TFMessage, "/tf_static", self._on_message, latched_qos(100))

    def _on_message(self, msg: TFMessage) -> None:
        for t in msg.transforms:
            try:
                matrix = transform_to_matrix(t.transform)
                with self._lock:
                    self._tree.set(t.header.frame_id, t.child_frame_id, matrix)
            except ValueError as exc:
                self.rejected += 1
                self._logger.warning(f"ignored a transform: {exc}", throttle_duration_sec=10.0)

    def lookup(self, target: str, source: str) -> np.ndarray | None:
        """Pose of ``source`` in ``target`` (4x4, ``p_target = T @ p_source``) or None."""
        with self._lock:
            return self._tree.lookup(target, source)

    def parent(self, frame: str) -> str | None:
        """The frame's parent as published so far, or None."""
        with self._lock:
            return self._tree.parent(frame)
