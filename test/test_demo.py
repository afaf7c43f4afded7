"""``threer-ros demo`` itself, as ``make demo`` runs it (smaller images): the synthetic rig and
the capture node in their own processes; it must end by itself with a PLY, a preview and the
accuracy it prints (this module's ROS domain, see conftest.py)."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("rclpy", reason="the ROS layer needs rclpy (make test installs it)")

from ros_harness import CLI, ros_env  # noqa: E402
from threer_ros.data.ply import read_ply  # noqa: E402

WIDTH = 64


def test_the_demo_ends_with_a_cloud_a_preview_and_its_accuracy(tmp_path, ros_domain_id):
    out = tmp_path / "demo"
    run = subprocess.run([*CLI, "demo", "--width", str(WIDTH), "--device", "cpu", "--out",
                          str(out), "--timeout", "240"], env=ros_env(ros_domain_id),
                         capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stdout + run.stderr
    printed = run.stdout
    count = int(re.search(r"fused cloud: (\d+) points from 16 cameras in frame 'rig', "
                          r"16 camera frames on /tf_static", printed)[1])
    mean, median = (float(v) for v in re.search(
        r"distance to the true surface: mean ([\d.]+) mm, median ([\d.]+) mm", printed).groups())
    completeness = float(re.search(r"completeness \(true surface within 5 mm\): ([\d.]+) %",
                                   printed)[1])
    assert median <= mean < 5.0 and completeness > 80.0, printed
    for stage in ("end_to_end_latency", "node_overhead", "publish"):
        assert re.search(rf"{stage}: +[\d.]+ ms", printed), printed
    points, colors, confidence = read_ply(out / "cloud.ply")
    assert len(points) == count and np.isfinite(points).all()
    assert colors.shape == (count, 3) and confidence.shape == (count,)
    # a camera image and the cloud rendered from that camera, both at twice the (portrait)
    # image size, side by side; the rendering is not empty
    preview = np.asarray(Image.open(out / "preview.png"))
    assert preview.shape[1:] == (4 * WIDTH, 3) and preview.shape[0] > 2 * WIDTH
    assert preview[:, 2 * WIDTH:].any()
