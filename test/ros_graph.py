"""The capture node in its own process, driven over real DDS from the test process: a rig
driver that publishes the synthetic rig's cameras, a probe that reads the node's outputs like
RViz does, both spun by :class:`~threer_ros.ros.spinning.SpinningNodes` (stopped before the
node process, and also when the graph's start-up fails)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

from rclpy.node import Node
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from ros_harness import CAPTURE_NODE, node_arguments, running
from threer_ros.config import read_parameters
from threer_ros.data.synthetic import SyntheticRig
from threer_ros.ros.convert import (calibration_to_camera_info_fields, encode_compressed,
                                    image_to_msg_fields)
from threer_ros.ros.node import NODE_NAME, PIPELINE_STATUS, camera_status_name
from threer_ros.ros.probe import OutputProbe, Recorded
from threer_ros.ros.spinning import SpinningNodes

CAMERAS = tuple(read_parameters()["cameras"])
NODE = "/" + NODE_NAME     # the capture node's fully qualified name (names its statuses)
WAIT = 300.0     # generous: the node reconstructs on 2 CPU cores shared with other work


def stamp_ns(stamp) -> int:
    """A ``builtin_interfaces/Time`` in nanoseconds."""
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def status_values(status) -> dict[str, str]:
    """The key/values of a DiagnosticStatus."""
    return {kv.key: kv.value for kv in status.values}


class RigDriver(Node):
    """Publishes the synthetic rig's images and CameraInfo with chosen stamps.

    Args:
        rig: The rendered rig.
        context: The rclpy context of the node.
        image_topic, camera_info_topic: Topic templates with ``{camera}`` (as the node's).
        compressed: Publish JPEG ``CompressedImage`` on ``<image topic>/compressed``.
        qos: QoS of the publishers (sensor data: best effort, like most camera drivers).
    """

    def __init__(self, rig: SyntheticRig, context, image_topic: str = "{camera}/image_raw",
                 camera_info_topic: str = "{camera}/camera_info",
                 compressed: bool = False, qos: QoSProfile = qos_profile_sensor_data) -> None:
        super().__init__("test_rig_driver", context=context)
        self.rig = rig
        self.compressed = compressed
        self.frame_format = "{camera}_optical_frame"    # the frame_id of each camera's images
        kind, suffix = (CompressedImage, "/compressed") if compressed else (Image, "")
        self.image_pubs = {c: self.create_publisher(kind, image_topic.format(camera=c) + suffix,
                                                    qos) for c in CAMERAS}
        self.info_pubs = {c: self.create_publisher(CameraInfo,
                                                   camera_info_topic.format(camera=c), qos)
                          for c in CAMERAS}

    def wait_for_subscribers(self, timeout: float) -> bool:
        """Wait until the node's subscriptions match every image publisher (DDS discovery)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(p.get_subscription_count() > 0 for p in self.image_pubs.values()):
                return True
            time.sleep(0.05)  # discovery has no event to wait on in rclpy
        return False

    def messages(self, camera: str, stamp_ns: int, fields: dict | None = None
                 ) -> tuple[Image | CompressedImage, CameraInfo]:
        """One camera's image (``fields`` override the image's own) and CameraInfo, stamped
        ``stamp_ns``, in the camera's optical frame."""
        view = next(v for v in self.rig.views if v.name == camera)
        if self.compressed:
            image = CompressedImage(**(fields or {
                "format": "rgb8; jpeg compressed bgr8",
                "data": encode_compressed(view.image, "jpeg")}))
        else:
            image = Image(**(fields or image_to_msg_fields(view.image, "rgb8")))
        image.header.frame_id = self.frame_format.format(camera=camera)
        image.header.stamp.sec, image.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
        info = CameraInfo(**calibration_to_camera_info_fields(view.calibration))
        info.header = image.header
        return image, info

    def publish_image(self, camera: str, stamp_ns: int, fields: dict | None = None) -> None:
        """Publish one camera's CameraInfo and image (:meth:`messages`)."""
        image, info = self.messages(camera, stamp_ns, fields)
        self.info_pubs[camera].publish(info)
        self.image_pubs[camera].publish(image)

    def publish_camera_infos(self) -> None:
        """Every camera's CameraInfo, unstamped."""
        for view in self.rig.views:
            info = CameraInfo(**calibration_to_camera_info_fields(view.calibration))
            info.header.frame_id = self.frame_format.format(camera=view.name)
            self.info_pubs[view.name].publish(info)

    def publish_set(self, stamp_ns: int, cameras: Sequence[str] = CAMERAS) -> None:
        """A set of ``cameras`` around ``stamp_ns`` (0.2 ms jitter)."""
        for i, camera in enumerate(cameras):
            self.publish_image(camera, stamp_ns + (i % 3) * 200_000)


@dataclass
class Graph:
    """A running capture node and the test's nodes that drive and read it."""

    node: object              # subprocess.Popen of the capture node
    driver: RigDriver
    probe: OutputProbe
    ros: SpinningNodes

    def reconstructions(self) -> int:
        """The node's reconstruction counter (0 before its first diagnostics)."""
        status = self.probe.latest_status(PIPELINE_STATUS)
        return int(status_values(status)["reconstructions"]) if status else 0

    def pipeline(self) -> dict[str, str]:
        """The node's newest pipeline status values."""
        return status_values(self.probe.latest_status(PIPELINE_STATUS))

    def camera_status(self, camera: str) -> dict[str, str]:
        """The node's newest status values of ``camera``."""
        return status_values(self.probe.latest_status(camera_status_name(NODE, camera)))

    def publish_until(self, publish: Callable[[], None], predicate: Callable[[Recorded], bool],
                      timeout: float = WAIT) -> bool:
        """Publish, and publish the same again every few seconds until ``predicate`` holds.

        Best-effort image topics may lose a message while DDS discovery settles; repeating a
        set is harmless (the node counts the repeats as duplicates or late frames).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            publish()
            if self.probe.wait_for(predicate, 5.0):
                return True
        return False


#: The test defaults of the node: mvs on the CPU at the rig's width, every set reconstructed.
TEST_PARAMETERS = {"backend": "mvs", "device": "cpu", "min_cameras": "12", "max_rate": "0.0",
                   "sync_tolerance": "0.005"}


@contextmanager
def capture_graph(rig: SyntheticRig, domain_id: int, parameters: Mapping[str, str],
                  env: Mapping[str, str] | None = None,
                  driver_topics: Mapping[str, object] | None = None,
                  probe_topics: Mapping[str, str] | None = None,
                  node_command: Sequence[str] = CAPTURE_NODE) -> Iterator[Graph]:
    """Start the capture node (``parameters`` over :data:`TEST_PARAMETERS` and the rig's
    width; ``node_command`` starts it), a :class:`RigDriver` (``driver_topics``: its keyword
    arguments) and an :class:`OutputProbe` (``probe_topics``: its topic arguments); wait until
    the node publishes diagnostics and, unless it waits for lifecycle transitions
    (``autostart: false``), subscribes to every camera. Everything is stopped on exit."""
    width = rig.views[0].image.shape[1]
    settings = {**TEST_PARAMETERS, "working_width": str(width), **parameters}
    with running([*node_command, *node_arguments(settings)], domain_id, env=env) as node, \
            SpinningNodes(domain_id) as ros:
        driver = ros.add(RigDriver(rig, ros.context, **(driver_topics or {})))
        probe = ros.add(OutputProbe(**(probe_topics or {}), context=ros.context))
        assert probe.wait_for(lambda r: r.diagnostics, WAIT), "the node published no diagnostics"
        if settings.get("autostart", "true") == "true":
            assert driver.wait_for_subscribers(WAIT), \
                "the node did not subscribe to every camera"
        yield Graph(node.process, driver, probe, ros)
