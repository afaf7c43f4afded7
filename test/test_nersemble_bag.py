"""NeRSemble reader and capture bags, without ROS: a NeRSemble-format download made from the
synthetic rig (test/nersemble_fixture.py) -> our reader -> ``threer-ros bag`` -> read back
with ``rosbags`` directly (not through our reader)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.interfaces import QosDurability
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

import nersemble_fixture as fx
from threer_ros.cli import main
from threer_ros.data.nersemble import (FPS, SERIALS, NersembleError, NersembleSequence,
                                       list_participants, list_sequences, load_camera_params)
from threer_ros.data.rosbag import BagError, bag_info, read_messages
from threer_ros.geometry.transforms import quaternion_to_matrix

T0_S = 1_700_000_000
TYPES = get_typestore(Stores.ROS2_KILTED)    # independent of the store our writer uses


@pytest.fixture(scope="module")
def rig():
    return fx.render()


@pytest.fixture(scope="module")
def v2_root(rig, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nersemble_v2")
    fx.write_video_download(root, rig)
    return root


def _sets(root: Path, start: int = 0, stop: int | None = None, downscale: int = 1):
    return list(NersembleSequence.open(root, fx.PARTICIPANT, fx.SEQUENCE)
                .frame_sets(start, stop, downscale))


def _check_calibration(frame_sets, rig, downscale: int = 1) -> None:
    views = {v.name: v for v in rig.views}
    for fs in frame_sets:
        assert fs.cameras == tuple(f"cam_{s}" for s in SERIALS)     # canonical order
        for frame in fs.frames:
            truth = views[frame.camera].calibration
            K = truth.K.copy()
            K[:2] /= downscale
            np.testing.assert_allclose(frame.calibration.K, K, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(frame.calibration.cam_to_rig, truth.cam_to_rig,
                                       atol=1e-12)
            assert frame.image.shape == (truth.height // downscale, truth.width // downscale, 3)
            assert (frame.calibration.width, frame.calibration.height) == \
                (frame.image.shape[1], frame.image.shape[0])


def _blur(image: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(image.astype(np.float64), (0, 0), 2.0)


# --- reader -------------------------------------------------------------------------------
def test_the_v2_video_layout_gives_rgb_frames_calibration_and_73_fps_stamps(v2_root, rig):
    assert list_participants(v2_root) == [fx.PARTICIPANT]
    assert list_sequences(v2_root, 31) == [fx.SEQUENCE]
    sequence = NersembleSequence.open(v2_root, "31", fx.SEQUENCE)
    assert sequence.layout == "v2" and sequence.timesteps() == [0, 1, 2]
    sets = list(sequence.frame_sets(1, 3))
    assert [fs.stamp_ns for fs in sets] == [round(1e9 / FPS), round(2e9 / FPS)]
    _check_calibration(sets, rig)
    index = {c: i for i, c in enumerate(fx.CAMERAS)}
    for k, fs in zip((1, 2), sets):
        for frame in fs.frames:
            assert frame.stamp_ns == fs.stamp_ns
            truth = fx.frame_image(rig, index[frame.camera], k)
            # MPEG-4 at 66 px loses the fine texture, not the colours: blurred, the images
            # agree within 3 grey levels (a red/blue swap errs by about 7)
            assert np.abs(_blur(frame.image) - _blur(truth)).mean() < 3.0


def test_the_v1_png_layout_is_exact_and_downscaling_scales_k(rig, tmp_path):
    fx.write_png_download(tmp_path, rig)
    sequence = NersembleSequence.open(tmp_path, fx.PARTICIPANT, fx.SEQUENCE)
    assert sequence.layout == "v1" and sequence.timesteps() == [0, 1, 2]
    sets = _sets(tmp_path, 0, 2)
    _check_calibration(sets, rig)
    index = {c: i for i, c in enumerate(fx.CAMERAS)}
    for k, fs in enumerate(sets):
        for frame in fs.frames:
            np.testing.assert_array_equal(frame.image, fx.frame_image(rig, index[frame.camera], k))
    _check_calibration(_sets(tmp_path, 2, 3, downscale=2), rig, downscale=2)


def test_the_benchmark_layout_with_per_camera_intrinsics(rig, tmp_path):
    fx.write_video_download(tmp_path, rig, frames=1, benchmark=True)
    for root in (tmp_path, tmp_path / "nvs"):
        sequence = NersembleSequence.open(root, fx.PARTICIPANT, fx.SEQUENCE)
        assert sequence.layout == "benchmark"
        assert load_camera_params(sequence.params.path).reference_size is None
        _check_calibration(list(sequence.frame_sets()), rig)


# --- bags ---------------------------------------------------------------------------------
def _bag(args: list[str]) -> None:
    assert main(["bag", *args]) == 0


@pytest.mark.parametrize("storage,compressed", [("mcap", False), ("sqlite3", False),
                                                ("mcap", True)],
                         ids=["mcap-raw", "sqlite3-raw", "mcap-jpeg"])
def test_reader_to_bag_to_rosbags_keeps_pixels_intrinsics_poses_and_stamps(
        v2_root, storage, compressed, tmp_path):
    out = tmp_path / ("capture." + ("db3" if storage == "sqlite3" else "mcap"))
    _bag(["from-nersemble", "--root", str(v2_root), "--participant", "031", "--sequence",
          fx.SEQUENCE, "--frames", "1:3", "--t0", str(T0_S), "--out", str(out)]
         + (["--compressed"] if compressed else []))
    folder = tmp_path / "capture"
    assert (folder / "metadata.yaml").is_file()
    assert (folder / f"capture.{'db3' if storage == 'sqlite3' else 'mcap'}").is_file()
    expected = {fs.stamp_ns: {f.camera: f for f in fs.frames} for fs in _sets(v2_root, 1, 3)}

    stamps, images, infos, tf = {}, {}, {}, None
    with Reader(folder) as reader:
        qos = {c.topic: c.ext.offered_qos_profiles for c in reader.connections}
        assert qos["/tf_static"][0].durability == QosDurability.TRANSIENT_LOCAL
        for conn, log_ns, raw in reader.messages():
            msg = TYPES.deserialize_cdr(raw, conn.msgtype)
            if conn.topic == "/tf_static":
                tf = msg
                continue
            camera, kind = conn.topic.split("/")[1], conn.topic.split("/")[2]
            header_ns = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
            assert header_ns == log_ns
            assert msg.header.frame_id == f"{camera}_optical_frame"
            stamps.setdefault(header_ns, set()).add(camera)
            (infos if kind == "camera_info" else images)[(header_ns, camera)] = (conn, msg)

    t0 = T0_S * 10**9
    assert sorted(stamps) == [t0 + round(k * 1e9 / FPS) for k in (1, 2)]
    assert all(cams == set(fx.CAMERAS) for cams in stamps.values())  # one stamp per set
    for (stamp, camera), (conn, msg) in images.items():
        frame = expected[stamp - t0][camera]
        if compressed:
            assert conn.topic == f"/{camera}/image_raw/compressed"
            assert msg.format == "rgb8; jpeg compressed bgr8"
            decoded = cv2.imdecode(msg.data, cv2.IMREAD_COLOR)[..., ::-1]
            assert np.abs(_blur(decoded) - _blur(frame.image)).mean() < 2.0   # lossy JPEG
        else:
            assert conn.topic == f"/{camera}/image_raw" and msg.encoding == "rgb8"
            assert msg.step == 3 * msg.width
            pixels = msg.data.reshape(msg.height, msg.width, 3)
            np.testing.assert_array_equal(pixels, frame.image)
    for (stamp, camera), (_, msg) in infos.items():
        calib = expected[stamp - t0][camera].calibration
        np.testing.assert_array_equal(msg.k.reshape(3, 3), calib.K)
        np.testing.assert_array_equal(msg.p.reshape(3, 4)[:, :3], calib.K)
        assert not msg.p.reshape(3, 4)[:, 3].any() and len(msg.d) == 0
        np.testing.assert_array_equal(msg.r.reshape(3, 3), np.eye(3))
        assert (msg.width, msg.height) == (calib.width, calib.height)

    poses = {c: f.calibration.cam_to_rig for c, f in next(iter(expected.values())).items()}
    assert len(tf.transforms) == len(fx.CAMERAS)
    for t in tf.transforms:
        assert t.header.frame_id == "rig"
        assert (t.header.stamp.sec, t.header.stamp.nanosec) == divmod(sorted(stamps)[0], 10**9)
        pose = poses[t.child_frame_id.removesuffix("_optical_frame")]
        r, x = t.transform.rotation, t.transform.translation
        np.testing.assert_allclose(quaternion_to_matrix(np.array([r.x, r.y, r.z, r.w])),
                                   pose[:3, :3], atol=1e-12)
        np.testing.assert_allclose([x.x, x.y, x.z], pose[:3, 3], atol=1e-12)


def test_bag_info_and_a_synthetic_bag(tmp_path, capsys):
    _bag(["from-synthetic", "--sets", "4", "--rate", "5", "--width", "32", "--t0", "100",
          "--out", str(tmp_path / "synthetic")])
    info = bag_info(tmp_path / "synthetic")
    assert info.message_count == 1 + 4 * 2 * len(fx.CAMERAS)
    assert info.duration_ns == 600_000_000 and info.start_ns == 100 * 10**9
    assert info.topic("/tf_static").latched and info.topic("/cam_222200037/image_raw").count == 4
    capsys.readouterr()
    _bag(["info", str(tmp_path / "synthetic")])
    out = capsys.readouterr().out
    assert "/tf_static" in out and "16 frames under rig" in out and "0.600 s" in out
    assert "32x47 rgb8" in out


# --- errors -------------------------------------------------------------------------------
def _calibration_file(root: Path) -> Path:
    return root / fx.PARTICIPANT / "calibration" / "camera_params.json"


@pytest.mark.parametrize("damage", ["not json", "no world_2_cam", "bad shape", "not rigid",
                                    "no intrinsics"])
def test_a_malformed_calibration_is_named(rig, damage, tmp_path, capsys):
    root = tmp_path / "download"
    fx.write_video_download(root, rig, frames=1)
    path = _calibration_file(root)
    params = json.loads(path.read_text())
    serial = fx.SERIALS[3]
    if damage == "not json":
        path.write_text(path.read_text()[:-20])
    else:
        if damage == "no world_2_cam":
            del params["world_2_cam"]
        elif damage == "bad shape":
            params["world_2_cam"][serial] = params["world_2_cam"][serial][:3]
        elif damage == "not rigid":
            params["world_2_cam"][serial][0][0] = 3.0
        else:
            del params["intrinsics"]
        path.write_text(json.dumps(params))
    with pytest.raises(NersembleError, match=str(path)):
        NersembleSequence.open(root, fx.PARTICIPANT, fx.SEQUENCE)
    code = main(["bag", "from-nersemble", "--root", str(root), "--participant", "031",
                 "--sequence", fx.SEQUENCE, "--out", str(tmp_path / "bag")])
    assert code == 2 and str(path) in capsys.readouterr().err
    assert not (tmp_path / "bag").exists()


def test_missing_damaged_and_short_videos_are_named(rig, tmp_path):
    root = tmp_path / "download"
    participant = fx.write_video_download(root, rig, frames=2)
    videos = participant / "sequences" / fx.SEQUENCE / "images"
    with pytest.raises(NersembleError, match="no timesteps in 5:9"):
        _sets(root, 5, 9)
    shutil.copy(videos / f"{fx.CAMERAS[0]}.mp4", tmp_path / "first.mp4")
    (videos / f"{fx.CAMERAS[4]}.mp4").write_bytes((tmp_path / "first.mp4").read_bytes()[:300])
    with pytest.raises(NersembleError, match=f"{videos / fx.CAMERAS[4]}.mp4: cannot be opened"):
        _sets(root)
    (videos / f"{fx.CAMERAS[4]}.mp4").unlink()
    with pytest.raises(NersembleError, match=f"{videos / fx.CAMERAS[4]}.mp4 is missing"):
        NersembleSequence.open(root, fx.PARTICIPANT, fx.SEQUENCE)
    with pytest.raises(NersembleError, match="no calibration for participant 099"):
        NersembleSequence.open(root, 99, fx.SEQUENCE)
    with pytest.raises(NersembleError, match="FREE does not exist"):
        NersembleSequence.open(root, fx.PARTICIPANT, "FREE")


def test_a_missing_png_is_named(rig, tmp_path):
    participant = fx.write_png_download(tmp_path, rig, frames=1)
    png = participant / "sequences" / fx.SEQUENCE / "frame_00000" / "images-2x-73fps" / \
        f"{fx.CAMERAS[7]}.png"
    png.unlink()
    with pytest.raises(NersembleError, match=f"{png} is missing"):
        _sets(tmp_path)


@pytest.mark.parametrize("problem", ["truncated mcap", "garbage mcap", "truncated db3",
                                     "no metadata", "missing"])
def test_truncated_damaged_or_missing_bags_fail_clearly(problem, tmp_path, capsys):
    storage = "db3" if "db3" in problem else "mcap"
    folder = tmp_path / "capture"
    _bag(["from-synthetic", "--sets", "3", "--width", "32", "--t0", "100", "--out",
          f"{folder}.{storage}"])
    data_file = folder / f"capture.{storage}"
    data = data_file.read_bytes()
    if problem.startswith("truncated"):
        data_file.write_bytes(data[: len(data) // 2])
        named = data_file if storage == "db3" else folder
    elif problem == "garbage mcap":
        data_file.write_bytes(np.random.default_rng(0).bytes(len(data)))
        named = folder
    elif problem == "no metadata":
        (folder / "metadata.yaml").unlink()
        named = folder
    else:
        shutil.rmtree(folder)
        named = folder
    with pytest.raises(BagError, match=str(named)):
        list(read_messages(folder))
    assert main(["bag", "info", str(folder)]) == 2
    assert str(folder) in capsys.readouterr().err
