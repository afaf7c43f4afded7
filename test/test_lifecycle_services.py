"""The managed capture node over DDS: lifecycle transitions, the warm-up at configure, its
services, live parameters and camera frames from image headers / a URDF-like TF chain. The node
runs in its own process (test_node.py's helpers); every request goes over DDS from this
process."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

rclpy = pytest.importorskip("rclpy", reason="the ROS layer needs rclpy (make test installs it)")

from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from lifecycle_msgs.msg import State, Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rcl_interfaces.msg import Parameter as ParameterMsg  # noqa: E402
from rcl_interfaces.msg import ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import DescribeParameters, SetParameters  # noqa: E402
from sensor_msgs.msg import PointCloud2  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from threer_ros_interfaces.srv import ReconstructAt, SaveCloud, StartSession  # noqa: E402

from conftest import ros_domain  # noqa: E402
from ros_graph import (CAMERAS, NODE, WAIT, Graph, capture_graph, stamp_ns,  # noqa: E402
                       status_values)
from threer_ros.data.calibration import save_rig_calibration  # noqa: E402
from threer_ros.data.ply import read_ply  # noqa: E402
from threer_ros.data.rosbag import BagReader  # noqa: E402
from threer_ros.data.synthetic import SyntheticRig  # noqa: E402
from threer_ros.ros.node import pipeline_status_name  # noqa: E402

WIDTH = 96


@pytest.fixture(scope="module")
def rig() -> SyntheticRig:
    return SyntheticRig.render(seed=3, width=WIDTH, names=CAMERAS)


class Session:
    """The node process, the rig driver/probe, and service calls from this process."""

    def __init__(self, graph: Graph) -> None:
        self.graph, self.driver, self.probe = graph, graph.driver, graph.probe
        driver = graph.driver
        self.cloud_stamps: list[int] = []      # every cloud's stamp (ns), in arrival order
        self.cloud_sizes: list[int] = []
        self._clients: dict[str, object] = {}
        driver.create_subscription(PointCloud2, "/points", self._on_cloud, 10)

    def _on_cloud(self, msg: PointCloud2) -> None:
        self.cloud_stamps.append(msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec)
        self.cloud_sizes.append(msg.width)

    def call(self, srv_type, name: str, request=None):
        """Call ``NODE/name`` and wait for the answer (the driver is spun by another thread)."""
        key = f"{NODE}/{name}"
        if key not in self._clients:
            self._clients[key] = self.driver.create_client(srv_type, key)
        client = self._clients[key]
        assert client.wait_for_service(timeout_sec=WAIT), f"no service {key}"
        done = threading.Event()
        future = client.call_async(request if request is not None else srv_type.Request())
        future.add_done_callback(lambda _: done.set())
        assert done.wait(2 * WAIT), f"{key} did not answer"  # the node waits at most WAIT
        return future.result()

    def transition(self, transition_id: int) -> bool:
        request = ChangeState.Request(transition=Transition(id=transition_id))
        return self.call(ChangeState, "change_state", request).success

    def state(self) -> int:
        return self.call(GetState, "get_state").current_state.id

    def set_parameter(self, name: str, value) -> object:
        kind = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
                float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}
        field = {bool: "bool_value", int: "integer_value", float: "double_value",
                 str: "string_value"}[type(value)]
        parameter = ParameterMsg(name=name, value=ParameterValue(type=kind[type(value)],
                                                                 **{field: value}))
        return self.call(SetParameters, "set_parameters",
                         SetParameters.Request(parameters=[parameter])).results[0]

    def reconstructed_set(self, stamp_ns: int) -> None:
        """Publish the set at ``stamp_ns`` until a new cloud of that set arrives (the
        diagnostics counter may lag behind earlier service calls, so it cannot tell). A set's
        stamp is its newest frame's, up to 0.4 ms after ``stamp_ns`` (``publish_set``)."""
        def clouds(r) -> int:
            return sum(abs(stamp - stamp_ns) < 5_000_000 for stamp, _ in r.cloud_arrivals)
        before = clouds(self.probe.recorded)
        assert self.graph.publish_until(lambda: self.driver.publish_set(stamp_ns),
                                        lambda r: clouds(r) > before)


def _subscribed(driver, expected: bool) -> bool:
    """Wait until the node's image subscriptions are all there (or all gone)."""
    if expected:
        return driver.wait_for_subscribers(WAIT)
    return _until(lambda: all(p.get_subscription_count() == 0 for p in
                              driver.image_pubs.values()))


def _until(predicate, timeout: float = WAIT) -> bool:
    event = threading.Event()
    return any(predicate() or event.wait(0.05) for _ in range(int(timeout / 0.05)))


