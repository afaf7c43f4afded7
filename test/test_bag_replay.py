"""Bags over real DDS: replay timing, a NeRSemble-format bag replayed into the capture node (in
its own process) with ``threer-ros replay``, its outputs recorded with ``threer-ros record``.

All tests here use ``ROS_DOMAIN_ID`` base + 140 (one test at a time; see ``conftest``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="the ROS layer needs rclpy (make test installs it)")

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rosbags.rosbag2 import Reader  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

from conftest import stop_process  # noqa: E402
import nersemble_fixture as fx  # noqa: E402
from threer_ros.cli import main  # noqa: E402
from threer_ros.data.nersemble import NersembleSequence  # noqa: E402
from threer_ros.data.rosbag import CaptureBagWriter, bag_info  # noqa: E402
from threer_ros.data.synthetic import SyntheticRig  # noqa: E402
from threer_ros.ros.bag_player import BagPlayer  # noqa: E402
from threer_ros.ros.convert import cloud_from_msg  # noqa: E402
from threer_ros.ros.probe import OutputProbe  # noqa: E402

OFFSET = 140
WAIT = 120.0                  # generous: the node reconstructs on 2 shared CPU cores
PERIOD_NS = 100_000_000       # the timing bag's sets: 10 Hz
T0_NS = 50 * 10**9


def _stamp_ns(msg) -> int:
    header = msg.transforms[0].header if hasattr(msg, "transforms") else msg.header
    return header.stamp.sec * 10**9 + header.stamp.nanosec


@pytest.fixture(scope="module")
def timing_bag(tmp_path_factory) -> Path:
    """Six sets of the synthetic rig (32 px) at 10 Hz from T0_NS."""
    rig = SyntheticRig.render(seed=0, width=32, names=fx.CAMERAS)
    path = tmp_path_factory.mktemp("timing") / "sets"
    with CaptureBagWriter(path, fx.CAMERAS) as bag:
        for k in range(6):
            bag.write_set(rig.frame_set(), T0_NS + k * PERIOD_NS)
    return path


@pytest.fixture
def publisher_node(ros_domain_id):
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=ros_domain_id + OFFSET)
    node = Node("test_bag_player", context=context)
    yield node
    node.destroy_node()
    rclpy.shutdown(context=context)


def _play(node: Node, bag: Path, stop_after: int | None = None, **options):
    """Play ``bag``; returns the stats and (topic, header stamp, monotonic ns) per publish."""
    published: list[tuple[str, int, int]] = []
    stop = threading.Event()

    def on_publish(topic: str, msg) -> None:
        published.append((topic, _stamp_ns(msg), time.monotonic_ns()))
        if stop_after is not None and len(published) >= stop_after:
            stop.set()

    stats = BagPlayer(node, bag_info(bag), on_publish=on_publish, **options).play(stop)
    return stats, published


def _image_times(published, camera: str = fx.CAMERAS[0]) -> tuple[np.ndarray, np.ndarray]:
    rows = [(s, t) for topic, s, t in published if topic == f"/{camera}/image_raw"]
    stamps, times = np.array(rows, dtype=np.int64).T
    return stamps, times


def test_replay_follows_the_recorded_stamps(timing_bag, publisher_node):
    stats, published = _play(publisher_node, timing_bag)
    assert stats.published == 1 + 6 * 2 * len(fx.CAMERAS) and stats.passes == 1
    assert published[0][0] == "/tf_static"
    stamps, times = _image_times(published)
    assert list(stamps) == [T0_NS + k * PERIOD_NS for k in range(6)]
    # publish times follow the stamps (measured here, in the replaying process)
    np.testing.assert_allclose((times - times[0]) / 1e9, (stamps - stamps[0]) / 1e9, atol=0.04)

    _, published = _play(publisher_node, timing_bag, rate=2.0)
    stamps, times = _image_times(published)
    np.testing.assert_allclose((times - times[0]) / 1e9, (stamps - stamps[0]) / 2e9, atol=0.04)


def test_a_window_is_played_after_the_calibration_and_restamped_loops_keep_the_rhythm(
        timing_bag, publisher_node):
    _, published = _play(publisher_node, timing_bag, start_s=0.2, end_s=0.4)
    assert published[0][:2] == ("/tf_static", T0_NS)   # the calibration comes first anyway
    stamps, _ = _image_times(published)
    assert list(stamps) == [T0_NS + 2 * PERIOD_NS, T0_NS + 3 * PERIOD_NS]

    now = publisher_node.get_clock().now().nanoseconds
    per_pass = 1 + 6 * 2 * len(fx.CAMERAS)
    stats, published = _play(publisher_node, timing_bag, restamp=True, loop=True,
                             stop_after=2 * per_pass)
    assert stats.passes >= 1 and len(published) == 2 * per_pass
    stamps, times = _image_times(published)
    assert abs(stamps[0] - now) < 2 * 10**9              # restamped to "now"
    # one stamp step per set, across the loop too (the next pass starts one period later)
    assert list(np.diff(stamps)) == [PERIOD_NS] * (len(stamps) - 1)
    np.testing.assert_allclose((times - times[0]) / 1e9, (stamps - stamps[0]) / 1e9, atol=0.04)


def test_replaying_a_truncated_bag_fails_clearly(timing_bag, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in timing_bag.iterdir():
        data = f.read_bytes()
        (broken / f.name).write_bytes(data[: len(data) // 3] if f.suffix == ".mcap" else data)
    assert main(["replay", str(broken)]) == 2
    assert str(broken) in capsys.readouterr().err


def test_a_latched_message_published_after_a_subscriber_appeared_is_recorded(
        publisher_node, ros_domain_id, tmp_path):
    # /tf_static as the capture node sees it: a subscriber (the node) comes first, the
    # calibration's latched publisher later, and it publishes once, before anyone is matched.
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import String

    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    publisher_node.create_subscription(String, "/calibration", lambda _: None, latched)
    recording = tmp_path / "latched"
    recorder = subprocess.Popen(
        [sys.executable, "-m", "threer_ros.cli", "record", "/calibration", "--out", str(recording)],
        env=dict(os.environ, ROS_DOMAIN_ID=str(ros_domain_id + OFFSET)), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log = _Lines(recorder)
    try:
        assert log.wait_for("waiting for a publisher on /calibration", WAIT), log.lines
        publisher = publisher_node.create_publisher(String, "/calibration", latched)
        publisher.publish(String(data="rig"))
        assert log.wait_for("recording /calibration", WAIT), log.lines
        deadline = time.monotonic() + WAIT     # matched to both subscribers, then delivered
        while publisher.get_subscription_count() < 2 and time.monotonic() < deadline:
            rclpy.spin_once(publisher_node, timeout_sec=0.05)
        assert publisher.wait_for_all_acked(rclpy.duration.Duration(seconds=WAIT))
    finally:
        assert stop_process(recorder, signal.SIGINT) == 0
    (topic,) = bag_info(recording).topics      # recorded latched, so a replay offers it so
    assert (topic.name, topic.count, topic.latched) == ("/calibration", 1, True)


# --- the capture node fed by a replayed NeRSemble bag ---------------------------------------
class _Lines:
    """Collects a child process's output lines and lets the test wait for one."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, args=(process,), daemon=True).start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()

    def wait_for(self, text: str, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: any(text in line for line in self.lines),
                                       timeout=timeout)


