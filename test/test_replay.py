"""``threer-ros replay --synthetic`` in its own process, read by a subscriber here over DDS."""

from __future__ import annotations

import threading

import pytest

rclpy = pytest.importorskip("rclpy", reason="the ROS layer needs rclpy (make test installs it)")

from rclpy.node import Node  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402

from ros_harness import CLI, running  # noqa: E402
from threer_ros.config import read_parameters  # noqa: E402
from threer_ros.ros.convert import camera_info_to_calibration, image_from_msg  # noqa: E402
from threer_ros.ros.spinning import SpinningNodes  # noqa: E402
from threer_ros.ros.sync import FrameSynchronizer  # noqa: E402

CAMERAS = tuple(read_parameters()["cameras"])


class Collector(Node):
    """Groups the image stamps into sets the way the capture node does (its synchroniser, on
    the stamps alone), and keeps the last image and CameraInfo per camera."""

    def __init__(self, context, compressed: bool) -> None:
        super().__init__("test_replay_collector", context=context)
        self.sets: list[dict[str, int]] = []         # complete sets: camera -> stamp (ns)
        self._sync = FrameSynchronizer(CAMERAS, tolerance_ns=10_000_000,
                                       min_cameras=len(CAMERAS))
        self.images: dict[str, object] = {}
        self.infos: dict[str, CameraInfo] = {}
        self.cond = threading.Condition()
        kind, suffix = (CompressedImage, "/compressed") if compressed else (Image, "")
        for cam in CAMERAS:
            self.create_subscription(kind, f"{cam}/image_raw{suffix}",
                                     lambda m, c=cam: self._image(c, m), qos_profile_sensor_data)
            self.create_subscription(CameraInfo, f"{cam}/camera_info",
                                     lambda m, c=cam: self._info(c, m), qos_profile_sensor_data)

    def _image(self, camera: str, msg) -> None:
        ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.cond:
            self.sets += [s.items for s in self._sync.add(camera, ns, ns) if not s.missing]
            self.images[camera] = msg
            self.cond.notify_all()

    def _info(self, camera: str, msg: CameraInfo) -> None:
        with self.cond:
            self.infos[camera] = msg
            self.cond.notify_all()


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "jpeg"])
def test_the_synthetic_rig_publishes_jittered_synchronised_sets(compressed, ros_domain_id,
                                                                 tmp_path):
    calibration = tmp_path / "rig.yaml"
    command = [*CLI, "replay", "--synthetic", "--rate", "5", "--jitter", "0.001", "--width",
               "48", "--write-calibration", str(calibration)]
    with running(command + (["--compressed"] if compressed else []), ros_domain_id), \
            SpinningNodes(ros_domain_id) as ros:
        collector = ros.add(Collector(ros.context, compressed))
        with collector.cond:
            assert collector.cond.wait_for(lambda: len(collector.sets) >= 3
                                           and len(collector.infos) == len(CAMERAS), timeout=120)
            sets, images, infos = list(collector.sets), dict(collector.images), \
                dict(collector.infos)
        for stamps in sets:
            spread = (max(stamps.values()) - min(stamps.values())) / 1e9
            assert 0 < spread < 0.01        # 1 ms jitter: distinct stamps, all within 10 ms
        for cam in CAMERAS:
            rgb = image_from_msg(images[cam])
            calib = camera_info_to_calibration(infos[cam])
            assert rgb.shape == (calib.height, calib.width, 3) and calib.width == 48
            assert images[cam].header.frame_id == f"{cam}_optical_frame"
        assert calibration.is_file()
