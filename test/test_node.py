"""The capture node in its own process, driven over real DDS by publishers in this process.

One node process serves the whole module (starting it imports torch: seconds on 2 cores). The
tests publish the synthetic rig's 16 cameras and bad input, and read the node's outputs like
RViz does. ``ROS_DOMAIN_ID`` is unique to this test session (see conftest.py).
"""

from __future__ import annotations

import json
import os
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
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from builtin_interfaces.msg import Time  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402

from conftest import stop_process  # noqa: E402
from threer_ros.config import read_parameters  # noqa: E402
from threer_ros.data.calibration import save_rig_calibration  # noqa: E402
from threer_ros.data.synthetic import SyntheticRig  # noqa: E402
from threer_ros.ros.convert import (calibration_to_camera_info_fields, cloud_from_msg,  # noqa: E402
                                    image_to_msg_fields)
from threer_ros.ros.node import CameraStats  # noqa: E402
from threer_ros.ros.probe import OutputProbe  # noqa: E402

WIDTH = 96
CAMERAS = tuple(read_parameters()["cameras"])
SILENT = CAMERAS[-1]          # never publishes in the partial-set test
PIPELINE = "threer_ros: pipeline"
WAIT = 120.0                  # generous: the node reconstructs on 2 shared CPU cores


def _values(status) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


class RigDriver(Node):
    """Publishes images and CameraInfo of the synthetic rig with chosen stamps."""

    def __init__(self, rig: SyntheticRig, context) -> None:
        super().__init__("test_rig_driver", context=context)
        self.rig = rig
        self.image_pubs = {c: self.create_publisher(Image, f"{c}/image_raw",
                                                    qos_profile_sensor_data) for c in CAMERAS}
        self.info_pubs = {c: self.create_publisher(CameraInfo, f"{c}/camera_info",
                                                   qos_profile_sensor_data) for c in CAMERAS}

    def wait_for_subscribers(self, timeout: float) -> bool:
        """Wait until the node's subscriptions match every image publisher (DDS discovery)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(p.get_subscription_count() > 0 for p in self.image_pubs.values()):
                return True
            time.sleep(0.05)  # discovery has no event to wait on in rclpy
        return False

    def publish_image(self, camera: str, stamp_ns: int, fields: dict | None = None) -> None:
        view = next(v for v in self.rig.views if v.name == camera)
        msg = Image(**(fields or image_to_msg_fields(view.image, "rgb8")))
        msg.header.frame_id = f"{camera}_optical_frame"
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
        info = CameraInfo(**calibration_to_camera_info_fields(view.calibration))
        info.header = msg.header
        self.info_pubs[camera].publish(info)
        self.image_pubs[camera].publish(msg)

    def publish_camera_infos(self) -> None:
        for view in self.rig.views:
            info = CameraInfo(**calibration_to_camera_info_fields(view.calibration))
            info.header.frame_id = f"{view.name}_optical_frame"
            self.info_pubs[view.name].publish(info)

    def publish_set(self, stamp_ns: int, cameras=CAMERAS) -> None:
        for i, camera in enumerate(cameras):
            self.publish_image(camera, stamp_ns + (i % 3) * 200_000)  # 0.2 ms jitter


@pytest.fixture(scope="module")
def rig() -> SyntheticRig:
    return SyntheticRig.render(seed=3, width=WIDTH, names=CAMERAS)


def _start_graph(rig: SyntheticRig, rig_calibration: str, domain_id: int,
                 params: dict[str, str] | None = None, env: dict[str, str] | None = None):
    """Start the node process with ``rig_calibration`` (and ``params`` over the test defaults:
    mvs on the CPU); return (process, driver, probe, stop)."""
    settings = {"rig_calibration": rig_calibration, "backend": "mvs", "device": "cpu",
                "working_width": str(WIDTH), "min_cameras": "12", "max_rate": "0.0",
                "sync_tolerance": "0.005", **(params or {})}
    arguments = [a for k, v in settings.items() for a in ("-p", f"{k}:={v}")]
    node = subprocess.Popen([sys.executable, "-m", "threer_ros.ros.node", "--ros-args",
                             *arguments],
                            env=dict(os.environ, ROS_DOMAIN_ID=str(domain_id), **(env or {})))
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id)
    driver, probe = RigDriver(rig, context), OutputProbe(context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(driver)
    executor.add_node(probe)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    assert probe.wait_for(lambda r: r.diagnostics, WAIT), "the node published no diagnostics"
    assert driver.wait_for_subscribers(WAIT), "the node did not subscribe to every camera"

    def stop() -> None:
        executor.shutdown()
        driver.destroy_node()
        probe.destroy_node()
        rclpy.shutdown(context=context)
        stop_process(node)

    return node, driver, probe, stop


@pytest.fixture(scope="module")
def graph(rig, tmp_path_factory, ros_domain_id):
    """(node process, driver, probe) on this session's ROS domain, calibration from a file."""
    calibration = tmp_path_factory.mktemp("rig") / "rig.yaml"
    save_rig_calibration(calibration, "rig", {v.name: v.calibration for v in rig.views})
    node, driver, probe, stop = _start_graph(rig, str(calibration), ros_domain_id)
    yield node, driver, probe
    stop()


