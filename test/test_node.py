"""The capture node in its own process, driven over real DDS by publishers in this process.

One node process serves most of the module (starting it imports torch: seconds on 2 cores); the
tests publish the synthetic rig's 16 cameras and bad input, and read the node's outputs like
RViz does (``ros_graph.py``). Tests that need a node of their own use the slot "test_node:own
graph" (see conftest.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="the ROS layer needs rclpy (make test installs it)")

from builtin_interfaces.msg import Time  # noqa: E402
from rcl_interfaces.msg import Log  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile  # noqa: E402
from scipy.spatial.transform import Rotation  # noqa: E402
from sensor_msgs.msg import PointCloud2, PointField  # noqa: E402

from conftest import ros_domain  # noqa: E402
from ros_graph import CAMERAS, NODE, WAIT, Graph, capture_graph, stamp_ns  # noqa: E402
from ros_harness import CAPTURE_NODE, node_arguments, ros_env  # noqa: E402
from threer_ros.data.calibration import save_rig_calibration  # noqa: E402
from threer_ros.data.synthetic import SyntheticRig  # noqa: E402
from threer_ros.geometry.transforms import invert_pose, transform_points  # noqa: E402
from threer_ros.ros.convert import cloud_from_msg  # noqa: E402
from threer_ros.ros.node import CameraStats, camera_status_name  # noqa: E402

WIDTH = 96
SILENT = CAMERAS[-1]          # never publishes in the partial-set test


@pytest.fixture(scope="module")
def rig() -> SyntheticRig:
    return SyntheticRig.render(seed=3, width=WIDTH, names=CAMERAS)


def _calibration_file(rig: SyntheticRig, folder: Path, frame: str = "rig") -> str:
    path = folder / "rig.yaml"
    save_rig_calibration(path, frame, {v.name: v.calibration for v in rig.views})
    return str(path)


@pytest.fixture(scope="module")
def graph(rig, tmp_path_factory, ros_domain_id) -> Iterator[Graph]:
    """The node on this module's ROS domain, calibration from a file."""
    calibration = _calibration_file(rig, tmp_path_factory.mktemp("rig"))
    with capture_graph(rig, ros_domain_id, {"rig_calibration": calibration}) as running_graph:
        yield running_graph


def _rotation(q) -> np.ndarray:
    """A message quaternion as a matrix, by SciPy (independent of our conversions)."""
    return Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()


def _read_like_rviz(cloud: PointCloud2) -> np.ndarray:
    """The cloud's points as a structured array built from its own field descriptions."""
    kinds = {PointField.FLOAT32: "<f4", PointField.UINT32: "<u4"}
    dtype = np.dtype({"names": [f.name for f in cloud.fields],
                      "formats": [kinds[f.datatype] for f in cloud.fields],
                      "offsets": [f.offset for f in cloud.fields], "itemsize": cloud.point_step})
    return np.frombuffer(bytes(cloud.data), dtype=dtype)


def _colour_error(points: np.ndarray, colors: np.ndarray, view) -> float:
    """Median absolute difference between the points' colours and the pixels of ``view`` that
    see them (points in front of the view's true depth by less than 3 mm)."""
    in_camera = transform_points(invert_pose(view.calibration.cam_to_rig), points)
    z = in_camera[:, 2]
    uv = (view.calibration.K @ in_camera.T).T
    u = np.round(uv[:, 0] / z).astype(int)
    v = np.round(uv[:, 1] / z).astype(int)
    height, width = view.depth.shape
    seen = (z > 0) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    seen[seen] &= np.abs(view.depth[v[seen], u[seen]] - z[seen]) < 0.003
    assert seen.sum() > 1000
    return float(np.median(np.abs(colors[seen].astype(float) - view.image[v[seen], u[seen]])))


