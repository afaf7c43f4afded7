"""Start the threer_ros capture node, optionally with a camera source and RViz.

    ros2 launch threer_ros capture.launch.py                       # live rig, config/capture.yaml
    ros2 launch threer_ros capture.launch.py source:=synthetic rviz:=true
    ros2 launch threer_ros capture.launch.py config:=my_rig.yaml rig_calibration:=my_rig_cal.yaml
    ros2 launch threer_ros capture.launch.py bag:=bags/p031_eyes loop:=true rviz:=true
    ros2 launch threer_ros capture.launch.py bag:=bags/p031_eyes use_sim_time:=true
    ros2 launch threer_ros capture.launch.py namespace:=rig_a managed:=true

Arguments: config (parameter file), backend, checkpoint, device, rig_calibration (empty = from
the config file), source (none | synthetic), rate (synthetic rig trigger rate, Hz), bag (a
rosbag2 bag to replay into the node, e.g. from `threer-ros bag from-nersemble`; when it holds
/tf_static the node takes the camera poses from there: rig_calibration tf), bag_rate (replay
speed factor), loop (replay the bag again and again), namespace (of the node, its camera topics
and outputs; /tf, /tf_static, /clock and /diagnostics stay global), use_sim_time (the node and
RViz follow /clock; with bag:= the replay publishes the bag's time there and keeps the recorded
stamps, otherwise it restamps to the current time), managed (the node waits for lifecycle
transitions instead of configuring and activating itself), rviz.

The helpers are started as executables of the installed package (`threer-ros replay`), so the
launch works from a colcon install without a virtual environment on PATH. The synthetic rig's
calibration and RViz's configuration are written to a folder of this launch (removed at
shutdown), and the node starts once the rig has written its calibration.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import yaml
from ament_index_python.packages import get_package_share_directory
from launch import Action, LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, RegisterEventHandler
from launch.conditions import IfCondition
from launch.event_handlers import OnProcessIO, OnShutdown
from launch.events.process import ProcessIO
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.utilities import make_namespace_absolute, prefix_namespace

from threer_ros.config import read_parameters

PACKAGE = "threer_ros"
#: Launch arguments the node takes as parameters when they are not empty.
_OVERRIDABLE = ("backend", "checkpoint", "device", "rig_calibration")
#: Topics that stay global under namespace:= (a bag's are remapped into it otherwise).
_GLOBAL_TOPICS = ("/tf", "/tf_static", "/clock", "/diagnostics", "/rosout", "/parameter_events")


def _true(value: str) -> bool:
    return value.lower() in ("1", "true", "yes")


def _resolve(namespace: str, name: str) -> str:
    """The absolute name of topic ``name`` for a node in absolute ``namespace``."""
    return name if name.startswith("/") else f"{namespace.rstrip('/')}/{name}"


def _rviz_config(share: Path, out: Path, params: dict, namespace: str) -> Path:
    """``config/threer.rviz`` with the fixed frame and topics of this launch, written to
    ``out``."""
    doc = yaml.safe_load((share / "config" / "threer.rviz").read_text())
    manager = doc["Visualization Manager"]
    manager["Global Options"]["Fixed Frame"] = params["output_frame"]
    manager["Views"]["Current"]["Target Frame"] = params["output_frame"]
    topics = {"rviz_default_plugins/PointCloud2": params["cloud_topic"],
              "rviz_default_plugins/PoseArray": params["poses_topic"]}
    for display in manager["Displays"]:
        if display["Class"] in topics:
            display["Topic"]["Value"] = _resolve(namespace, topics[display["Class"]])
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


class _StartOnOutput:
    """Callback of an :class:`OnProcessIO` handler: returns ``actions`` once, when the process
    has printed ``text`` (possibly across several chunks of output)."""

    def __init__(self, text: str, actions: list[Action]) -> None:
        self._text, self._actions = text, actions
        self._seen = ""

    def __call__(self, event: ProcessIO) -> list[Action] | None:
        if self._seen is None:
            return None
        self._seen += event.text.decode(errors="replace")
        if self._text not in self._seen:
            self._seen = self._seen[-len(self._text):]
            return None
        self._seen = None
        return self._actions


def _graph(context: LaunchContext) -> list[Action]:
    arg = {name: LaunchConfiguration(name).perform(context) for name in
           ("config", "source", "rate", "bag", "bag_rate", "loop", "namespace", "use_sim_time",
            "managed", *_OVERRIDABLE)}
    namespace = make_namespace_absolute(prefix_namespace(
        context.launch_configurations.get("ros_namespace"), arg["namespace"] or None)) or "/"
    sim_time = _true(arg["use_sim_time"])
    share = Path(get_package_share_directory(PACKAGE))
    params = read_parameters(arg["config"])
    workdir = Path(tempfile.mkdtemp(prefix="threer_ros_launch_"))
    actions: list[Action] = [RegisterEventHandler(OnShutdown(
        on_shutdown=lambda _event, _context: shutil.rmtree(workdir, ignore_errors=True)))]
    overrides: dict[str, str | bool] = {name: arg[name] for name in _OVERRIDABLE if arg[name]}
    overrides["use_sim_time"] = sim_time
    overrides["autostart"] = not _true(arg["managed"])
    helper, wait_for = None, None
    if arg["source"] == "synthetic":
        if sim_time:
            raise ValueError("source:=synthetic stamps with the current time and publishes no "
                             "/clock: use_sim_time:=true needs bag:= or a /clock of your own")
        if "rig_calibration" not in overrides:
            wait_for = str(workdir / "synthetic_rig.yaml")
            overrides["rig_calibration"] = wait_for
        helper = Node(package=PACKAGE, executable="threer-ros", namespace=namespace,
                      output="screen",
                      arguments=["replay", "--synthetic", "--config", arg["config"],
                                 "--rate", arg["rate"]] +
                                (["--write-calibration", wait_for] if wait_for else []))
    elif arg["source"] not in ("", "none"):
        raise ValueError(f"source:={arg['source']!r}: use none or synthetic")
    if arg["bag"]:
        if helper is not None:
            raise ValueError("give source:=synthetic or bag:=<path>, not both")
        from threer_ros.data.rosbag import TF_STATIC, bag_info  # rosbags: for bag:= only

        info = bag_info(arg["bag"])
        if info.topic(TF_STATIC) is not None:
            overrides.setdefault("rig_calibration", "tf")
        # use_sim_time: the bag's stamps and its time on /clock; else restamped: clouds and
        # TF carry current times, as from a live rig (RViz, loops)
        helper = Node(package=PACKAGE, executable="threer-ros", output="screen",
                      arguments=["replay", arg["bag"], "--rate", arg["bag_rate"],
                                 "--wait-for-subscribers",
                                 "--clock" if sim_time else "--restamp"] +
                                (["--loop"] if _true(arg["loop"]) else []),
                      remappings=[(t.name, _resolve(namespace, t.name.lstrip("/")))
                                  for t in info.topics
                                  if namespace != "/" and t.name not in _GLOBAL_TOPICS])
    if helper is not None:     # our publishers offer reliable: lose no image of a set's burst
        overrides.setdefault("image_reliability", "reliable")
        actions.append(helper)
    node = Node(package=PACKAGE, executable="capture_node", name="threer_capture",
                namespace=namespace, output="screen", parameters=[arg["config"], overrides])
    if wait_for:     # the node reads the calibration when it starts
        actions.append(RegisterEventHandler(OnProcessIO(
            target_action=helper, on_stdout=_StartOnOutput(wait_for, [node]))))
    else:
        actions.append(node)
    actions.append(Node(package="rviz2", executable="rviz2", output="log",
                        arguments=["-d", str(_rviz_config(share, workdir / "threer.rviz",
                                                          params, namespace))],
                        parameters=[{"use_sim_time": sim_time}],
                        condition=IfCondition(LaunchConfiguration("rviz"))))
    return actions


def generate_launch_description() -> LaunchDescription:
    share = Path(get_package_share_directory(PACKAGE))
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
        DeclareLaunchArgument("namespace", default_value="",
                              description="namespace of the node and its topics (empty: /)"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="follow /clock (bag:= publishes the bag's time)"),
        DeclareLaunchArgument("managed", default_value="false",
                              description="wait for lifecycle transitions (configure, "
                                          "activate) instead of starting at once"),
        DeclareLaunchArgument("rviz", default_value="false", description="start RViz"),
        OpaqueFunction(function=_graph),
    ])
