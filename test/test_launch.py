"""The package from a colcon install: what it installs, and ``capture.launch.py`` run under the
real ``launch`` and ``launch_ros`` in each of its modes (synthetic rig, bag replay, live cameras
fed from outside) until a cloud arrives.

The install is built once per module with this interpreter's colcon. Each launch sees only the
install's ``setup.sh`` and a ``PATH`` without this environment's executables, so the helpers it
starts are found through the install, as after ``colcon build`` on a user's machine. ``launch``
and ``launch_ros`` come from a sourced ROS 2, else from ``../shared/thirdparty/ros2_launch``
(their unmodified sources; ``lark`` and ``osrf-pycommon`` are in requirements/test.txt). The
images are small (a few cameras, 64 px, the weight-free mvs backend), so that each launch
reconstructs within seconds. Every launch runs in its own process group on the ROS domain
``ros_domain_id + DOMAIN_OFFSET``, one launch at a time.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

rclpy = pytest.importorskip("rclpy", reason="the ROS layer needs rclpy (make test installs it)")

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402

from conftest import stop_process  # noqa: E402
from threer_ros.config import read_parameters  # noqa: E402
from threer_ros.data.calibration import save_rig_calibration  # noqa: E402
from threer_ros.data.rosbag import CaptureBagWriter  # noqa: E402
from threer_ros.data.synthetic import SyntheticRig  # noqa: E402
from threer_ros.ros.convert import cloud_from_msg  # noqa: E402
from threer_ros.ros.probe import OutputProbe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
THIRDPARTY_LAUNCH = REPO.parent / "shared" / "thirdparty" / "ros2_launch"
DOMAIN_OFFSET = 89
WAIT = 120.0                  # generous: each launch starts torch-importing processes on 2 cores
CAMERAS = tuple(read_parameters()["cameras"][:8])
WIDTH = 64
T0_NS = 1_000 * 10**9         # the bag's first set
PERIOD_NS = 500_000_000
#: What ``ros2 launch <package> <file> name:=value ...`` does (ros2launch is not on PyPI).
RUNNER = """
import sys
from pathlib import Path
from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription, LaunchService
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import AnyLaunchDescriptionSource

package, name, arguments = sys.argv[1], sys.argv[2], sys.argv[3:]
path = Path(get_package_share_directory(package)) / "launch" / name
service = LaunchService(argv=arguments, noninteractive=True)
service.include_launch_description(LaunchDescription([IncludeLaunchDescription(
    AnyLaunchDescriptionSource(str(path)),
    launch_arguments=[tuple(a.split(":=", 1)) for a in arguments])]))
sys.exit(service.run())
"""


def _unavailable(reason: str) -> None:
    """Skip where the tools are missing on a developer's machine; CI must have them."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI has to run the launch tests)")
    pytest.skip(reason)


def _launch_pythonpath() -> list[str]:
    """``PYTHONPATH`` entries that make ``launch`` and ``launch_ros`` importable."""
    if importlib.util.find_spec("launch_ros") is not None:      # a sourced ROS 2
        return []
    if not (THIRDPARTY_LAUNCH / "launch_ros").is_dir():
        _unavailable(f"launch_ros is not importable and {THIRDPARTY_LAUNCH} does not exist")
    for module in ("lark", "osrf_pycommon"):
        if importlib.util.find_spec(module) is None:
            _unavailable(f"{module} is missing (pip install -r requirements/test.txt)")
    return [str(THIRDPARTY_LAUNCH)]


