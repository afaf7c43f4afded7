"""A camera's rejected messages count against it only for a recent window, so WARN recovers."""

from __future__ import annotations

import pytest

pytest.importorskip("rclpy", reason="the node module imports rclpy")

from threer_ros.ros.node import REJECTION_WINDOW_S, CameraStats, camera_status_name  # noqa: E402
from threer_ros.ros.node import pipeline_status_name  # noqa: E402


def test_rejections_age_out_of_the_window_but_stay_counted():
    stats = CameraStats()
    stats.rejected_one(100.0, "unsupported encoding '32FC1'")
    stats.rejected_one(101.0, "unsupported encoding '32FC1'")
    assert stats.recent_rejections(101.5) == 2
    assert stats.recent_rejections(100.5 + REJECTION_WINDOW_S) == 1
    assert stats.recent_rejections(102.0 + REJECTION_WINDOW_S) == 0    # WARN is over
    assert stats.rejected == 2 and "32FC1" in stats.last_error          # the totals remain


def test_status_names_carry_the_nodes_full_name():
    assert pipeline_status_name("/left/threer_capture") == "/left/threer_capture: pipeline"
    assert camera_status_name("/right/threer_capture", "cam1") != \
        camera_status_name("/left/threer_capture", "cam1")
