"""``threer-ros replay --synthetic`` in its own process, read by a subscriber here over DDS."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import defaultdict

import pytest

rclpy = pytest.importorskip("rclpy", reason="the ROS layer needs rclpy (make test installs it)")

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402

from conftest import stop_process  # noqa: E402
from threer_ros.config import read_parameters  # noqa: E402
from threer_ros.ros.convert import camera_info_to_calibration, image_from_msg  # noqa: E402

CAMERAS = tuple(read_parameters()["cameras"])


class Collector(Node):
    """Records every image stamp and the last image/CameraInfo per camera."""

    def __init__(self, context, compressed: bool) -> None:
        super().__init__("test_replay_collector", context=context)
        self.stamps: dict[int, dict[str, int]] = defaultdict(dict)   # trigger -> camera -> ns
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
            self.stamps[round(ns / 2e8)][camera] = ns       # triggers are 0.2 s apart (5 Hz)
            self.images[camera] = msg
            self.cond.notify_all()

    def _info(self, camera: str, msg: CameraInfo) -> None:
        with self.cond:
            self.infos[camera] = msg
            self.cond.notify_all()

    def complete_sets(self) -> list[dict[str, int]]:
        return [s for s in self.stamps.values() if len(s) == len(CAMERAS)]


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "jpeg"])
def test_the_synthetic_rig_publishes_jittered_synchronised_sets(compressed, ros_domain_id,
                                                                 tmp_path):
    calibration = tmp_path / "rig.yaml"
    command = [sys.executable, "-m", "threer_ros.cli", "replay", "--synthetic", "--rate", "5",
               "--jitter", "0.001", "--width", "48", "--write-calibration", str(calibration)]
    domain = ros_domain_id + (100 if compressed else 80)
    replay = subprocess.Popen(command + (["--compressed"] if compressed else []),
                              env=dict(os.environ, ROS_DOMAIN_ID=str(domain)))
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    collector = Collector(context, compressed)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(collector)
    threading.Thread(target=executor.spin, daemon=True).start()
    try:
        with collector.cond:
            assert collector.cond.wait_for(lambda: len(collector.complete_sets()) >= 3
                                           and len(collector.infos) == len(CAMERAS), timeout=120)
        for stamps in collector.complete_sets():
            spread = (max(stamps.values()) - min(stamps.values())) / 1e9
            assert 0 < spread < 0.01        # 1 ms jitter: distinct stamps, all within 10 ms
        for cam in CAMERAS:
            rgb = image_from_msg(collector.images[cam])
            calib = camera_info_to_calibration(collector.infos[cam])
            assert rgb.shape == (calib.height, calib.width, 3) and calib.width == 48
            assert collector.images[cam].header.frame_id == f"{cam}_optical_frame"
        assert calibration.is_file()
    finally:
        executor.shutdown()
        collector.destroy_node()
        rclpy.shutdown(context=context)
        stop_process(replay)