@pytest.fixture(scope="module")
def calibration_file(rig, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rig") / "rig.yaml"
    save_rig_calibration(path, "rig", {v.name: v.calibration for v in rig.views})
    return path


@pytest.fixture(scope="module")
def session(rig, calibration_file, ros_domain_id):
    params = {"rig_calibration": str(calibration_file), "set_buffer": "3",
              "working_width": "48", "service_timeout": str(WAIT)}
    with capture_graph(rig, ros_domain_id, params) as graph:
        yield Session(graph)
        assert graph.node.poll() is None, "the node died"


def test_lifecycle_transitions_pause_and_resume_the_node(session):
    s = session
    assert s.state() == State.PRIMARY_STATE_ACTIVE          # autostart: true
    assert s.transition(Transition.TRANSITION_DEACTIVATE)
    assert s.state() == State.PRIMARY_STATE_INACTIVE
    assert _subscribed(s.driver, False)
    for _ in range(3):                                        # nobody listens: no cloud
        s.driver.publish_set(20_000_000_000)
    assert s.transition(Transition.TRANSITION_CLEANUP)
    assert s.state() == State.PRIMARY_STATE_UNCONFIGURED
    answer = s.call(Trigger, "reconstruct_now")
    assert not answer.success and "configure" in answer.message
    assert s.transition(Transition.TRANSITION_CONFIGURE)
    assert s.transition(Transition.TRANSITION_ACTIVATE)
    assert s.state() == State.PRIMARY_STATE_ACTIVE and _subscribed(s.driver, True)
    s.reconstructed_set(30_000_000_000)
    assert any(abs(t - 30_000_000_000) < 5_000_000 for t in s.cloud_stamps)
    assert not any(abs(t - 20_000_000_000) < 5_000_000 for t in s.cloud_stamps)
    status = s.probe.latest_status(pipeline_status_name(NODE))
    assert status.hardware_id == "cpu"


def test_reconstruct_services_use_the_buffered_sets(session):
    s = session                                  # the set at 30 s is buffered
    now = s.call(Trigger, "reconstruct_now")
    assert now.success and "30000" in now.message, now.message
    at = s.call(ReconstructAt, "reconstruct_at",
                ReconstructAt.Request(stamp=Time(sec=30, nanosec=0)))
    assert at.success and at.points > 100, at.message
    assert s.probe.wait_for(lambda r: s.cloud_sizes[-1] == at.points, WAIT)
    unknown = s.call(ReconstructAt, "reconstruct_at",
                     ReconstructAt.Request(stamp=Time(sec=999, nanosec=0)))
    assert not unknown.success and unknown.points == 0
    assert "no buffered set" in unknown.message and "30000" in unknown.message


def test_save_cloud_writes_a_readable_ply(session, tmp_path):
    s = session                                  # a cloud was published
    path = tmp_path / "cloud.ply"
    answer = s.call(SaveCloud, "save_cloud", SaveCloud.Request(path=str(path)))
    assert answer.success, answer.message
    points, colors, confidence = read_ply(path)
    assert len(points) > 100 and np.isfinite(points).all() and colors.shape == points.shape
    bad = s.call(SaveCloud, "save_cloud",
                 SaveCloud.Request(path=str(tmp_path / "missing" / "c.ply")))
    assert not bad.success and "cannot write" in bad.message


def test_sessions_record_clouds_and_poses_in_a_folder_or_a_bag(session, tmp_path):
    s = session
    folder = tmp_path / "take1"
    assert s.call(StartSession, "start_session",
                  StartSession.Request(directory=str(folder), format="folder")).success
    busy = s.call(StartSession, "start_session",
                  StartSession.Request(directory=str(tmp_path / "other"), format="folder"))
    assert not busy.success and "stop it first" in busy.message
    assert s.call(Trigger, "reconstruct_now").success
    stop = s.call(Trigger, "stop_session")
    assert stop.success and "1 reconstructions" in stop.message, stop.message
    (ply,), (poses,) = sorted(folder.glob("cloud_*.ply")), sorted(folder.glob("poses_*.yaml"))
    assert len(read_ply(ply)[0]) > 100
    written = yaml.safe_load(poses.read_text())
    assert written["frame_id"] == "rig" and set(written["cam_to_frame"]) == set(CAMERAS)
    assert not s.call(Trigger, "stop_session").success

    bag = tmp_path / "take2"
    assert s.call(StartSession, "start_session",
                  StartSession.Request(directory=str(bag), format="bag")).success
    assert s.call(Trigger, "reconstruct_now").success
    assert s.call(Trigger, "stop_session").success
    with BagReader(bag) as reader:
        topics = {m.topic for m in reader.messages()}
    assert {"/points", "/camera_poses"} <= topics
    wrong = s.call(StartSession, "start_session",
                   StartSession.Request(directory=str(tmp_path / "t3"), format="video"))
    assert not wrong.success and "folder or bag" in wrong.message


def test_reload_calibration_picks_up_a_changed_file(session, rig, calibration_file):
    s = session
    moved = {v.name: v.calibration for v in rig.views}
    camera = CAMERAS[0]
    pose = moved[camera].cam_to_rig.copy()
    pose[2, 3] += 0.05
    moved[camera] = replace(moved[camera], cam_to_rig=pose)
    save_rig_calibration(calibration_file, "rig", moved)
    answer = s.call(Trigger, "reload_calibration")
    assert answer.success and str(calibration_file) in answer.message
    s.reconstructed_set(60_000_000_000)
    frame = f"{camera}_optical_frame"
    assert s.probe.wait_for(lambda r: frame in r.tf_static and abs(
        r.tf_static[frame].transform.translation.z - pose[2, 3]) < 1e-6, WAIT)


def test_parameters_have_descriptors_and_live_ones_take_effect(session):
    s = session
    described = s.call(DescribeParameters, "describe_parameters", DescribeParameters.Request(
        names=["max_points", "backend", "voxel_size"])).descriptors
    assert "point budget" in described[0].description and not described[0].read_only
    assert described[0].integer_range[0].from_value == 1
    assert described[1].read_only and "mvs" in described[1].description
    refused = s.set_parameter("backend", "fast3r")
    assert not refused.successful and "read-only" in refused.reason
    assert s.set_parameter("voxel_size", 0).successful             # whole number for a float
    assert s.set_parameter("max_rate", 0).successful
    wrong = s.set_parameter("max_rate", "fast")
    assert not wrong.successful and "number" in wrong.reason
    too_many = s.set_parameter("min_cameras", 99)
    assert not too_many.successful and "min_cameras" in too_many.reason
    assert not s.set_parameter("max_points", 0).successful          # below its range
    assert s.set_parameter("max_points", 321).successful
    s.reconstructed_set(70_000_000_000)
    assert s.probe.wait_for(lambda r: s.cloud_sizes and s.cloud_sizes[-1] == 321, WAIT)


def test_camera_frames_from_image_headers_through_a_urdf_chain(rig):
    """``rig_calibration: tf`` with rig -> <cam>_link -> <cam>_cam on /tf_static, and images
    whose frame_id is <cam>_cam: poses follow the chain; the node publishes none of them."""
    from rclpy.qos import DurabilityPolicy, QoSProfile
    from tf2_msgs.msg import TFMessage

    from threer_ros.ros.convert import transform_msgs

    link_to_optical = np.array([[0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1]], float)
    params = {"rig_calibration": "tf", "working_width": "48"}
    with capture_graph(rig, ros_domain("test_lifecycle_services:own graph"), params) as graph:
        driver, probe = graph.driver, graph.probe
        driver.frame_format = "{camera}_cam"
        poses = np.stack([v.calibration.cam_to_rig for v in rig.views])
        links = poses @ np.linalg.inv(link_to_optical)
        chain = transform_msgs("rig", [f"{c}_link" for c in CAMERAS], links, Time()) + [
            t for c in CAMERAS for t in transform_msgs(f"{c}_link", [f"{c}_cam"],
                                                       link_to_optical[None], Time())]
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        tf_pub = driver.create_publisher(TFMessage, "/tf_static", latched)

        def calibrate() -> None:     # the rig's URDF and camera drivers publish these
            tf_pub.publish(TFMessage(transforms=chain))
            driver.publish_camera_infos()

        assert graph.publish_until(calibrate, lambda r: all(
            graph.camera_status(c)["has_extrinsics"] == "True"
            and graph.camera_status(c)["frame_id"] == f"{c}_cam" for c in CAMERAS))
        assert graph.publish_until(lambda: driver.publish_set(80_000_000_000),
                                   lambda r: any(len(p.poses) == len(CAMERAS) for p in r.poses))
        full = next(p for p in probe.recorded.poses if len(p.poses) == len(CAMERAS))
        got = np.array([[p.position.x, p.position.y, p.position.z] for p in full.poses])
        np.testing.assert_allclose(got, poses[:, :3, 3], atol=1e-6)
        assert all(probe.recorded.tf_static[f"{c}_cam"].header.frame_id == f"{c}_link"
                   for c in CAMERAS)        # never re-parented by the node
        assert graph.node.poll() is None


def test_without_autostart_the_node_waits_for_configure_and_activate(rig):
    """Also: without a calibration file no image size is known at configure, so the warm-up
    asked for is skipped, with the reason."""
    params = {"rig_calibration": "''", "autostart": "false",        # YAML ''
              "warmup_on_configure": "always"}
    with capture_graph(rig, ros_domain("test_lifecycle_services:own graph"), params) as graph:
        s = Session(graph)
        assert s.state() == State.PRIMARY_STATE_UNCONFIGURED
        status = graph.probe.latest_status(pipeline_status_name(NODE))
        assert status.level != DiagnosticStatus.OK and "unconfigured" in status.message
        assert s.transition(Transition.TRANSITION_CONFIGURE)
        assert s.state() == State.PRIMARY_STATE_INACTIVE
        assert graph.probe.wait_for(lambda r: graph.pipeline()["warmup"].startswith(
            f"skipped: no image size known for {', '.join(CAMERAS)}"), WAIT)
        assert s.transition(Transition.TRANSITION_ACTIVATE)
        assert _subscribed(graph.driver, True)
        assert s.transition(Transition.TRANSITION_DEACTIVATE)
        assert s.transition(Transition.TRANSITION_CLEANUP)
        assert s.call(ChangeState, "change_state", ChangeState.Request(
            transition=Transition(label="shutdown"))).success
        assert s.state() == State.PRIMARY_STATE_FINALIZED
        assert graph.node.poll() is None      # finalized, still answering until stopped


def test_configure_warms_the_backend_up_on_the_rigs_shapes_and_publishes_nothing(
        rig, calibration_file):
    """``warmup_on_configure: always`` with the rig file's intrinsics: configure reconstructs a
    synthetic set of the live shapes and answers when it is done; no cloud, pose or frame goes
    out and no reconstruction is counted (the first live set is the first one)."""
    params = {"rig_calibration": str(calibration_file), "autostart": "false",
              "warmup_on_configure": "always"}
    with capture_graph(rig, ros_domain("test_lifecycle_services:own graph"), params) as graph:
        s, probe, name = Session(graph), graph.probe, pipeline_status_name(NODE)

        def pipeline_after(time_ns: int) -> list[dict[str, str]]:
            return [status_values(st) for a in probe.recorded.diagnostics
                    if stamp_ns(a.header.stamp) > time_ns for st in a.status if st.name == name]

        asked_ns = time.time_ns()
        assert s.transition(Transition.TRANSITION_CONFIGURE)
        answered_ns = time.time_ns()
        assert probe.wait_for(lambda r: pipeline_after(answered_ns), WAIT)
        assert any(v.get("warmup") == "running" for v in pipeline_after(asked_ns))
        values = pipeline_after(answered_ns)[0]       # configure waited for the warm-up
        height, width = rig.views[0].image.shape[:2]
        assert values["warmup"] == "done", values
        assert values["warmup_set"] == f"{len(CAMERAS)} x {width}x{height}"
        assert float(values["warmup_s"]) > 0 and values["state"] == "inactive"
        assert values["reconstructions"] == "0" and values["points_published"] == "0"
        recorded = probe.recorded
        assert not (recorded.clouds or recorded.poses or recorded.tf or recorded.tf_static)

        assert s.transition(Transition.TRANSITION_ACTIVATE) and _subscribed(graph.driver, True)
        s.reconstructed_set(90_000_000_000)
        assert all(abs(stamp - 90_000_000_000) < 5_000_000
                   for stamp, _ in probe.recorded.cloud_arrivals)     # the live set's only
        assert probe.wait_for(lambda r: graph.reconstructions() == len(r.cloud_arrivals), WAIT)


def test_a_failing_warm_up_is_reported_and_the_node_still_configures(rig, calibration_file):
    """Two cameras are too few for mvs: the warm-up fails, and says why in /diagnostics; the
    backend itself loaded, so configure succeeds (the live sets meet the same error)."""
    params = {"rig_calibration": str(calibration_file), "autostart": "false",
              "warmup_on_configure": "always", "cameras": f"[{CAMERAS[0]},{CAMERAS[1]}]",
              "min_cameras": "2"}
    with capture_graph(rig, ros_domain("test_lifecycle_services:own graph"), params) as graph:
        s = Session(graph)
        assert s.transition(Transition.TRANSITION_CONFIGURE)
        assert s.state() == State.PRIMARY_STATE_INACTIVE
        assert graph.probe.wait_for(lambda r: graph.pipeline()["warmup"].startswith(
            "failed: ValueError: mvs needs at least"), WAIT), graph.pipeline()
        assert "warmup_s" in graph.pipeline() and graph.pipeline()["warmup_set"] == (
            f"2 x {rig.views[0].image.shape[1]}x{rig.views[0].image.shape[0]}")
        assert s.transition(Transition.TRANSITION_ACTIVATE)      # until a set says otherwise
        name = pipeline_status_name(NODE)
        assert graph.probe.wait_for(lambda r: graph.probe.latest_status(name).message.startswith(
            "warm-up failed: ValueError"), WAIT)
        assert graph.probe.latest_status(name).level == DiagnosticStatus.WARN
        assert graph.node.poll() is None
