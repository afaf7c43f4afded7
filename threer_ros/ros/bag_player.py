"""Publish a rosbag2 bag's messages with their recorded timing (what ``threer-ros replay`` runs).

Messages are read with ``rosbags`` (:mod:`threer_ros.data.rosbag`) as CDR bytes and turned into
rclpy messages with ``rclpy.serialization.deserialize_message``, so any type installed in the
ROS environment can be replayed. Timing: message i is published ``(t_i - t_first) / rate``
seconds (monotonic clock) after the start of a pass, t being the bag's log time. Restamping maps
each header stamp s to ``now_0 + (s - t_first) / rate``, ``now_0`` being the ROS time at the
start of the pass: the stamps then say when a live rig would have sent the messages, and the
cameras of one set keep one stamp. (This assumes that header stamps and log times share one
clock, as in bags made by ``threer-ros bag`` or recorded from live topics.) With ``clock``, the
bag's time (log time, restamped like the headers) goes out on ``/clock`` before each message,
for nodes that run with ``use_sim_time``.
"""

from __future__ import annotations

import importlib
import itertools
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from builtin_interfaces.msg import Time
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.publisher import Publisher
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from rosgraph_msgs.msg import Clock

from threer_ros.data.rosbag import (TF_STATIC, BagError, BagInfo, BagMessage, BagReader,
                                   TopicInfo)

#: The camera types: images and CameraInfo.
SENSOR_TYPES = frozenset({"sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage",
                          "sensor_msgs/msg/CameraInfo"})
#: QoS offered for camera topics: reliable, keep last 5, volatile, so that best-effort
#: subscribers (camera-driver style) and reliable ones (the capture node's
#: ``image_reliability: reliable``, which loses no image of a burst) both match; five images
#: a camera, as the node keeps, so that a reader that falls behind for a moment loses none
#: (the writer's history is what a reliable reader catches up from).
CAMERA_QOS = QoSProfile(depth=5, history=HistoryPolicy.KEEP_LAST,
                        durability=DurabilityPolicy.VOLATILE,
                        reliability=ReliabilityPolicy.RELIABLE)


def message_class(msgtype: str) -> type | None:
    """The rclpy class of ``pkg/msg/Name``, or None when that package is not installed."""
    try:
        package, kind, name = msgtype.split("/")
        return getattr(importlib.import_module(f"{package}.{kind}"), name)
    except (ValueError, ImportError, AttributeError):
        return None


def is_latched(topic: TopicInfo) -> bool:
    """Whether ``topic`` is replayed transient-local: recorded so, or ``/tf_static``."""
    return topic.latched or topic.name == TF_STATIC


def topic_qos(topic: TopicInfo) -> QoSProfile:
    """QoS to publish ``topic`` with (see the module docstring of ``threer_ros.ros.replay``)."""
    if is_latched(topic):
        return QoSProfile(depth=max(1, min(topic.count, 100)),
                          reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.TRANSIENT_LOCAL,
                          history=HistoryPolicy.KEEP_LAST)
    if topic.msgtype in SENSOR_TYPES:
        return CAMERA_QOS
    return QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                      history=HistoryPolicy.KEEP_LAST)


def map_stamps(msg: Any, mapping: Callable[[int], int]) -> None:
    """Replace the header stamp(s) of ``msg`` (each transform's for a TFMessage), in ns, by
    ``mapping(stamp)``."""
    if hasattr(msg, "transforms"):
        headers = [t.header for t in msg.transforms]
    else:
        headers = [msg.header] if hasattr(msg, "header") else []
    for header in headers:
        ns = mapping(header.stamp.sec * 1_000_000_000 + header.stamp.nanosec)
        header.stamp.sec, header.stamp.nanosec = divmod(ns, 1_000_000_000)


@dataclass
class PlaybackStats:
    """What a playback did.

    Attributes:
        published: Messages published.
        passes: Complete passes over the window.
        max_lateness_s: Largest delay of a publish behind its schedule, in seconds.
    """

    published: int = 0
    passes: int = 0
    max_lateness_s: float = 0.0


def wait_for_delivery(publishers: Iterable[Publisher], timeout_s: float) -> bool:
    """Wait (at most ``timeout_s`` in all) until the reliable subscribers of ``publishers``
    have acknowledged everything published, so that a replay that ends does not take its last
    messages with it; whether they all have."""
    deadline = time.monotonic() + timeout_s
    for publisher in publishers:
        left = max(0.0, deadline - time.monotonic())
        if not publisher.wait_for_all_acked(Duration(nanoseconds=int(left * 1e9))):
            return False
    return True


