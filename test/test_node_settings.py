"""The capture node configured the way a real rig needs it: its own topic names and frame,
JPEG images over ``image_transport: compressed``, a point budget and a confidence threshold;
fed by the test's rig driver, and by bags laid out the way ``ros2 bag record`` leaves them
(Humble: sqlite3, metadata version 5; Jazzy and later: mcap, version 9), replayed with
``threer-ros replay``. One node process serves the module (its slot in conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import yaml

rclpy = pytest.importorskip("rclpy", reason="the ROS layer needs rclpy (make test installs it)")

from rcl_interfaces.msg import Log  # noqa: E402
from rclpy.serialization import serialize_message  # noqa: E402
from rosbags.rosbag2 import StoragePlugin, Writer  # noqa: E402

from ros_graph import CAMERAS, WAIT, Graph, RigDriver, capture_graph, stamp_ns  # noqa: E402
from ros_harness import CLI, running  # noqa: E402
from threer_ros.data.calibration import save_rig_calibration  # noqa: E402
from threer_ros.data.rosbag import TYPESTORE, bag_info, qos  # noqa: E402
from threer_ros.data.synthetic import SyntheticRig  # noqa: E402
from threer_ros.ros.bag_player import CAMERA_QOS  # noqa: E402
from threer_ros.ros.convert import cloud_from_msg  # noqa: E402

FRAME = "dome"
MAX_POINTS = 1000
THRESHOLD = 0.8               # mvs confidences here span 0.5 .. 1; about half are >= 0.8
SETTINGS = {"image_topic": "rig/{camera}/image", "camera_info_topic": "rig/{camera}/info",
            "image_transport": "compressed", "image_reliability": "reliable",
            "output_frame": FRAME, "cloud_topic": "recon/cloud", "poses_topic": "recon/poses",
            "max_points": str(MAX_POINTS), "confidence_threshold": str(THRESHOLD)}


@pytest.fixture(scope="module")
def rig() -> SyntheticRig:
    return SyntheticRig.render(seed=7, width=64, names=CAMERAS)


@pytest.fixture(scope="module")
def graph(rig, tmp_path_factory, ros_domain_id) -> Iterator[Graph]:
    calibration = tmp_path_factory.mktemp("rig") / "rig.yaml"
    save_rig_calibration(calibration, FRAME, {v.name: v.calibration for v in rig.views})
    with capture_graph(rig, ros_domain_id, {**SETTINGS, "rig_calibration": str(calibration)},
                       driver_topics={"image_topic": SETTINGS["image_topic"],
                                      "camera_info_topic": SETTINGS["camera_info_topic"],
                                      "compressed": True, "qos": CAMERA_QOS},
                       probe_topics={"cloud_topic": "/recon/cloud",
                                     "poses_topic": "/recon/poses"}) as running_graph:
        yield running_graph


def _cloud_at(graph: Graph, stamp: int) -> bool:
    """Whether the newest cloud is the set at ``stamp`` (its newest member: within 1 ms)."""
    clouds = graph.probe.recorded.clouds
    return bool(clouds) and stamp <= stamp_ns(clouds[-1].header.stamp) < stamp + 1_000_000


def test_renamed_topics_frame_compressed_images_budget_and_threshold(graph):
    stamp = 10_000_000_000
    assert graph.publish_until(lambda: graph.driver.publish_set(stamp),
                               lambda r: _cloud_at(graph, stamp))
    cloud = graph.probe.recorded.clouds[-1]
    assert cloud.header.frame_id == FRAME
    assert cloud.width == MAX_POINTS and cloud.row_step == 20 * MAX_POINTS   # the budget
    assert graph.probe.wait_for(lambda r: graph.pipeline()["points_published"] ==
                                str(MAX_POINTS), WAIT)
    points, _, confidence = cloud_from_msg(cloud)
    assert np.isfinite(points).all() and confidence.min() >= THRESHOLD
    poses = graph.probe.recorded.poses[-1]
    assert poses.header.frame_id == FRAME and len(poses.poses) == len(CAMERAS)
    assert graph.probe.wait_for(lambda r: len(r.tf_static) == len(CAMERAS), WAIT)
    assert {t.header.frame_id for t in graph.probe.recorded.tf_static.values()} == {FRAME}
    for camera in CAMERAS:           # every JPEG decoded, none rejected
        status = graph.camera_status(camera)
        assert int(status["received"]) > 0 and status["rejected"] == "0", status
    assert graph.node.poll() is None


def test_a_corrupt_jpeg_is_rejected_on_its_camera_and_the_next_set_still_comes(graph, rig):
    from threer_ros.ros.convert import encode_compressed

    camera = CAMERAS[2]
    view = next(v for v in rig.views if v.name == camera)
    jpeg = bytes(encode_compressed(view.image, "jpeg"))
    corrupt = {"format": "rgb8; jpeg compressed bgr8", "data": jpeg[: len(jpeg) // 3]}
    rejected = int(graph.camera_status(camera)["rejected"])
    assert graph.publish_until(
        lambda: graph.driver.publish_image(camera, 20_000_000_000, corrupt),
        lambda r: int(graph.camera_status(camera)["rejected"]) > rejected)
    assert "decode" in graph.camera_status(camera)["last_rejection"].lower()
    stamp = 30_000_000_000
    assert graph.publish_until(lambda: graph.driver.publish_set(stamp),
                               lambda r: _cloud_at(graph, stamp))
    assert graph.node.poll() is None


# --- bags as `ros2 bag record` writes them ---------------------------------------------------
#: Offered QoS of a camera driver's topics (sensor data) and of /rosout, as recorded.
SENSOR_QOS = qos(reliable=False, depth=5)
#: Receive delay of each recorded message after its header stamp (the bag's log time).
RECEIVE_DELAY_NS = 3_000_000


def _write_recording(folder: Path, driver: RigDriver, stamp: int, storage: str) -> None:
    """One set of the driver's messages (JPEG on the renamed topics, CameraInfo) and a
    /rosout line as ``ros2 bag record -a`` records them: offered QoS of the publishers, log
    times = receive times, after the header stamps."""
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(folder, version=9 if storage == "mcap" else 8, storage_plugin=plugin) as bag:
        rosout = bag.add_connection("/rosout", "rcl_interfaces/msg/Log", typestore=TYPESTORE,
                                    offered_qos_profiles=[qos(transient_local=True,
                                                              depth=1000)])
        line = Log(name="camera_driver", msg="trigger armed", level=Log.INFO)
        line.stamp.sec, line.stamp.nanosec = divmod(stamp - 50_000_000, 1_000_000_000)
        bag.write(rosout, stamp - 50_000_000 + RECEIVE_DELAY_NS, serialize_message(line))
        for i, camera in enumerate(CAMERAS):
            header_ns = stamp + (i % 3) * 200_000                  # 0.2 ms trigger jitter
            topics = driver.image_pubs[camera].topic_name, driver.info_pubs[camera].topic_name
            for topic, msg in zip(topics, driver.messages(camera, header_ns)):
                msgtype = f"sensor_msgs/msg/{type(msg).__name__}"
                connection = bag.add_connection(topic, msgtype, typestore=TYPESTORE,
                                                offered_qos_profiles=[SENSOR_QOS])
                bag.write(connection, header_ns + RECEIVE_DELAY_NS + i * 100_000,
                          serialize_message(msg))


def _as_ros2_bag_record_leaves_it(folder: Path, distro: str) -> Path:
    """Rename the data file to ``<name>_0.<ext>`` and rewrite metadata.yaml as rosbag2 of
    ``distro`` writes it (Humble: version 5, QoS as a YAML string, no type hashes or distro;
    later: version 9, QoS as a list, ``ros_distro``). Returns the data file."""
    path = folder / "metadata.yaml"
    metadata = yaml.safe_load(path.read_text())
    info = metadata["rosbag2_bagfile_information"]
    (written,) = info["relative_file_paths"]
    data_file = folder / f"{folder.name}_0{Path(written).suffix}"
    (folder / written).rename(data_file)
    info["relative_file_paths"] = [data_file.name]
    info["files"][0]["path"] = data_file.name
    if distro == "humble":
        info["version"] = 5
        for topic in info["topics_with_message_count"]:
            assert isinstance(topic["topic_metadata"]["offered_qos_profiles"], str)
            del topic["topic_metadata"]["type_description_hash"]
        del info["ros_distro"], info["custom_data"]
    else:
        assert info["version"] == 9
        info["ros_distro"] = distro
    path.write_text(yaml.safe_dump(metadata, sort_keys=False))
    return data_file


@pytest.mark.parametrize("distro,storage", [("humble", "sqlite3"), ("kilted", "mcap")])
def test_a_bag_recorded_by_ros2_bag_record_replays_into_the_node(graph, distro, storage,
                                                                 tmp_path, ros_domain_id):
    stamp = {"humble": 100, "kilted": 200}[distro] * 1_000_000_000
    folder = tmp_path / f"{distro}_capture"
    _write_recording(folder, graph.driver, stamp, storage)
    data_file = _as_ros2_bag_record_leaves_it(folder, distro)
    info = bag_info(folder)
    assert info.storage == storage and info.message_count == 1 + 2 * len(CAMERAS)
    assert info.topic("/rosout").latched
    # Humble users name the folder, later ones often the file: either is replayed
    target = folder if distro == "humble" else data_file
    with running([*CLI, "replay", str(target), "--wait-for-subscribers"], ros_domain_id,
                 collect_output=True) as replay:
        # one pass, then it ends by itself
        assert replay.process.wait(timeout=WAIT) == 0, replay.output.text()
        assert graph.probe.wait_for(lambda r: _cloud_at(graph, stamp), WAIT), \
            replay.output.text()
    cloud = graph.probe.recorded.clouds[-1]
    assert cloud.header.frame_id == FRAME and cloud.width == MAX_POINTS
    assert graph.node.poll() is None