@pytest.fixture(scope="module")
def colcon_install(tmp_path_factory) -> Path:
    """The install folder of ``colcon build`` over the repository (built once)."""
    colcon = shutil.which("colcon", path=str(Path(sys.executable).parent)) or \
        shutil.which("colcon")
    if colcon is None:
        _unavailable("colcon is not installed (pip install -r requirements/test.txt)")
    work = tmp_path_factory.mktemp("colcon")
    build = subprocess.run([colcon, "--log-base", str(work / "log"), "build", "--base-paths",
                            str(REPO), "--build-base", str(work / "build"), "--install-base",
                            str(work / "install")],
                           cwd=work, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, f"colcon build failed:\n{build.stdout[-3000:]}{build.stderr}"
    return work / "install"


@pytest.fixture(scope="module")
def install_env(colcon_install) -> dict[str, str]:
    """The environment of a process started through the install's ``setup.sh``: ``PATH``
    without any folder holding this package's executables (this venv's ``bin``), ``launch``
    importable."""
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep)
            if p and not any((Path(p) / exe).exists() for exe in ("threer-ros", "capture_node"))]
    python_path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, PATH=os.pathsep.join(path),
               PYTHONPATH=os.pathsep.join(python_path + _launch_pythonpath()),
               ROS_AUTOMATIC_DISCOVERY_RANGE=os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE",
                                                            "LOCALHOST"))
    env.pop("VIRTUAL_ENV", None)
    return env


def _sourced(install: Path, command: list[str]) -> list[str]:
    """``command`` run by ``sh`` after sourcing ``install/setup.sh``."""
    return ["sh", "-c", '. "$0/setup.sh" && exec "$@"', str(install), *command]


def test_colcon_installs_executables_launch_config_and_the_ament_marker(colcon_install):
    package = colcon_install / "threer_ros"
    assert (package / "lib" / "threer_ros" / "capture_node").is_file()
    assert (package / "lib" / "threer_ros" / "threer-ros").is_file()
    share = package / "share" / "threer_ros"
    for relative in ("package.xml", "launch/capture.launch.py", "config/capture.yaml",
                     "config/threer.rviz"):
        assert (share / relative).is_file(), relative
    assert (package / "share" / "ament_index" / "resource_index" / "packages" /
            "threer_ros").is_file()


def test_the_install_alone_finds_the_package_and_its_executables(colcon_install, install_env):
    assert shutil.which("threer-ros", path=install_env["PATH"]) is None
    script = ("import shutil, sys; from ament_index_python.packages import "
              "get_package_share_directory as g, get_package_prefix as p; print(g('threer_ros'));"
              " print(shutil.which('threer-ros'))")
    out = subprocess.run(_sourced(colcon_install, [sys.executable, "-c", script]),
                         env=install_env, check=True, capture_output=True, text=True).stdout
    assert out.split() == [str(colcon_install / "threer_ros" / "share" / "threer_ros"), "None"]


