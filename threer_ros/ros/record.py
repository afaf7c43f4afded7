"""``threer-ros record``: record ROS 2 topics into a rosbag2 bag (no ``ros2 bag`` needed).

    threer-ros record --out runs/run1                 # the capture node's outputs
    threer-ros record --out runs/run1.db3 /points /tf_static --duration 60

By default it records the capture node's outputs, named as in its parameter file (``--config``):
the cloud topic, the camera poses, ``/tf``, ``/tf_static`` and ``/diagnostics``. Each topic is
subscribed once it has a publisher in the ROS graph, with its publishers' reliability and
durability (so latched ``/tf_static`` is received too, also when its first publisher comes after
a subscriber such as the capture node's), as raw CDR bytes, which are written unchanged
through ``rosbags`` with the receive time (ROS clock, ns) as log time and the publishers' QoS
as offered QoS. Stops after ``--duration`` seconds or on Ctrl-C; either way the bag is closed
with its metadata. Types that ``rosbags`` does not know (custom messages) are skipped with a
warning.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosbags.rosbag2 import Writer

from threer_ros.cli import command_parser
from threer_ros.config import read_parameters
from threer_ros.data.rosbag import STORAGES, TYPESTORE, BagError, new_bag, qos
from threer_ros.ros.bag_player import message_class
from threer_ros.ros.spinning import SpinningNodes

#: How often the ROS graph is checked for the topics still awaited (seconds).
DISCOVERY_PERIOD_S = 0.5


def default_topics(config: Path | None = None) -> list[str]:
    """The capture node's outputs as absolute topic names (node in the root namespace)."""
    params = read_parameters(config)
    relative = [params["cloud_topic"], params["poses_topic"]]
    return [t if t.startswith("/") else "/" + t for t in relative] + \
        ["/tf", "/tf_static", "/diagnostics"]


class BagRecorder(Node):
    """Subscribes to ``topics`` once they have publishers and writes every message into
    ``writer``.

    Args:
        writer: An open ``rosbags`` writer; it is only used from this node's callbacks.
        topics: Absolute topic names.
        node_kwargs: Passed to ``rclpy.node.Node`` (e.g. ``context``).
    """

    def __init__(self, writer: Writer, topics: Sequence[str], **node_kwargs: Any) -> None:
        super().__init__("threer_recorder", **node_kwargs)
        self._writer = writer
        self._waiting = list(dict.fromkeys(topics))
        self._announced: set[str] = set()      # topics seen without publishers, logged once
        self.counts: dict[str, int] = {}
        self.create_timer(DISCOVERY_PERIOD_S, self._discover)
        self._discover()

    def _discover(self) -> None:
        types = dict(self.get_topic_names_and_types())
        for topic in list(self._waiting):
            if topic not in types:
                continue
            # A topic known only from its subscribers has no QoS to copy: a volatile guess
            # would miss what a latched publisher sent before it was matched.
            if not self.get_publishers_info_by_topic(topic):
                if topic not in self._announced:
                    self._announced.add(topic)
                    self.get_logger().info(f"waiting for a publisher on {topic}")
                continue
            self._waiting.remove(topic)
            if len(types[topic]) != 1:
                self.get_logger().warning(f"not recording {topic}: several types "
                                          f"{types[topic]}")
                continue
            self._subscribe(topic, types[topic][0])

    def _subscribe(self, topic: str, msgtype: str) -> None:
        cls = message_class(msgtype)
        if cls is None or msgtype not in TYPESTORE.types:
            self.get_logger().warning(f"not recording {topic}: type {msgtype} is not known")
            return
        offered = [p.qos_profile for p in self.get_publishers_info_by_topic(topic)]
        latched = all(q.durability == DurabilityPolicy.TRANSIENT_LOCAL for q in offered)
        reliable = all(q.reliability == ReliabilityPolicy.RELIABLE for q in offered)
        connection = self._writer.add_connection(
            topic, msgtype, typestore=TYPESTORE,
            offered_qos_profiles=[qos(reliable, latched, depth=1 if latched else 10)])
        profile = QoSProfile(
            depth=100, history=HistoryPolicy.KEEP_LAST,
            reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
            durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)
        self.counts[topic] = 0

        def write(raw: bytes) -> None:
            self._writer.write(connection, self.get_clock().now().nanoseconds, raw)
            self.counts[topic] += 1

        self.create_subscription(cls, topic, write, profile, raw=True)
        self.get_logger().info(f"recording {topic} ({msgtype})")


def _run(args: argparse.Namespace) -> int:
    topics = [t if t.startswith("/") else "/" + t for t in args.topics] \
        or default_topics(args.config)
    try:
        writer = new_bag(args.out, args.storage)
        writer.open()
    except (BagError, OSError) as exc:
        print(f"threer-ros record: {exc}", file=sys.stderr)
        return 2
    try:
        # the writer is used by the spinning thread only, and closed once that has ended
        with SpinningNodes(command_line=True) as ros:
            recorder = ros.add(BagRecorder(writer, topics, context=ros.context))
            ros.wait(timeout=args.duration if args.duration > 0 else None)
    finally:
        writer.close()
    counts = ", ".join(f"{t} {n}" for t, n in recorder.counts.items()) or "nothing"
    print(f"wrote {writer.path}: {counts}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``threer-ros record``."""
    p = command_parser(subparsers, "record", "record topics into a rosbag2 bag", __doc__)
    p.add_argument("topics", nargs="*",
                   help="topics to record (default: the capture node's outputs)")
    p.add_argument("--out", type=Path, required=True,
                   help="bag to create: a folder NAME/ (NAME.mcap or NAME.db3 also name the "
                        "folder NAME/ and choose the storage)")
    p.add_argument("--storage", choices=STORAGES, default=None,
                   help="storage plugin (default: from --out, else mcap)")
    p.add_argument("--duration", type=float, default=0.0,
                   help="stop after this many seconds (default 0: until Ctrl-C)")
    p.add_argument("--config", type=Path, default=None,
                   help="the node's parameter file, for the default topics")
    p.set_defaults(func=_run)