def _publish_until(publish, probe: OutputProbe, predicate, timeout: float = WAIT) -> bool:
    """Publish, and publish the same messages again every few seconds until ``predicate`` holds.

    Best-effort image topics may lose a message while DDS discovery settles; repeating a set
    is harmless (the node counts the repeats as duplicates or late frames).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        publish()
        if probe.wait_for(predicate, 5.0):
            return True
    return False


def _reconstructions(probe: OutputProbe) -> int:
    status = probe.latest_status(PIPELINE)
    return int(_values(status)["reconstructions"]) if status else 0


def _camera_status(probe: OutputProbe, camera: str) -> dict[str, str]:
    return _values(probe.latest_status(f"threer_ros: camera {camera}"))


def test_sixteen_cameras_in_one_cloud_and_sixteen_frames_out(graph, rig):
    node, driver, probe = graph
    done = _reconstructions(probe)
    assert _publish_until(lambda: driver.publish_set(10_000_000_000), probe,
                          lambda r: r.clouds and _reconstructions(probe) > done)
    cloud = probe.recorded.clouds[-1]
    assert cloud.header.frame_id == "rig"
    assert (cloud.header.stamp.sec, cloud.header.stamp.nanosec) >= (10, 0)
    assert [f.name for f in cloud.fields] == ["x", "y", "z", "rgb", "confidence"]
    points, colors, confidence = cloud_from_msg(cloud)
    assert len(points) > 1000 and np.isfinite(points).all()
    # the head is ~0.2 m across around the rig origin
    assert np.all(np.abs(np.median(points, axis=0)) < 0.1)
    assert probe.wait_for(lambda r: len(r.tf_static) == len(CAMERAS), WAIT)
    for view in rig.views:
        t = probe.recorded.tf_static[f"{view.name}_optical_frame"]
        assert t.header.frame_id == "rig"
        centre = [t.transform.translation.x, t.transform.translation.y, t.transform.translation.z]
        np.testing.assert_allclose(centre, view.calibration.cam_to_rig[:3, 3], atol=1e-6)
    assert probe.recorded.poses and len(probe.recorded.poses[-1].poses) == len(CAMERAS)
    statuses = {s.name for s in probe.recorded.diagnostics[-1].status}
    assert {f"threer_ros: camera {c}" for c in CAMERAS} <= statuses
    assert node.poll() is None


def test_a_silent_camera_still_gives_a_partial_set_that_names_it(graph):
    node, driver, probe = graph
    done = _reconstructions(probe)

    attempt = iter(range(1000))

    def two_partial_sets() -> None:
        # a set that lost a camera is closed once the others are far enough ahead: the next
        # set's frames close it. Each attempt uses new stamps, since a closed set takes no
        # repeated frames (best-effort delivery may lose some of the first attempt's).
        start = 20_000_000_000 + next(attempt) * 1_000_000_000
        driver.publish_set(start, cameras=CAMERAS[:-1])
        driver.publish_set(start + 500_000_000, cameras=CAMERAS[:-1])

    assert _publish_until(two_partial_sets, probe, lambda r: _reconstructions(probe) > done)
    assert probe.wait_for(
        lambda r: SILENT in _values(probe.latest_status(PIPELINE))["missing_cameras_last_set"],
        WAIT)
    assert node.poll() is None


@pytest.mark.parametrize("problem", ["encoding", "truncated", "resolution"])
def test_bad_images_are_rejected_counted_and_the_node_keeps_working(graph, rig, problem):
    node, driver, probe = graph
    camera = CAMERAS[1]
    rejected = int(_camera_status(probe, camera)["rejected"])
    view = next(v for v in rig.views if v.name == camera)
    fields = image_to_msg_fields(view.image, "rgb8")
    if problem == "encoding":
        fields["encoding"] = "32FC1"
    elif problem == "truncated":
        fields["data"] = bytes(fields["data"])[: len(fields["data"]) // 2]
    else:
        small = view.image[::2, ::2].copy()
        fields = image_to_msg_fields(small, "rgb8")
    assert _publish_until(lambda: driver.publish_image(camera, 30_000_000_000, fields), probe,
                          lambda r: int(_camera_status(probe, camera)["rejected"]) > rejected)
    status = probe.latest_status(f"threer_ros: camera {camera}")
    assert camera in status.name and status.message  # the reason is shown to the operator
    done = _reconstructions(probe)
    stamp = 40_000_000_000 + 1_000_000_000 * len(problem)
    assert _publish_until(lambda: driver.publish_set(stamp), probe,
                          lambda r: _reconstructions(probe) > done)
    assert node.poll() is None


def test_stamps_going_backwards_do_not_break_the_node(graph):
    node, driver, probe = graph
    done = _reconstructions(probe)

    def restart() -> None:  # older than everything so far: e.g. a bag restarted
        driver.publish_set(5_000_000_000)

    assert _publish_until(restart, probe, lambda r: _reconstructions(probe) > done)
    assert node.poll() is None


def test_camera_poses_can_come_from_the_rigs_tf_static(rig, ros_domain_id):
    """``rig_calibration:=tf``: the rig publishes its camera frames on /tf_static (latched)."""
    from geometry_msgs.msg import TransformStamped
    from rclpy.qos import DurabilityPolicy, QoSProfile
    from tf2_msgs.msg import TFMessage

    from threer_ros.ros.convert import transform_msgs

    node, driver, probe, stop = _start_graph(rig, "tf", ros_domain_id + 20)
    try:
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        tf_pub = driver.create_publisher(TFMessage, "/tf_static", latched)
        poses = np.stack([v.calibration.cam_to_rig for v in rig.views])
        transforms: list[TransformStamped] = transform_msgs(
            "rig", [f"{v.name}_optical_frame" for v in rig.views], poses, Time())

        def calibrate() -> None:  # a rig's TF and camera drivers publish these on their own
            tf_pub.publish(TFMessage(transforms=transforms))
            driver.publish_camera_infos()

        assert _publish_until(calibrate, probe, lambda r: all(
            _camera_status(probe, c)["has_extrinsics"] == "True"
            and _camera_status(probe, c)["has_camera_info"] == "True" for c in CAMERAS))
        assert _publish_until(lambda: driver.publish_set(50_000_000_000), probe,
                              lambda r: any(len(p.poses) == len(CAMERAS) for p in r.poses))
        full = next(p for p in probe.recorded.poses if len(p.poses) == len(CAMERAS))
        got = np.array([[p.position.x, p.position.y, p.position.z] for p in full.poses])
        np.testing.assert_allclose(got, poses[:, :3, 3], atol=1e-6)
        assert node.poll() is None
    finally:
        stop()


# --- network backends ------------------------------------------------------------------------
PARITY = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "parity"
#: tiny random-weight networks in the official formats; small images keep CPU time low; they
#: are not confident, so every point is kept (the official rules would drop them all)
NETWORK_PARAMS = {"network_size": "64", "working_width": "64", "alignment_iterations": "5",
                  "pair_graph": "knn", "graph_neighbours": "2", "voxel_size": "0.0",
                  "confidence_threshold": "0.0"}


def _calibration_file(rig: SyntheticRig, folder: Path) -> str:
    path = folder / "rig.yaml"
    save_rig_calibration(path, "rig", {v.name: v.calibration for v in rig.views})
    return str(path)


def _finite_cloud_and_camera_frames(probe: OutputProbe, done: int) -> np.ndarray:
    cloud = probe.recorded.clouds[-1]
    assert cloud.header.frame_id == "rig"
    points, _, confidence = cloud_from_msg(cloud)
    assert len(points) > 100 and np.isfinite(points).all() and np.isfinite(confidence).all()
    assert probe.wait_for(lambda r: len(r.tf_static) == len(CAMERAS), WAIT)
    assert len(probe.recorded.poses[-1].poses) == len(CAMERAS)
    return points


@pytest.mark.parametrize("alignment", ["fast", "full"])
def test_mast3r_with_a_checkpoint_runs_through_the_node(alignment, tmp_path, ros_domain_id):
    rig = SyntheticRig.render(seed=5, width=64, names=CAMERAS)
    params = dict(NETWORK_PARAMS, backend="mast3r", alignment=alignment,
                  checkpoint=str(PARITY / "mast3r" / "checkpoint.pth"))
    offset = 40 if alignment == "fast" else 60
    node, driver, probe, stop = _start_graph(rig, _calibration_file(rig, tmp_path),
                                             ros_domain_id + offset, params)
    try:
        assert _publish_until(lambda: driver.publish_set(20_000_000_000), probe,
                              lambda r: r.clouds and _reconstructions(probe) > 0)
        _finite_cloud_and_camera_frames(probe, 0)
        values = _values(probe.latest_status(PIPELINE))
        assert values["backend"] == "mast3r" and "stage_network_s" in values
        # the node's own share of the latency: what the backend did not spend
        latency, overhead = float(values["end_to_end_latency_s"]), float(values["node_overhead_s"])
        assert 0 <= overhead < latency
        if alignment == "full":       # the calibration check is reported to the operator
            assert float(values["pose_rotation_max_deg"]) >= 0
        assert node.poll() is None
    finally:
        stop()


def test_compare_mode_publishes_every_backend_and_a_summary(tmp_path, ros_domain_id):
    """fast3r (primary), pow3r and mvs on the same sets; network weights from the cache
    folder (``THREER_ROS_WEIGHTS``) laid out as ``threer-ros weights download`` leaves it."""
    from std_msgs.msg import String
    from threer_ros.weights import ENTRIES

    rig = SyntheticRig.render(seed=6, width=64, names=CAMERAS)
    cache = tmp_path / "weights"
    cache.mkdir()
    (cache / ENTRIES["fast3r"].local_name).symlink_to(PARITY / "fast3r" / "checkpoint")
    (cache / ENTRIES["pow3r"].local_name).symlink_to(PARITY / "pow3r" / "checkpoint.pth")
    params = dict(NETWORK_PARAMS, backend="fast3r", compare_backends="pow3r,mvs")
    node, driver, probe, stop = _start_graph(rig, _calibration_file(rig, tmp_path),
                                             ros_domain_id + 120,
                                             params, env={"THREER_ROS_WEIGHTS": str(cache)})
    received: dict[str, list] = {"pow3r": [], "mvs": [], "summary": []}
    try:
        for name in ("pow3r", "mvs"):
            driver.create_subscription(PointCloud2, f"/points/{name}",
                                       received[name].append, 2)
        driver.create_subscription(String, "/comparison",
                                   lambda m: received["summary"].append(json.loads(m.data)), 2)
        assert _publish_until(lambda: driver.publish_set(30_000_000_000), probe,
                              lambda r: r.clouds and received["summary"]
                              and received["pow3r"] and received["mvs"])
        _finite_cloud_and_camera_frames(probe, 0)
        summary = received["summary"][-1]
        assert summary["primary"] == "fast3r" and not summary["errors"]
        assert set(summary["backends"]) == {"fast3r", "pow3r", "mvs"}
        for name in ("pow3r", "mvs"):
            values = summary["backends"][name]
            assert values["time_s"] > 0 and "rotation_median_deg" in values
            points, _, _ = cloud_from_msg(received[name][-1])
            assert np.isfinite(points).all()
        assert node.poll() is None
    finally:
        stop()


def test_a_slowly_triggered_camera_counts_as_receiving():
    stats = CameraStats()
    for t in (0.0, 10.0, 20.0):                 # a rig triggered every 10 s
        stats.arrived(t)
    assert stats.rate_hz(25.0) == pytest.approx(0.1)
    assert stats.rate_hz(49.0) == pytest.approx(0.1)
    assert stats.rate_hz(51.0) == 0.0           # silent for three of its intervals: stopped