def test_a_nersemble_bag_replayed_into_the_node_gives_a_cloud_that_is_recorded(
        ros_domain_id, tmp_path):
    root = tmp_path / "nersemble"
    fx.write_video_download(root, fx.render())
    bag = tmp_path / "capture"
    assert main(["bag", "from-nersemble", "--root", str(root), "--participant", fx.PARTICIPANT,
                 "--sequence", fx.SEQUENCE, "--t0", "1000", "--out", str(bag)]) == 0
    recording = tmp_path / "outputs"
    domain = ros_domain_id + OFFSET
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain))
    cli = [sys.executable, "-m", "threer_ros.cli"]
    node = subprocess.Popen(
        [sys.executable, "-m", "threer_ros.ros.node", "--ros-args",
         "-p", "rig_calibration:=tf", "-p", "backend:=mvs", "-p", "device:=cpu",
         "-p", "image_reliability:=reliable",      # the player offers reliable camera topics
         "-p", f"working_width:={fx.WIDTH}", "-p", "min_cameras:=12", "-p", "max_rate:=0.0"],
        env=env)
    recorder = subprocess.Popen(cli + ["record", "--out", str(recording)], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    recorder_log = _Lines(recorder)
    replay = None
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    probe = OutputProbe(context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(probe)
    threading.Thread(target=executor.spin, daemon=True).start()
    try:
        assert recorder_log.wait_for("recording /points", WAIT), recorder_log.lines
        # 3 frames at 73 fps played 10x slower, looped with fresh stamps until the cloud comes
        replay = subprocess.Popen(cli + ["replay", str(bag), "--rate", "0.1", "--loop",
                                         "--restamp", "--wait-for-subscribers"], env=env)
        assert probe.wait_for(lambda r: r.clouds, WAIT), "no cloud from the replayed bag"
        points, _, _ = cloud_from_msg(probe.recorded.clouds[-1])
        assert len(points) > 100 and np.all(np.abs(np.median(points, axis=0)) < 0.1)
        assert node.poll() is None
    finally:
        if replay is not None:
            stop_process(replay, signal.SIGINT)
        recorder_status = stop_process(recorder, signal.SIGINT)
        executor.shutdown()
        probe.destroy_node()
        rclpy.shutdown(context=context)
        stop_process(node)
    assert recorder_status == 0, "threer-ros record did not exit cleanly on Ctrl-C"

    sequence = NersembleSequence.open(root, fx.PARTICIPANT, fx.SEQUENCE)
    poses = {f.camera: f.calibration.cam_to_rig for f in next(sequence.frame_sets(0, 1)).frames}
    types = get_typestore(Stores.ROS2_KILTED)
    clouds, static = 0, {}
    with Reader(recording) as reader:
        for conn, _, raw in reader.messages():
            if conn.topic == "/points":
                clouds += 1
            elif conn.topic == "/tf_static":
                for t in types.deserialize_cdr(raw, conn.msgtype).transforms:
                    static[t.child_frame_id] = t.transform.translation
    assert clouds >= 1
    for camera, pose in poses.items():       # the replayed calibration, latched, recorded too
        t = static[f"{camera}_optical_frame"]
        np.testing.assert_allclose([t.x, t.y, t.z], pose[:3, 3], atol=1e-9)
