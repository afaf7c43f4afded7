"""Publish camera topics for the capture node: a bag (``replay <bag>``) or the synthetic rig.

**Bag** (``threer-ros replay capture/``): every topic of a rosbag2 bag is published with the
recorded timing: message i goes out ``(t_i - t_first) / rate`` seconds after the start, where
t is the log time (the header stamp in bags made by ``threer-ros bag``). QoS per topic:
``/tf_static`` (and any topic recorded as transient-local) reliable and transient-local, so a
node that starts later still gets the rig calibration; Image, CompressedImage and CameraInfo
reliable, keep last 5 (:data:`~threer_ros.ros.bag_player.CAMERA_QOS`), which serves
best-effort and reliable subscribers alike; everything else reliable. Header stamps
are kept, or with ``--restamp`` shifted so that each pass starts at the current ROS time (the
cameras of one set keep one stamp). ``--start``/``--end`` select a window (seconds from the
bag's first message), ``--loop`` repeats it; ``--clock`` publishes the bag's time on ``/clock``
(for nodes run with ``use_sim_time``).

**Synthetic** (``--synthetic``): the publisher behaves like a hardware-triggered rig: every
period all cameras capture; each image's header stamp is the trigger time plus a small random
offset (camera jitter), and the cameras' messages go out in a random order, offered reliable
(:data:`~threer_ros.ros.bag_player.CAMERA_QOS`). ``CameraInfo``
accompanies every image with the same stamp and frame id (``<camera>_optical_frame``).
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from threer_ros.cli import command_parser
from threer_ros.config import read_parameters
from threer_ros.data.calibration import save_rig_calibration
from threer_ros.data.rosbag import BagError, bag_info
from threer_ros.ros.bag_player import CAMERA_QOS, BagPlayer, wait_for_delivery
from threer_ros.ros.convert import (calibration_to_camera_info_fields, encode_compressed,
                                    image_to_msg_fields)
from threer_ros.ros.spinning import SpinningNodes

if TYPE_CHECKING:
    from threer_ros.data.synthetic import SyntheticRig


class SyntheticRigPublisher(Node):
    """Replays a rendered synthetic capture at ``rate_hz`` with per-camera stamp jitter.

    Args:
        rig: The rendered rig (images and calibration per camera).
        image_topic, camera_info_topic: Topic templates with ``{camera}`` (as in the config).
        rate_hz: Trigger rate.
        jitter_s: Standard deviation of each camera's stamp offset from the trigger (seconds).
        count: Number of sets to publish (0 = until shut down).
        compressed: Publish ``CompressedImage`` (JPEG) on ``<image_topic>/compressed``.
        seed: Seed of the jitter and publication order.
        node_kwargs: Passed to ``rclpy.node.Node`` (e.g. ``context``).
    """

    def __init__(self, rig: SyntheticRig, image_topic: str, camera_info_topic: str,
                 rate_hz: float = 2.0, jitter_s: float = 0.001, count: int = 0,
                 compressed: bool = False, seed: int = 0, **node_kwargs: Any) -> None:
        super().__init__("threer_synthetic_rig", **node_kwargs)
        self._rng = np.random.default_rng(seed)
        self._jitter_ns = jitter_s * 1e9
        self._remaining = count if count > 0 else None
        self.done = threading.Event()
        msg_type = CompressedImage if compressed else Image
        suffix = "/compressed" if compressed else ""
        self._cameras = []
        for view in rig.views:
            topic = image_topic.replace("{camera}", view.name) + suffix
            if compressed:
                image_msg = msg_type(format="rgb8; jpeg compressed bgr8",
                                     data=encode_compressed(view.image, "jpeg"))
            else:
                image_msg = msg_type(**image_to_msg_fields(view.image, "rgb8"))
            info_msg = CameraInfo(**calibration_to_camera_info_fields(view.calibration))
            frame_id = f"{view.name}_optical_frame"
            image_msg.header.frame_id = info_msg.header.frame_id = frame_id
            self._cameras.append((
                self.create_publisher(msg_type, topic, CAMERA_QOS),
                self.create_publisher(CameraInfo, camera_info_topic.replace("{camera}", view.name),
                                      CAMERA_QOS) if camera_info_topic else None,
                image_msg, info_msg))
        self.create_timer(1.0 / rate_hz, self._trigger)

    def _trigger(self) -> None:
        if self._remaining is not None and self._remaining <= 0:
            self.done.set()
            return
        trigger_ns = self.get_clock().now().nanoseconds
        for i in self._rng.permutation(len(self._cameras)):
            image_pub, info_pub, image_msg, info_msg = self._cameras[i]
            stamp_ns = trigger_ns + int(self._rng.normal(0.0, self._jitter_ns))
            stamp = Header().stamp
            stamp.sec, stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
            image_msg.header.stamp = info_msg.header.stamp = stamp
            if info_pub is not None:
                info_pub.publish(info_msg)
            image_pub.publish(image_msg)
        if self._remaining is not None:
            self._remaining -= 1


#: How long a replay that has published its last message waits for reliable subscribers to
#: acknowledge what they have not yet (seconds).
DELIVERY_TIMEOUT_S = 10.0


def _deliver_before_ending(node: Node) -> None:
    """Let reliable subscribers acknowledge the last messages of every publisher of ``node``
    before a finite replay ends; warn when they have not after :data:`DELIVERY_TIMEOUT_S`."""
    if not wait_for_delivery(node.publishers, DELIVERY_TIMEOUT_S):
        node.get_logger().warning(
            f"some subscribers had not acknowledged every message after {DELIVERY_TIMEOUT_S:g} "
            "s; ending anyway (they may miss the last ones)")


def _run_synthetic(args: argparse.Namespace) -> int:
    from threer_ros.data.synthetic import SyntheticRig  # torch: only for the synthetic rig

    params = read_parameters(args.config)
    if args.rendered is not None:
        try:
            rig = SyntheticRig.load(args.rendered)
        except ValueError as exc:
            print(f"threer-ros replay: {exc}", file=sys.stderr)
            return 2
    else:
        rig = SyntheticRig.render(seed=args.seed, width=args.width or params["working_width"],
                                  names=params["cameras"])
    if args.write_calibration:
        save_rig_calibration(args.write_calibration, params["output_frame"],
                             {v.name: v.calibration for v in rig.views})
        # flushed: the launch file starts the capture node when it reads the path here
        print(f"wrote the synthetic rig's calibration to {args.write_calibration}", flush=True)
    with SpinningNodes(command_line=True) as ros:      # Ctrl-C ends the block quietly
        node = ros.add(SyntheticRigPublisher(
            rig, params["image_topic"], params["camera_info_topic"], rate_hz=args.rate or 2.0,
            jitter_s=args.jitter, count=args.count, compressed=args.compressed,
            seed=args.seed, context=ros.context))
        ros.wait(node.done)
        if node.done.is_set():          # all --count sets sent (not Ctrl-C)
            _deliver_before_ending(node)
    return 0


def _run_bag(args: argparse.Namespace) -> int:
    """Replay ``args.bag``; errors in the bag are reported before ROS starts, when possible."""
    try:
        info = bag_info(args.bag)
    except BagError as exc:
        print(f"threer-ros replay: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    with SpinningNodes(command_line=True) as ros:      # Ctrl-C ends the block quietly
        node = ros.add(Node("threer_bag_replay", context=ros.context))
        try:
            player = BagPlayer(node, info, rate=args.rate or 1.0, start_s=args.start,
                               end_s=args.end, restamp=args.restamp, loop=args.loop,
                               clock=args.clock)
            if args.wait_for_subscribers:
                node.get_logger().info("waiting for subscribers on every camera topic")
                player.wait_for_subscribers(stop)
            stats = player.play(stop)
        except BagError as exc:
            print(f"threer-ros replay: {exc}", file=sys.stderr)
            return 2
        node.get_logger().info(f"published {stats.published} messages in {stats.passes} "
                               f"pass(es); at most {stats.max_lateness_s * 1e3:.1f} ms late")
        if not stop.is_set():
            _deliver_before_ending(node)
    return 0


def _run(args: argparse.Namespace) -> int:
    if (args.bag is None) == (not args.synthetic):
        print("threer-ros replay: give a bag or --synthetic (one of the two)", file=sys.stderr)
        return 2
    return _run_bag(args) if args.bag is not None else _run_synthetic(args)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``threer-ros replay``."""
    p = command_parser(subparsers, "replay",
                       "publish camera topics from a bag or the synthetic rig", __doc__)
    p.add_argument("bag", type=Path, nargs="?", default=None,
                   help="rosbag2 bag to replay (folder, or .mcap / .db3 file)")
    p.add_argument("--synthetic", action="store_true",
                   help="render and publish the synthetic 16-camera rig instead")
    p.add_argument("--rate", type=float, default=None,
                   help="bag: speed factor (default 1); synthetic: sets per second (default 2)")
    bag = p.add_argument_group("bag replay")
    bag.add_argument("--loop", action="store_true", help="play the bag again and again")
    bag.add_argument("--start", type=float, default=0.0, metavar="SECONDS",
                     help="start this many seconds after the bag's first message")
    bag.add_argument("--end", type=float, default=None, metavar="SECONDS",
                     help="stop this many seconds after the bag's first message")
    bag.add_argument("--restamp", action="store_true",
                     help="shift header stamps so that each pass starts now (default: keep)")
    bag.add_argument("--wait-for-subscribers", action="store_true",
                     help="start once every camera topic (images, CameraInfo) has a "
                          "subscriber")
    bag.add_argument("--clock", action="store_true",
                     help="publish the bag's time on /clock (for nodes with use_sim_time)")
    synthetic = p.add_argument_group("synthetic rig")
    synthetic.add_argument("--config", type=Path, default=None,
                           help="parameter file whose camera names and topics to use "
                                "(default: the installed config/capture.yaml)")
    synthetic.add_argument("--jitter", type=float, default=0.001,
                           help="std. dev. of each camera's stamp offset in seconds "
                                "(default 0.001)")
    synthetic.add_argument("--count", type=int, default=0,
                           help="sets to publish (0 = until Ctrl-C)")
    synthetic.add_argument("--width", type=int, default=None,
                           help="rendered image width in pixels (default: the parameter "
                                "file's working_width)")
    synthetic.add_argument("--seed", type=int, default=0, help="scene and jitter seed")
    synthetic.add_argument("--compressed", action="store_true",
                           help="publish JPEG CompressedImage")
    synthetic.add_argument("--rendered", type=Path, default=None, metavar="NPZ",
                           help="publish a rig rendered before (SyntheticRig.save: its "
                                "cameras, images and calibration) instead of rendering; "
                                "--width and --seed's scene then come from the file")
    synthetic.add_argument("--write-calibration", type=Path, default=None, metavar="YAML",
                           help="also write the rig calibration file the node needs "
                                "(rig_calibration)")
    p.set_defaults(func=_run)
