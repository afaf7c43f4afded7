"""The launch file's declared interface (what a colcon install holds and how the launch file runs
from it: test_launch.py)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_launch_file_declares_the_documented_arguments():
    """``ros2 launch`` is not on PyPI; check the file's declared interface statically."""
    import ast

    tree = ast.parse((REPO / "launch" / "capture.launch.py").read_text())
    declared = {node.args[0].value for node in ast.walk(tree)
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") ==
                "DeclareLaunchArgument"}
    assert declared == {"config", "backend", "checkpoint", "device", "rig_calibration", "source",
                        "rate", "bag", "bag_rate", "loop", "namespace", "use_sim_time",
                        "managed", "rviz"}
