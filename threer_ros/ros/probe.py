"""A subscriber that records what the capture node publishes (used by the demo and the tests).

It subscribes like RViz does (reliable; ``/tf_static`` transient-local) and lets a caller wait
for events instead of sleeping.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseArray
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2
from tf2_msgs.msg import TFMessage


@dataclass
class Recorded:
    """Messages received so far (newest last)."""

    clouds: list[PointCloud2] = field(default_factory=list)
    #: (header stamp, wall-clock time of receipt) of every cloud, in nanoseconds
    cloud_arrivals: list[tuple[int, int]] = field(default_factory=list)
    poses: list[PoseArray] = field(default_factory=list)
    tf: dict[str, object] = field(default_factory=dict)         # child frame -> TransformStamped
    tf_static: dict[str, object] = field(default_factory=dict)  # child frame -> TransformStamped
    diagnostics: list[DiagnosticArray] = field(default_factory=list)


class OutputProbe(Node):
    """Records the node's outputs: clouds, poses, TF and diagnostics.

    Args:
        cloud_topic, poses_topic: Topic names as configured on the capture node.
        keep_clouds: How many clouds to keep in memory.
        node_kwargs: Passed to ``rclpy.node.Node`` (e.g. ``context``).
    """

    def __init__(self, cloud_topic: str = "/points", poses_topic: str = "/camera_poses",
                 keep_clouds: int = 4, **node_kwargs) -> None:
        super().__init__("threer_output_probe", **node_kwargs)
        self.recorded = Recorded()
        self._keep = keep_clouds
        self._cond = threading.Condition()
        reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE,
                              history=HistoryPolicy.KEEP_LAST)
        latched = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             history=HistoryPolicy.KEEP_LAST)
        self.create_subscription(PointCloud2, cloud_topic, self._on_cloud, reliable)
        self.create_subscription(PoseArray, poses_topic, self._append("poses"), reliable)
        self.create_subscription(TFMessage, "/tf", self._on_tf("tf"), QoSProfile(depth=100))
        self.create_subscription(TFMessage, "/tf_static", self._on_tf("tf_static"), latched)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._append("diagnostics"),
                                 QoSProfile(depth=10))

    def _on_cloud(self, msg: PointCloud2) -> None:
        received_ns = time.time_ns()
        with self._cond:
            stamp = msg.header.stamp
            self.recorded.cloud_arrivals.append((stamp.sec * 1_000_000_000 + stamp.nanosec,
                                                 received_ns))
            self.recorded.clouds.append(msg)
            del self.recorded.clouds[:-self._keep]
            self._cond.notify_all()

    def _append(self, name: str):
        def callback(msg) -> None:
            with self._cond:
                items = getattr(self.recorded, name)
                items.append(msg)
                del items[:-100]
                self._cond.notify_all()
        return callback

    def _on_tf(self, name: str):
        def callback(msg: TFMessage) -> None:
            with self._cond:
                store = getattr(self.recorded, name)
                for t in msg.transforms:
                    store[t.child_frame_id] = t
                self._cond.notify_all()
        return callback

    def wait_for(self, predicate, timeout: float) -> bool:
        """Wait until ``predicate(recorded)`` holds (the node must be spun by another thread)."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.recorded), timeout=timeout)

    def latest_status(self, name: str):
        """The newest DiagnosticStatus called ``name``, or None."""
        for array in reversed(self.recorded.diagnostics):
            for status in array.status:
                if status.name == name:
                    return status
        return None