class BagPlayer:
    """Publishes a bag's topics on ``node`` with their recorded timing.

    Args:
        node: The node that owns the publishers.
        info: The bag (:func:`threer_ros.data.rosbag.bag_info`).
        rate: Speed factor (2 = twice as fast).
        start_s, end_s: Window of log times, in seconds from the bag's first message
            (``end_s=None``: to the end).
        restamp: Map header stamps to the node clock's "now" (module docstring).
        loop: Start the window again when it ends, until stopped.
        clock: Publish the bag's time on ``/clock`` (module docstring).
        on_publish: Called with (topic, message) right after each publish.

    Raises:
        BagError: a bad window, or no topic whose type is installed.
    """

    def __init__(self, node: Node, info: BagInfo, *, rate: float = 1.0, start_s: float = 0.0,
                 end_s: float | None = None, restamp: bool = False, loop: bool = False,
                 clock: bool = False, on_publish: Callable[[str, Any], None] | None = None) -> None:
        if rate <= 0:
            raise BagError(f"{info.path}: the playback rate must be > 0, got {rate}")
        self.info = info
        self._node = node
        self._rate, self._restamp, self._loop = rate, restamp, loop
        self._on_publish = on_publish
        self._start_ns = info.start_ns + round(start_s * 1e9)
        self._stop_ns = info.end_ns + 1 if end_s is None else info.start_ns + round(end_s * 1e9)
        if start_s < 0 or self._start_ns >= self._stop_ns or self._start_ns > info.end_ns:
            raise BagError(f"{info.path}: the window {start_s}..{end_s} s holds no message of a "
                           f"bag of {info.duration_ns / 1e9:.3f} s")
        self._publishers: dict[str, tuple[type, Any]] = {}
        for topic in info.topics:
            cls = message_class(topic.msgtype)
            if cls is None:
                node.get_logger().warning(f"not replaying {topic.name}: type {topic.msgtype} is "
                                          "not installed")
                continue
            self._publishers[topic.name] = (cls, node.create_publisher(cls, topic.name,
                                                                       topic_qos(topic)))
        if not self._publishers:
            raise BagError(f"{info.path}: none of its message types is installed")
        self._clock = node.create_publisher(Clock, "/clock", 1) if clock else None

    def wait_for_subscribers(self, stop: threading.Event) -> bool:
        """Wait until every camera topic (Image, CompressedImage, CameraInfo) has a subscriber,
        or ``stop`` is set, so that the first sets are not lost to a node still starting.
        Returns False when stopped."""
        cameras = [self._publishers[t.name][1] for t in self.info.topics
                   if t.msgtype in SENSOR_TYPES and t.name in self._publishers]
        # Polled: rclpy of Humble has no event for a matched subscription.
        while not all(pub.get_subscription_count() > 0 for pub in cameras):
            if stop.wait(0.1) or not self._node.context.ok():
                return False
        return True

    def play(self, stop: threading.Event) -> PlaybackStats:
        """Publish the window (repeatedly with ``loop``) until done or ``stop`` is set.

        Each pass first publishes the latched topics' messages from before the window (the rig
        calibration on ``/tf_static``), then the window on schedule. With ``loop`` the next
        pass starts one mean interval between the window's log times (1 s for a single time)
        after its last message, so that restamped sets keep the recorded rhythm.

        Raises:
            BagError: the bag turns out to be truncated or damaged while playing.
        """
        stats = PlaybackStats()
        clock = self._node.get_clock()
        ros_minus_wall = clock.now().nanoseconds - time.monotonic_ns()
        wall0 = None
        with BagReader(self.info.path) as bag:      # opened once: opening takes a while
            while not stop.is_set() and self._node.context.ok():
                wall0 = self._play_pass(bag, stop, stats, wall0, ros_minus_wall)
                if wall0 is None:
                    break
                stats.passes += 1
                if not self._loop:
                    break
        return stats

    def _play_pass(self, bag: BagReader, stop: threading.Event, stats: PlaybackStats,
                   wall0: int | None, ros_minus_wall: int) -> int | None:
        """One pass starting at monotonic time ``wall0`` (None: now); returns the start of the
        next pass, or None when interrupted."""
        latched = [t.name for t in self.info.topics if t.name in self._publishers and is_latched(t)]
        before = list(bag.messages(latched, stop_ns=self._start_ns)) \
            if latched and self._start_ns > self.info.start_ns else []
        window = bag.messages(list(self._publishers), self._start_ns, self._stop_ns)
        if wall0 is None:
            wall0 = time.monotonic_ns()
        ros0 = wall0 + ros_minus_wall

        def restamp(stamp_ns: int) -> int:
            return ros0 + round((stamp_ns - self._start_ns) / self._rate)

        times: set[int] = set()
        for item in itertools.chain(before, window):
            due = wall0 + max(0, item.stamp_ns - self._start_ns) / self._rate
            delay = due - time.monotonic_ns()
            if delay > 0 and stop.wait(delay / 1e9):
                return None
            if not self._node.context.ok():
                return None
            self._publish(item, restamp if self._restamp else None)
            stats.published += 1
            stats.max_lateness_s = max(stats.max_lateness_s,
                                       (time.monotonic_ns() - due) / 1e9)
            if item.stamp_ns >= self._start_ns:
                times.add(item.stamp_ns)
        interval = (max(times) - min(times)) / (len(times) - 1) if len(times) > 1 else 1e9
        return wall0 + round((max(times, default=self._start_ns) - self._start_ns + interval)
                             / self._rate)

    def _publish(self, item: BagMessage, restamp: Callable[[int], int] | None) -> None:
        cls, publisher = self._publishers[item.topic]
        try:
            msg = deserialize_message(item.raw, cls)
        except Exception as exc:  # noqa: BLE001 - rclpy raises several kinds on bad CDR
            raise BagError(f"{self.info.path}: the {item.topic} message at {item.stamp_ns} ns "
                           f"is damaged ({exc})") from None
        if restamp is not None:
            map_stamps(msg, restamp)
        if self._clock is not None:
            ns = item.stamp_ns if restamp is None else restamp(item.stamp_ns)
            self._clock.publish(Clock(clock=Time(sec=ns // 1_000_000_000,
                                                 nanosec=ns % 1_000_000_000)))
        publisher.publish(msg)
        if self._on_publish is not None:
            self._on_publish(item.topic, msg)
