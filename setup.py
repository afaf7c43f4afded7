"""ament_python package threer_ros (also installable with pip)."""

from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "threer_ros"
HERE = Path(__file__).parent


def requirements() -> list[str]:
    lines = (HERE / "requirements" / "base.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.rviz")),
    ],
    python_requires=">=3.10",
    install_requires=requirements(),
    zip_safe=False,
    maintainer="threer_ros developers",
    maintainer_email="threer-ros@users.noreply.github.com",
    description="Multi-camera 3D reconstruction (Fast3R, MASt3R, Pow3R, plane-sweep stereo) "
                "for ROS 2: synchronized images in, PointCloud2 and camera TF out.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "threer-ros = threer_ros.cli:main",
            "capture_node = threer_ros.ros.node:main",
        ],
    },
)