def test_sixteen_cameras_in_one_cloud_and_sixteen_frames_out(graph, rig):
    done = graph.reconstructions()
    assert graph.publish_until(lambda: graph.driver.publish_set(10_000_000_000),
                               lambda r: r.clouds and graph.reconstructions() > done)
    probe = graph.probe
    cloud = probe.recorded.clouds[-1]
    assert cloud.header.frame_id == "rig"
    assert 10_000_000_000 <= stamp_ns(cloud.header.stamp) < 10_001_000_000   # the set's stamp
    # the layout RViz and sensor_msgs_py read (ROS.md 6.4)
    assert [(f.name, f.offset, f.datatype, f.count) for f in cloud.fields] == [
        (name, 4 * i, PointField.FLOAT32, 1)
        for i, name in enumerate(["x", "y", "z", "rgb", "confidence"])]
    assert (cloud.height, cloud.point_step, cloud.is_bigendian) == (1, 20, False)
    assert cloud.row_step == cloud.point_step * cloud.width == len(cloud.data)
    assert probe.wait_for(lambda r: graph.pipeline()["points_published"] == str(cloud.width),
                          WAIT)
    raw = _read_like_rviz(cloud)
    xyz = np.stack([raw["x"], raw["y"], raw["z"]], axis=1)
    assert cloud.is_dense and np.isfinite(xyz).all()      # dense: no NaN point to filter
    assert len(xyz) > 1000 and np.all(np.abs(np.median(xyz, axis=0)) < 0.1)  # the ~0.2 m head
    rgb = raw["rgb"].view(np.uint32)                      # 0x00RRGGBB (ROS.md 6.2)
    assert not (rgb >> 24).any()
    colors = np.stack([(rgb >> 16) & 255, (rgb >> 8) & 255, rgb & 255], axis=1).astype(np.uint8)
    for view in rig.views[::5]:      # each point has the colour of the pixels that see it
        error = _colour_error(xyz, colors, view)
        assert error < 16 and error < _colour_error(xyz, colors[:, ::-1], view) / 2
    np.testing.assert_array_equal(cloud_from_msg(cloud)[1], colors)

    assert probe.wait_for(lambda r: len(r.tf_static) == len(CAMERAS), WAIT)
    for view in rig.views:   # tf2 semantics: rig -> optical frame is the camera-to-rig pose
        t = probe.recorded.tf_static[f"{view.name}_optical_frame"]
        assert t.header.frame_id == "rig"
        pose = view.calibration.cam_to_rig
        centre = np.array([t.transform.translation.x, t.transform.translation.y,
                           t.transform.translation.z])
        np.testing.assert_allclose(centre, pose[:3, 3], atol=1e-6)
        rotation = _rotation(t.transform.rotation)
        np.testing.assert_allclose(rotation, pose[:3, :3], atol=1e-6)
        # optical z (third column) points from the camera towards the head at the origin
        assert rotation[:, 2] @ -centre > 0.9 * np.linalg.norm(centre)
    poses = probe.recorded.poses[-1]
    assert poses.header.frame_id == "rig" and len(poses.poses) == len(CAMERAS)
    for view, pose in zip(rig.views, poses.poses):
        np.testing.assert_allclose(_rotation(pose.orientation),
                                   view.calibration.cam_to_rig[:3, :3], atol=1e-6)
    statuses = {s.name for s in probe.recorded.diagnostics[-1].status}
    assert {camera_status_name(NODE, c) for c in CAMERAS} <= statuses
    assert graph.node.poll() is None


def test_a_silent_camera_still_gives_a_partial_set_that_names_it(graph):
    done = graph.reconstructions()
    attempt = iter(range(1000))

    def two_partial_sets() -> None:
        # a set that lost a camera is closed once the others are far enough ahead: the next
        # set's frames close it. Each attempt uses new stamps, since a closed set takes no
        # repeated frames (best-effort delivery may lose some of the first attempt's).
        start = 20_000_000_000 + next(attempt) * 1_000_000_000
        graph.driver.publish_set(start, cameras=CAMERAS[:-1])
        graph.driver.publish_set(start + 500_000_000, cameras=CAMERAS[:-1])

    assert graph.publish_until(two_partial_sets, lambda r: graph.reconstructions() > done)
    assert graph.probe.wait_for(
        lambda r: SILENT in graph.pipeline()["missing_cameras_last_set"], WAIT)
    assert graph.node.poll() is None


