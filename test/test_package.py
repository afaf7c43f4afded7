"""The package builds with colcon like any ament_python package, and installs what ROS expects."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def colcon_install(tmp_path_factory) -> Path:
    colcon = shutil.which("colcon", path=str(Path(sys.executable).parent))
    assert colcon, "colcon is installed by `make test` (requirements/test.txt)"
    work = tmp_path_factory.mktemp("colcon")
    subprocess.run([colcon, "--log-base", str(work / "log"), "build", "--base-paths", str(REPO),
                    "--build-base", str(work / "build"), "--install-base", str(work / "install")],
                   check=True, cwd=work, capture_output=True, timeout=300)
    return work / "install" / "threer_ros"


def test_colcon_installs_executables_launch_config_and_the_ament_marker(colcon_install):
    assert (colcon_install / "lib" / "threer_ros" / "capture_node").is_file()
    assert (colcon_install / "lib" / "threer_ros" / "threer-ros").is_file()
    share = colcon_install / "share" / "threer_ros"
    for relative in ("package.xml", "launch/capture.launch.py", "config/capture.yaml",
                     "config/threer.rviz"):
        assert (share / relative).is_file(), relative
    assert (colcon_install / "share" / "ament_index" / "resource_index" / "packages" /
            "threer_ros").is_file()


def test_the_ament_index_finds_the_installed_share_folder(colcon_install):
    env = dict(os.environ, AMENT_PREFIX_PATH=str(colcon_install))
    out = subprocess.run(
        [sys.executable, "-c", "from ament_index_python.packages import "
         "get_package_share_directory as g; print(g('threer_ros'))"],
        env=env, check=True, capture_output=True, text=True).stdout.strip()
    assert Path(out) == colcon_install / "share" / "threer_ros"


def test_the_launch_file_declares_the_documented_arguments():
    """``ros2 launch`` is not on PyPI; check the file's declared interface statically."""
    import ast

    tree = ast.parse((REPO / "launch" / "capture.launch.py").read_text())
    declared = {node.args[0].value for node in ast.walk(tree)
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") ==
                "DeclareLaunchArgument"}
    assert declared == {"config", "backend", "checkpoint", "device", "rig_calibration", "source",
                        "rate", "bag", "bag_rate", "loop", "rviz"}
