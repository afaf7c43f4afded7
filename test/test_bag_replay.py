"""Bags over real DDS: replay timing, a NeRSemble-format bag replayed into the capture node (in
its own process) with ``threer-ros replay``, its outputs recorded with ``threer-ros record``.

All tests here use this module's ROS domain (one test at a time; see ``conftest``). Timing is
checked without wall-clock tolerances: messages come out in stamp order and never before their
time (a loaded machine can only make them later).
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="the ROS layer needs rclpy (make test installs it)")

from rclpy.node import Node  # noqa: E402
from rosbags.rosbag2 import Reader  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

import nersemble_fixture as fx  # noqa: E402
from ros_graph import WAIT  # noqa: E402
from ros_harness import CAPTURE_NODE, CLI, node_arguments, running  # noqa: E402
from threer_ros.cli import main  # noqa: E402
from threer_ros.data.nersemble import NersembleSequence  # noqa: E402
from threer_ros.data.rosbag import CaptureBagWriter, bag_info  # noqa: E402
from threer_ros.data.synthetic import SyntheticRig  # noqa: E402
from threer_ros.ros.bag_player import BagPlayer  # noqa: E402
from threer_ros.ros.convert import cloud_from_msg  # noqa: E402
from threer_ros.ros.probe import OutputProbe  # noqa: E402
from threer_ros.ros.spinning import SpinningNodes  # noqa: E402

PERIOD_NS = 100_000_000       # the timing bag's sets: 10 Hz
T0_NS = 50 * 10**9


def _stamp_ns(msg) -> int:
    header = msg.transforms[0].header if hasattr(msg, "transforms") else msg.header
    return header.stamp.sec * 10**9 + header.stamp.nanosec


@pytest.fixture(scope="module", params=["mcap", "sqlite3"])
def timing_bag(request, tmp_path_factory) -> Path:
    """Six sets of the synthetic rig (32 px) at 10 Hz from T0_NS, in either storage."""
    rig = SyntheticRig.render(seed=0, width=32, names=fx.CAMERAS)
    path = tmp_path_factory.mktemp("timing") / "sets"
    with CaptureBagWriter(path, fx.CAMERAS, storage=request.param) as bag:
        for k in range(6):
            bag.write_set(rig.frame_set(), T0_NS + k * PERIOD_NS)
    assert bag_info(path).storage == request.param
    return path


@pytest.fixture
def publisher_node(ros_domain_id):
    with SpinningNodes(ros_domain_id) as ros:
        yield ros.add(Node("test_bag_player", context=ros.context))


def _play(node: Node, bag: Path, stop_after: int | None = None, **options):
    """Play ``bag``; returns the stats, (topic, header stamp, monotonic ns) per publish, and
    the monotonic time (ns) just before playing."""
    published: list[tuple[str, int, int]] = []
    stop = threading.Event()

    def on_publish(topic: str, msg) -> None:
        published.append((topic, _stamp_ns(msg), time.monotonic_ns()))
        if stop_after is not None and len(published) >= stop_after:
            stop.set()

    player = BagPlayer(node, bag_info(bag), on_publish=on_publish, **options)
    started = time.monotonic_ns()
    return player.play(stop), published, started


def _image_times(published, camera: str = fx.CAMERAS[0]) -> tuple[np.ndarray, np.ndarray]:
    rows = [(s, t) for topic, s, t in published if topic == f"/{camera}/image_raw"]
    stamps, times = np.array(rows, dtype=np.int64).T
    return stamps, times


def _never_early(stamps: np.ndarray, times: np.ndarray, started: int, rate: float) -> None:
    """Each message went out no earlier than its offset from the first, at ``rate``, after
    ``started``; and in order."""
    assert (np.diff(times) >= 0).all()
    assert (times - started >= (stamps - stamps[0]) / rate).all()


@pytest.mark.parametrize("rate", [1.0, 2.0])
def test_replay_follows_the_recorded_stamps(timing_bag, publisher_node, rate):
    stats, published, started = _play(publisher_node, timing_bag, rate=rate)
    assert stats.published == 1 + 6 * 2 * len(fx.CAMERAS) and stats.passes == 1
    assert published[0][0] == "/tf_static"
    all_stamps = [stamp for _, stamp, _ in published]
    assert all_stamps == sorted(all_stamps)              # the bag's order: by stamp
    stamps, times = _image_times(published)
    assert list(stamps) == [T0_NS + k * PERIOD_NS for k in range(6)]
    _never_early(stamps, times, started, rate)


def test_a_window_is_played_after_the_calibration_and_restamped_loops_keep_the_rhythm(
        timing_bag, publisher_node):
    _, published, _ = _play(publisher_node, timing_bag, start_s=0.2, end_s=0.4)
    assert published[0][:2] == ("/tf_static", T0_NS)   # the calibration comes first anyway
    stamps, _ = _image_times(published)
    assert list(stamps) == [T0_NS + 2 * PERIOD_NS, T0_NS + 3 * PERIOD_NS]

    clock = publisher_node.get_clock()
    before = clock.now().nanoseconds
    per_pass = 1 + 6 * 2 * len(fx.CAMERAS)
    stats, published, started = _play(publisher_node, timing_bag, restamp=True, loop=True,
                                      stop_after=2 * per_pass)
    after = clock.now().nanoseconds
    assert stats.passes >= 1 and len(published) == 2 * per_pass
    stamps, times = _image_times(published)
    assert before <= stamps[0] <= after                 # restamped to "now" at the start
    # one stamp step per set, across the loop too (the next pass starts one period later)
    assert list(np.diff(stamps)) == [PERIOD_NS] * (len(stamps) - 1)
    _never_early(stamps, times, started, 1.0)


def test_replaying_a_truncated_bag_fails_clearly(timing_bag, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in timing_bag.iterdir():
        data = f.read_bytes()
        (broken / f.name).write_bytes(data[: len(data) // 3] if f.suffix in (".mcap", ".db3")
                                      else data)
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
    with running([*CLI, "record", "/calibration", "--out", str(recording)], ros_domain_id,
                 stop_signal=signal.SIGINT, collect_output=True) as recorder:
        log = recorder.output
        assert log.wait_for("waiting for a publisher on /calibration", WAIT), log.text()
        publisher = publisher_node.create_publisher(String, "/calibration", latched)
        publisher.publish(String(data="rig"))
        assert log.wait_for("recording /calibration", WAIT), log.text()
        deadline = time.monotonic() + WAIT     # matched to both subscribers, then delivered
        while publisher.get_subscription_count() < 2 and time.monotonic() < deadline:
            time.sleep(0.05)                   # discovery has no event to wait on in rclpy
        assert publisher.wait_for_all_acked(rclpy.duration.Duration(seconds=WAIT))
    assert recorder.returncode == 0, recorder.output.text()
    (topic,) = bag_info(recording).topics      # recorded latched, so a replay offers it so
    assert (topic.name, topic.count, topic.latched) == ("/calibration", 1, True)


# --- the capture node fed by a replayed NeRSemble bag ---------------------------------------
def test_a_nersemble_bag_replayed_into_the_node_gives_a_cloud_that_is_recorded(
        ros_domain_id, tmp_path):
    root = tmp_path / "nersemble"
    fx.write_video_download(root, fx.render())
    bag = tmp_path / "capture"
    assert main(["bag", "from-nersemble", "--root", str(root), "--participant", fx.PARTICIPANT,
                 "--sequence", fx.SEQUENCE, "--t0", "1000", "--out", str(bag)]) == 0
    recording = tmp_path / "outputs"
    node_command = [*CAPTURE_NODE, *node_arguments({
        "rig_calibration": "tf", "backend": "mvs", "device": "cpu",
        "image_reliability": "reliable",          # the player offers reliable camera topics
        "working_width": fx.WIDTH, "min_cameras": 12, "max_rate": 0.0})]
    # 3 frames at 73 fps played 10x slower, looped with fresh stamps until the cloud comes
    replay_command = [*CLI, "replay", str(bag), "--rate", "0.1", "--loop", "--restamp",
                      "--wait-for-subscribers"]
    with running(node_command, ros_domain_id) as node, \
            running([*CLI, "record", "--out", str(recording)], ros_domain_id,
                    stop_signal=signal.SIGINT, collect_output=True) as recorder, \
            SpinningNodes(ros_domain_id) as ros:
        probe = ros.add(OutputProbe(context=ros.context))
        assert recorder.output.wait_for("recording /points", WAIT), recorder.output.text()
        with running(replay_command, ros_domain_id, stop_signal=signal.SIGINT):
            assert probe.wait_for(lambda r: r.clouds, WAIT), "no cloud from the replayed bag"
        points, _, _ = cloud_from_msg(probe.recorded.clouds[-1])
        assert len(points) > 100 and np.all(np.abs(np.median(points, axis=0)) < 0.1)
        assert node.process.poll() is None
    assert recorder.returncode == 0, "threer-ros record did not exit cleanly on Ctrl-C"

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
