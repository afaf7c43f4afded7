"""Start the threer_ros capture node, optionally with a camera source and RViz.

    ros2 launch threer_ros capture.launch.py                       # live rig, config/capture.yaml
    ros2 launch threer_ros capture.launch.py source:=synthetic rviz:=true
    ros2 launch threer_ros capture.launch.py config:=my_rig.yaml rig_calibration:=my_rig_cal.yaml
    ros2 launch threer_ros capture.launch.py bag:=bags/p031_eyes loop:=true rviz:=true

Arguments: config (parameter file), backend, checkpoint, device, rig_calibration (empty = from
the config file), source (none | synthetic), rate (synthetic rig trigger rate, Hz), bag (a
rosbag2 bag to replay into the node, e.g. from `threer-ros bag from-nersemble`; when it holds
/tf_static the node takes the camera poses from there: rig_calibration tf), bag_rate (replay
speed factor), loop (replay the bag again and again), rviz.
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from threer_ros.data.rosbag import TF_STATIC, bag_info

_OVERRIDABLE = ("backend", "checkpoint", "device", "rig_calibration")


def _true(value: str) -> bool:
    return value.lower() in ("1", "true", "yes")


def _graph(context):
    arg = {name: LaunchConfiguration(name).perform(context) for name in
           ("config", "source", "rate", "bag", "bag_rate", "loop", "rviz", *_OVERRIDABLE)}
    overrides = {name: arg[name] for name in _OVERRIDABLE if arg[name]}
    actions = []
    if arg["source"] == "synthetic":
        actions.append(ExecuteProcess(
            cmd=["threer-ros", "replay", "--synthetic", "--config", arg["config"],
                 "--rate", arg["rate"],
                 "--write-calibration", "/tmp/threer_ros_synthetic_rig.yaml"],
            output="screen"))
        overrides.setdefault("rig_calibration", "/tmp/threer_ros_synthetic_rig.yaml")
    elif arg["source"] not in ("", "none"):
        raise ValueError(f"source:={arg['source']!r}: use none or synthetic")
    if arg["bag"]:
        if arg["source"] == "synthetic":
            raise ValueError("give source:=synthetic or bag:=<path>, not both")
        if bag_info(arg["bag"]).topic(TF_STATIC) is not None:
            overrides.setdefault("rig_calibration", "tf")
        # restamped: clouds and TF carry current times, as from a live rig (RViz, loops)
        actions.append(ExecuteProcess(
            cmd=["threer-ros", "replay", arg["bag"], "--rate", arg["bag_rate"], "--restamp",
                 "--wait-for-subscribers"] + (["--loop"] if _true(arg["loop"]) else []),
            output="screen"))
    if actions:     # our publishers offer reliable: lose no image of a set's burst
        overrides.setdefault("image_reliability", "reliable")
    actions.append(Node(package="threer_ros", executable="capture_node", name="threer_capture",
                        output="screen", parameters=[arg["config"], overrides]))
    if _true(arg["rviz"]):
        rviz_file = Path(get_package_share_directory("threer_ros")) / "config" / "threer.rviz"
        actions.append(Node(package="rviz2", executable="rviz2", arguments=["-d", str(rviz_file)],
                            output="log"))
    return actions


def generate_launch_description() -> LaunchDescription:
    share = Path(get_package_share_directory("threer_ros"))
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=str(share / "config" / "capture.yaml"),
                              description="parameter file of the capture node"),
        DeclareLaunchArgument("backend", default_value="",
                              description="mvs | fast3r | mast3r | pow3r (empty: from config)"),
        DeclareLaunchArgument("checkpoint", default_value="", description="weights file/folder"),
        DeclareLaunchArgument("device", default_value="", description="auto | cuda | cpu"),
        DeclareLaunchArgument("rig_calibration", default_value="",
                              description="rig calibration YAML (empty: from config)"),
        DeclareLaunchArgument("source", default_value="none",
                              description="none (live cameras) | synthetic"),
        DeclareLaunchArgument("rate", default_value="2.0",
                              description="synthetic rig trigger rate in Hz"),
        DeclareLaunchArgument("bag", default_value="",
                              description="rosbag2 bag to replay into the node (empty: none)"),
        DeclareLaunchArgument("bag_rate", default_value="1.0",
                              description="bag replay speed factor"),
        DeclareLaunchArgument("loop", default_value="false",
                              description="replay the bag again and again"),
        DeclareLaunchArgument("rviz", default_value="false", description="start RViz"),
        OpaqueFunction(function=_graph),
    ])