@pytest.mark.parametrize("problem", ["encoding", "truncated", "resolution"])
def test_bad_images_are_rejected_counted_and_the_node_keeps_working(graph, rig, problem):
    from threer_ros.ros.convert import image_to_msg_fields

    camera = CAMERAS[1]
    rejected = int(graph.camera_status(camera)["rejected"])
    view = next(v for v in rig.views if v.name == camera)
    fields = image_to_msg_fields(view.image, "rgb8")
    if problem == "encoding":
        fields["encoding"] = "32FC1"
    elif problem == "truncated":
        fields["data"] = bytes(fields["data"])[: len(fields["data"]) // 2]
    else:
        small = view.image[::2, ::2].copy()
        fields = image_to_msg_fields(small, "rgb8")
    assert graph.publish_until(
        lambda: graph.driver.publish_image(camera, 30_000_000_000, fields),
        lambda r: int(graph.camera_status(camera)["rejected"]) > rejected)
    status = graph.probe.latest_status(camera_status_name(NODE, camera))
    assert camera in status.name and status.message  # the reason is shown to the operator
    done = graph.reconstructions()
    stamp = 40_000_000_000 + 1_000_000_000 * len(problem)
    assert graph.publish_until(lambda: graph.driver.publish_set(stamp),
                               lambda r: graph.reconstructions() > done)
    assert graph.node.poll() is None


def test_stamps_going_backwards_do_not_break_the_node(graph):
    """An image far ahead, then a set far behind it (a bag restarted): the set is
    reconstructed, whatever the other tests published before."""
    camera = CAMERAS[0]
    received = int(graph.camera_status(camera)["received"])
    assert graph.publish_until(lambda: graph.driver.publish_image(camera, 900_000_000_000),
                               lambda r: int(graph.camera_status(camera)["received"]) > received)
    stamp, done = 5_000_000_000, graph.reconstructions()
    assert graph.publish_until(
        lambda: graph.driver.publish_set(stamp),
        lambda r: graph.reconstructions() > done and r.clouds
        and stamp <= stamp_ns(r.clouds[-1].header.stamp) < stamp + 1_000_000)
    assert int(graph.pipeline()["sync_resets"]) >= 1
    assert graph.node.poll() is None


def test_camera_poses_can_come_from_the_rigs_tf_static(rig, tmp_path):
    """``rig_calibration:=tf``: the rig publishes its camera frames on /tf_static (latched)."""
    from rclpy.qos import DurabilityPolicy, QoSProfile
    from tf2_msgs.msg import TFMessage

    from threer_ros.ros.convert import transform_msgs

    with capture_graph(rig, ros_domain("test_node:own graph"),
                       {"rig_calibration": "tf"}) as graph:
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        tf_pub = graph.driver.create_publisher(TFMessage, "/tf_static", latched)
        poses = np.stack([v.calibration.cam_to_rig for v in rig.views])
        transforms = transform_msgs("rig", [f"{v.name}_optical_frame" for v in rig.views],
                                    poses, Time())

        def calibrate() -> None:  # a rig's TF and camera drivers publish these on their own
            tf_pub.publish(TFMessage(transforms=transforms))
            graph.driver.publish_camera_infos()

        assert graph.publish_until(calibrate, lambda r: all(
            graph.camera_status(c)["has_extrinsics"] == "True"
            and graph.camera_status(c)["has_camera_info"] == "True" for c in CAMERAS))
        assert graph.publish_until(lambda: graph.driver.publish_set(50_000_000_000),
                                   lambda r: any(len(p.poses) == len(CAMERAS) for p in r.poses))
        full = next(p for p in graph.probe.recorded.poses if len(p.poses) == len(CAMERAS))
        got = np.array([[p.position.x, p.position.y, p.position.z] for p in full.poses])
        np.testing.assert_allclose(got, poses[:, :3, 3], atol=1e-6)
        assert graph.node.poll() is None


def test_bad_parameters_or_calibration_end_the_node_with_status_2(tmp_path):
    """What a user mistypes ends the node at once, with the parameter or file named."""
    broken = tmp_path / "rig.yaml"
    broken.write_text("cameras: [unclosed\n")
    cases = {"min_cameras": {"min_cameras": 0}, str(broken): {"rig_calibration": str(broken)}}
    env = ros_env(ros_domain("test_node:own graph"))
    runs = {named: subprocess.Popen([*CAPTURE_NODE, *node_arguments(parameters)], env=env,
                                    text=True, stderr=subprocess.PIPE)
            for named, parameters in cases.items()}     # side by side: both start torch
    for named, process in runs.items():
        try:
            _, err = process.communicate(timeout=WAIT)
        finally:
            process.kill()
        assert process.returncode == 2 and named in err, err


# --- network backends ------------------------------------------------------------------------
PARITY = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "parity"
#: tiny random-weight networks in the official formats; small images keep CPU time low; they
#: are not confident, so every point is kept (the official rules would drop them all)
NETWORK_PARAMS = {"network_size": "64", "working_width": "64", "alignment_iterations": "5",
                  "pair_graph": "knn", "graph_neighbours": "2", "voxel_size": "0.0",
                  "confidence_threshold": "0.0"}


def _finite_cloud(graph: Graph) -> np.ndarray:
    cloud = graph.probe.recorded.clouds[-1]
    assert cloud.header.frame_id == "rig"
    points, _, confidence = cloud_from_msg(cloud)
    assert len(points) > 100 and np.isfinite(points).all() and np.isfinite(confidence).all()
    return points


def _finite_cloud_and_camera_frames(graph: Graph) -> np.ndarray:
    points = _finite_cloud(graph)
    assert graph.probe.wait_for(lambda r: len(r.tf_static) == len(CAMERAS), WAIT)
    assert len(graph.probe.recorded.poses[-1].poses) == len(CAMERAS)
    return points


@pytest.mark.parametrize("alignment", ["fast", "full"])
def test_mast3r_with_a_checkpoint_runs_through_the_node(alignment, tmp_path):
    rig = SyntheticRig.render(seed=5, width=64, names=CAMERAS)
    params = dict(NETWORK_PARAMS, backend="mast3r", alignment=alignment,
                  checkpoint=str(PARITY / "mast3r" / "checkpoint.pth"),
                  rig_calibration=_calibration_file(rig, tmp_path))
    with capture_graph(rig, ros_domain("test_node:own graph"), params) as graph:
        assert graph.publish_until(lambda: graph.driver.publish_set(20_000_000_000),
                                   lambda r: r.clouds and graph.reconstructions() > 0)
        _finite_cloud_and_camera_frames(graph)
        values = graph.pipeline()
        assert values["backend"] == "mast3r" and "stage_network_s" in values
        # the node's own share of the latency: what the backend did not spend
        latency, overhead = float(values["end_to_end_latency_s"]), float(values["node_overhead_s"])
        assert 0 <= overhead < latency
        if alignment == "full":       # the calibration check is reported to the operator
            assert float(values["pose_rotation_max_deg"]) >= 0
        assert graph.node.poll() is None


class LogLines(Node):
    """The log lines of every node (``/rosout``, whose lines of the last seconds are kept for
    late subscribers), as ``rqt_console`` shows them."""

    def __init__(self, context) -> None:
        super().__init__("log_lines", context=context)
        self._lines: list[tuple[int, str, str]] = []       # (level, node name, message)
        self._lock = threading.Lock()
        self.create_subscription(Log, "/rosout", self._on_log, QoSProfile(
            depth=1000, durability=DurabilityPolicy.TRANSIENT_LOCAL))

    def _on_log(self, msg: Log) -> None:
        with self._lock:
            self._lines.append((int(msg.level), msg.name, msg.msg))

    def lines(self) -> list[tuple[int, str, str]]:
        with self._lock:
            return list(self._lines)


def test_a_gpu_out_of_memory_lowers_pair_batch_the_node_says_so_and_the_set_still_comes(
        tmp_path):
    """On a GPU that decodes only 2 pairs at once (the real MASt3R network, whose head raises
    CUDA's out-of-memory error for larger batches: ``small_gpu_node.py``), a node started with
    ``pair_batch`` 8 still publishes the set's cloud, reports the batch it now uses and warns
    the operator once, with the value to configure."""
    rig = SyntheticRig.render(seed=5, width=64, names=CAMERAS)
    params = dict(NETWORK_PARAMS, backend="mast3r", alignment="fast", pair_batch="8",
                  checkpoint=str(PARITY / "mast3r" / "checkpoint.pth"),
                  rig_calibration=_calibration_file(rig, tmp_path))
    small_gpu = (sys.executable, str(Path(__file__).with_name("small_gpu_node.py")))
    with capture_graph(rig, ros_domain("test_node:own graph"), params, node_command=small_gpu,
                       env={"THREER_TEST_PAIRS_THAT_FIT": "2"}) as graph:
        log = graph.ros.add(LogLines(graph.ros.context))
        warned: list[str] = []

        def warning_seen(_recorded) -> bool:
            warned[:] = [m for level, name, m in log.lines()
                         if level == Log.WARN and "ran out of memory" in m]
            return bool(warned) and graph.reconstructions() > 0
        assert graph.publish_until(lambda: graph.driver.publish_set(20_000_000_000),
                                   warning_seen)
        _finite_cloud(graph)
        assert graph.pipeline()["pair_batch"] == "2"
        assert warned == ["the GPU ran out of memory decoding 8 pairs a batch; the backend now "
                          "decodes 2 (set pair_batch:=2 to start there)"]
        assert graph.reconstructions() > 0 and graph.node.poll() is None


def test_estimated_camera_poses_go_on_tf_with_the_sets_stamp():
    """Without extrinsics (no rig calibration; intrinsics from CameraInfo) the network's poses
    are estimates: on ``/tf`` (stamped, re-sent), never latched on ``/tf_static``, and equal to
    the PoseArray."""
    rig = SyntheticRig.render(seed=5, width=64, names=CAMERAS)
    params = dict(NETWORK_PARAMS, backend="mast3r",
                  checkpoint=str(PARITY / "mast3r" / "checkpoint.pth"))
    frames = {f"{c}_optical_frame" for c in CAMERAS}
    with capture_graph(rig, ros_domain("test_node:own graph"), params) as graph:
        # intrinsics first: a set whose images come before their CameraInfo has none, and
        # random weights give no camera without them
        assert graph.publish_until(graph.driver.publish_camera_infos, lambda r: all(
            graph.camera_status(c)["has_camera_info"] == "True" for c in CAMERAS))
        stamp = 20_000_000_000
        assert graph.publish_until(lambda: graph.driver.publish_set(stamp),
                                   lambda r: r.clouds and frames <= set(r.tf))
        _finite_cloud(graph)
        recorded = graph.probe.recorded
        poses = next(p for p in recorded.poses if len(p.poses) == len(CAMERAS))
        assert stamp <= stamp_ns(poses.header.stamp) < stamp + 1_000_000
        for camera, pose in zip(CAMERAS, poses.poses):
            t = recorded.tf[f"{camera}_optical_frame"]
            assert t.header.frame_id == "rig"
            assert stamp_ns(t.header.stamp) >= stamp_ns(poses.header.stamp)  # the set's, or later
            np.testing.assert_allclose(_rotation(t.transform.rotation),
                                       _rotation(pose.orientation), atol=1e-9)
            np.testing.assert_allclose(
                [t.transform.translation.x, t.transform.translation.y, t.transform.translation.z],
                [pose.position.x, pose.position.y, pose.position.z], atol=1e-12)
        assert not frames & set(recorded.tf_static)
        assert graph.node.poll() is None


def test_compare_mode_publishes_every_backend_and_a_summary(tmp_path):
    """fast3r (primary), pow3r and mvs on the same sets; network weights from the cache
    folder (``THREER_ROS_WEIGHTS``) laid out as ``threer-ros weights download`` leaves it."""
    from std_msgs.msg import String
    from threer_ros.weights import ENTRIES

    rig = SyntheticRig.render(seed=6, width=64, names=CAMERAS)
    cache = tmp_path / "weights"
    cache.mkdir()
    (cache / ENTRIES["fast3r"].local_name).symlink_to(PARITY / "fast3r" / "checkpoint")
    (cache / ENTRIES["pow3r"].local_name).symlink_to(PARITY / "pow3r" / "checkpoint.pth")
    params = dict(NETWORK_PARAMS, backend="fast3r", compare_backends="pow3r,mvs",
                  rig_calibration=_calibration_file(rig, tmp_path))
    received: dict[str, list] = {"pow3r": [], "mvs": [], "summary": []}
    with capture_graph(rig, ros_domain("test_node:own graph"), params,
                       env={"THREER_ROS_WEIGHTS": str(cache)}) as graph:
        for name in ("pow3r", "mvs"):
            graph.driver.create_subscription(PointCloud2, f"/points/{name}",
                                             received[name].append, 2)
        graph.driver.create_subscription(
            String, "/comparison", lambda m: received["summary"].append(json.loads(m.data)), 2)
        assert graph.publish_until(lambda: graph.driver.publish_set(30_000_000_000),
                                   lambda r: r.clouds and received["summary"]
                                   and received["pow3r"] and received["mvs"])
        _finite_cloud_and_camera_frames(graph)
        summary = received["summary"][-1]
        assert summary["primary"] == "fast3r" and not summary["errors"]
        assert set(summary["backends"]) == {"fast3r", "pow3r", "mvs"}
        for name in ("pow3r", "mvs"):
            values = summary["backends"][name]
            assert values["time_s"] > 0 and "rotation_median_deg" in values
            points, _, _ = cloud_from_msg(received[name][-1])
            assert np.isfinite(points).all()
        assert graph.node.poll() is None


def test_a_slowly_triggered_camera_counts_as_receiving():
    stats = CameraStats()
    for t in (0.0, 10.0, 20.0):                 # a rig triggered every 10 s
        stats.arrived(t)
    assert stats.rate_hz(25.0) == pytest.approx(0.1)
    assert stats.rate_hz(49.0) == pytest.approx(0.1)
    assert stats.rate_hz(51.0) == 0.0           # silent for three of its intervals: stopped