# --- the launch file ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_config(tmp_path_factory) -> Path:
    """The default parameter file with 8 cameras, 64 px images and the CPU mvs backend."""
    doc = yaml.safe_load((REPO / "config" / "capture.yaml").read_text())
    doc["/**"]["ros__parameters"].update(
        cameras=list(CAMERAS), working_width=WIDTH, min_cameras=6, max_rate=0.0, backend="mvs",
        device="cpu", output_frame="rig_small")
    path = tmp_path_factory.mktemp("config") / "small.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class _Graph:
    """Processes started through the install, each in its own process group, and a probe of
    the capture node's outputs in this process."""

    def __init__(self, install: Path, env: dict[str, str], domain: int, logs: Path) -> None:
        self.install, self.logs = install, logs
        self.env = dict(env, ROS_DOMAIN_ID=str(domain))
        self.processes: list[subprocess.Popen] = []
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.executor = SingleThreadedExecutor(context=self.context)
        threading.Thread(target=self.executor.spin, daemon=True).start()

    def start(self, name: str, command: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(_sourced(self.install, command), env=self.env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.processes.append(process)
        return process

    def launch(self, *arguments: str) -> subprocess.Popen:
        """``ros2 launch threer_ros capture.launch.py <arguments>``."""
        return self.start("launch", [sys.executable, "-c", RUNNER, "threer_ros",
                                     "capture.launch.py", *arguments])

    def probe(self, namespace: str = "") -> OutputProbe:
        probe = OutputProbe(cloud_topic=f"{namespace}/points",
                            poses_topic=f"{namespace}/camera_poses", context=self.context)
        self.executor.add_node(probe)
        return probe

    def listen(self, msg_type: type, topic: str) -> tuple[list, threading.Event]:
        """The messages that arrive on ``topic`` from now on, and an event set by the first."""
        received, arrived = [], threading.Event()

        def on_message(msg) -> None:
            received.append(msg)
            arrived.set()

        node = Node(f"test_listener_{len(self.executor.get_nodes())}", context=self.context)
        node.create_subscription(msg_type, topic, on_message, 10)
        self.executor.add_node(node)
        return received, arrived

    def wait_for_cloud(self, probe: OutputProbe) -> object:
        """The first cloud, or a failure that shows the processes' output."""
        if not probe.wait_for(lambda r: r.clouds, WAIT):
            logs = "\n".join(f"--- {f.name}\n{f.read_text()[-4000:]}"
                             for f in sorted(self.logs.glob("*.log")))
            pytest.fail(f"no cloud within {WAIT:.0f} s; output:\n{logs}")
        return probe.recorded.clouds[0]

    def stop(self) -> None:
        """Ctrl-C to each process (launch stops what it started), then the group is killed."""
        self.executor.shutdown()
        rclpy.shutdown(context=self.context)
        for process in reversed(self.processes):
            try:
                stop_process(process, signal.SIGINT)
            finally:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture
def graph(colcon_install, install_env, ros_domain_id, tmp_path):
    graph = _Graph(colcon_install, install_env, ros_domain_id + DOMAIN_OFFSET, tmp_path)
    yield graph
    graph.stop()


def _ns(stamp) -> int:
    return stamp.sec * 10**9 + stamp.nanosec


def _check_cloud(cloud, frame: str) -> None:
    points, _, _ = cloud_from_msg(cloud)
    assert cloud.header.frame_id == frame
    assert len(points) > 0


def test_source_synthetic_starts_the_rig_and_the_node_that_reads_its_calibration(
        graph, small_config):
    probe = graph.probe()
    launch = graph.launch("source:=synthetic", f"config:={small_config}", "rate:=4.0")
    _check_cloud(graph.wait_for_cloud(probe), "rig_small")
    assert launch.poll() is None


def test_a_bag_with_use_sim_time_is_replayed_with_its_stamps_and_clock(
        graph, small_config, tmp_path):
    rig = SyntheticRig.render(seed=1, width=WIDTH, names=CAMERAS)
    bag = tmp_path / "capture"
    with CaptureBagWriter(bag, CAMERAS, output_frame="rig_small") as writer:
        for k in range(3):
            writer.write_set(rig.frame_set(), T0_NS + k * PERIOD_NS)
    probe, (clock, clock_arrived) = graph.probe(), graph.listen(Clock, "/clock")
    graph.launch(f"bag:={bag}", f"config:={small_config}", "use_sim_time:=true", "loop:=true")
    cloud = graph.wait_for_cloud(probe)
    _check_cloud(cloud, "rig_small")
    stamps = {T0_NS + k * PERIOD_NS for k in range(3)}
    assert _ns(cloud.header.stamp) in stamps, "the bag's stamps were changed"
    assert clock_arrived.wait(WAIT), "nothing on /clock"
    assert {_ns(c.clock) for c in list(clock)} <= stamps, "/clock is not the bag's time"


def test_a_live_launch_in_a_namespace_takes_cameras_published_from_outside(
        graph, small_config, tmp_path):
    calibration = tmp_path / "rig.yaml"
    rig = SyntheticRig.render(seed=0, width=WIDTH, names=CAMERAS)
    save_rig_calibration(calibration, "rig_small", {v.name: v.calibration for v in rig.views})
    probe = graph.probe("/rig_a")
    graph.start("cameras", [str(graph.install / "threer_ros" / "lib" / "threer_ros" /
                                "threer-ros"), "replay", "--synthetic", "--config",
                            str(small_config), "--rate", "4.0", "--ros-args", "-r",
                            "__ns:=/rig_a"])
    launch = graph.launch("namespace:=rig_a", f"config:={small_config}",
                          f"rig_calibration:={calibration}")
    _check_cloud(graph.wait_for_cloud(probe), "rig_small")
    assert launch.poll() is None
