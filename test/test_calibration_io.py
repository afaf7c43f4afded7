"""``threer-ros calibration``: Kalibr / OpenCV / COLMAP files written in each tool's own layout
from known poses are imported and compared with those poses (rotation in degrees, translation
in metres); export -> import round trips; malformed files give a clear error; ``check`` on good
and broken rigs and against a synthetic capture bag."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from threer_ros.cli import main
from threer_ros.data.calibration import CalibrationError, RigCalibration, \
    load_rig_calibration, write_rig_calibration
from threer_ros.data.calibration_formats import camera_from_topic, parse_names
from threer_ros.geometry.rig import axes_convergence, chordal_mean_rotation, rotation_angle
from threer_ros.geometry.transforms import invert_pose, look_at, matrix_to_quaternion
from threer_ros.pipeline.types import CameraCalibration

NAMES = ("cam_left", "cam_mid", "cam_right", "cam_top")
WIDTH, HEIGHT = 640, 480


def known_rig(seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, CameraCalibration]]:
    """Four cameras (metres) around a point 1 m ahead, looking at it, with distinct intrinsics
    and plumb_bob distortion; poses in an arbitrary world frame."""
    rng = np.random.default_rng(seed)
    target = np.array([0.3, -0.2, 1.5])
    poses, intrinsics = {}, {}
    for i, name in enumerate(NAMES):
        centre = target + np.array([np.sin(0.4 * i - 0.6), 0.15 * (i == 3), -np.cos(0.4 * i - 0.6)])
        poses[name] = look_at(centre, target + rng.normal(0, 0.02, 3), np.array([0.0, -1.0, 0.1]))
        f = 500.0 + 10 * i
        K = np.array([[f, 0, 319.5 + i], [0, f * 1.01, 239.5 - i], [0, 0, 1]])
        D = np.array([-0.1 + 0.01 * i, 0.02, 1e-3, -2e-3, 0.0])
        intrinsics[name] = CameraCalibration(K, WIDTH, HEIGHT, D, "plumb_bob")
    return poses, intrinsics


def relative_to(poses: dict[str, np.ndarray], reference: np.ndarray) -> dict[str, np.ndarray]:
    return {n: invert_pose(reference) @ p for n, p in poses.items()}


def assert_poses(got: dict[str, np.ndarray], want: dict[str, np.ndarray],
                 rot_deg: float = 1e-6, trans_m: float = 1e-9) -> None:
    assert list(got) == list(want)
    for name in want:
        r = np.degrees(rotation_angle(got[name][:3, :3].T @ want[name][:3, :3]))
        t = np.linalg.norm(got[name][:3, 3] - want[name][:3, 3])
        assert r < rot_deg and t < trans_m, f"{name}: {r} deg, {t} m"


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# --- writers of each tool's layout (the tests' own, from the tools' documented formats)
def write_kalibr_camchain(path: Path, poses, intrinsics, distortion="radtan") -> None:
    doc, previous = {}, None
    for i, name in enumerate(NAMES):
        K, D = intrinsics[name].K, intrinsics[name].distortion
        entry = {"cam_overlaps": [j for j in range(len(NAMES)) if j != i],
                 "camera_model": "pinhole",
                 "distortion_coeffs": [float(v) for v in D[:4]],
                 "distortion_model": distortion,
                 "intrinsics": [float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])],
                 "resolution": [WIDTH, HEIGHT],
                 "rostopic": f"/{name}/image_raw",
                 "T_cam_imu": np.eye(4).tolist()}
        if previous is not None:
            entry["T_cn_cnm1"] = (invert_pose(poses[name]) @ previous).tolist()
        previous = poses[name]
        doc[f"cam{i}"] = entry
    path.write_text(yaml.safe_dump(doc, default_flow_style=None))


def write_colmap_text(folder: Path, world_poses, intrinsics, unit: float) -> None:
    """A COLMAP text model of the rig: world = the poses' frame divided by ``unit`` metres."""
    folder.mkdir(parents=True, exist_ok=True)
    models = ["PINHOLE", "SIMPLE_RADIAL", "OPENCV", "OPENCV_FISHEYE"]
    cams, imgs = ["# Camera list", "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]"], ["# Images"]
    for i, name in enumerate(NAMES):
        K, D = intrinsics[name].K, intrinsics[name].distortion
        fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5
        params = {"PINHOLE": [fx, fy, cx, cy], "SIMPLE_RADIAL": [fx, cx, cy, D[0]],
                  "OPENCV": [fx, fy, cx, cy, *D[:4]],
                  "OPENCV_FISHEYE": [fx, fy, cx, cy, 0.05, -0.01, 0.002, 0.0]}[models[i]]
        cams.append(f"{10 + i} {models[i]} {WIDTH} {HEIGHT} "
                    + " ".join(repr(float(v)) for v in params))
        w2c = invert_pose(world_poses[name])
        qx, qy, qz, qw = matrix_to_quaternion(w2c[:3, :3])
        pose = " ".join(repr(float(v)) for v in (qw, qx, qy, qz, *(w2c[:3, 3] / unit)))
        imgs.append(f"{i + 1} {pose} {10 + i} frames/{name}.jpg")
        imgs.append("100.0 200.0 -1 10.5 20.5 7" if i % 2 else "")
    (folder / "cameras.txt").write_text("\n".join(cams) + "\n")
    (folder / "images.txt").write_text("\n".join(imgs) + "\n")


def colmap_text_to_binary(folder: Path, out: Path) -> None:
    """The same model as cameras.bin / images.bin (COLMAP's little-endian binary layout)."""
    ids = {"PINHOLE": 1, "SIMPLE_RADIAL": 2, "OPENCV": 4, "OPENCV_FISHEYE": 5}
    out.mkdir(parents=True, exist_ok=True)
    lines = [ln.split() for ln in (folder / "cameras.txt").read_text().splitlines()
             if ln and not ln.startswith("#")]
    data = struct.pack("<Q", len(lines))
    for tokens in lines:
        data += struct.pack("<iiQQ", int(tokens[0]), ids[tokens[1]], int(tokens[2]),
                            int(tokens[3]))
        data += struct.pack(f"<{len(tokens) - 4}d", *map(float, tokens[4:]))
    (out / "cameras.bin").write_bytes(data)
    rows = [ln for ln in (folder / "images.txt").read_text().splitlines()
            if not ln.startswith("#")]
    headers = rows[0::2]
    data = struct.pack("<Q", len(headers))
    for header, points in zip(headers, rows[1::2]):
        t = header.split()
        data += struct.pack("<i7di", int(t[0]), *map(float, t[1:8]), int(t[8]))
        data += t[9].encode() + b"\0"
        p = points.split()
        data += struct.pack("<Q", len(p) // 3)
        for k in range(0, len(p), 3):
            data += struct.pack("<ddq", float(p[k]), float(p[k + 1]), int(p[k + 2]))
    (out / "images.bin").write_bytes(data)


def fs_write(path: Path, nodes: dict) -> None:
    storage = cv2.FileStorage(str(path), cv2.FILE_STORAGE_WRITE)
    for key, value in nodes.items():
        storage.write(key, value)
    storage.release()


def opencv_pair(poses, a: str, b: str, unit: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """stereoCalibrate's R, T of cameras a -> b (p_b = R p_a + T), T in ``unit`` metres."""
    T = invert_pose(poses[b]) @ poses[a]
    return T[:3, :3], T[:3, 3].reshape(3, 1) / unit


# --- geometry
def test_chordal_mean_and_axes_convergence():
    poses, _ = known_rig()
    stack = np.stack(list(poses.values()))
    R, definedness = chordal_mean_rotation(stack[:, :3, :3])
    assert np.allclose(R.T @ R, np.eye(3)) and np.linalg.det(R) > 0 and 0.5 < definedness <= 1
    # rotating every camera by Q rotates the mean by Q
    Q = look_at(np.zeros(3), np.array([1.0, 0.2, 0.3]), np.array([0.0, 0.0, 1.0]))[:3, :3]
    assert np.allclose(chordal_mean_rotation(Q @ stack[:, :3, :3])[0], Q @ R)
    point = axes_convergence(stack)
    assert np.linalg.norm(point - np.array([0.3, -0.2, 1.5])) < 0.05
    parallel = np.stack([np.eye(4), np.eye(4)])
    parallel[1, 0, 3] = 0.1
    assert axes_convergence(parallel) is None


def test_camera_names_from_topics_and_names_options():
    assert camera_from_topic("/stereo/left/image_raw/compressed") == "left"
    assert camera_from_topic("cam_222200037/image") == "cam_222200037"
    with pytest.raises(CalibrationError, match="no namespace"):
        camera_from_topic("/image_raw")
    assert parse_names("a, b,c") == ["a", "b", "c"]
    assert parse_names("cam0=a,cam2=c") == {"cam0": "a", "cam2": "c"}
    with pytest.raises(CalibrationError, match="mixes a list and a mapping"):
        parse_names("a,cam1=b")


# --- Kalibr
def test_kalibr_import_chains_and_names_from_topics(tmp_path, capsys):
    poses, intrinsics = known_rig()
    write_kalibr_camchain(tmp_path / "camchain-rig.yaml", poses, intrinsics)
    code, out, err = run(capsys, "calibration", "import", "--from", "kalibr",
                         tmp_path / "camchain-rig.yaml", "--out", tmp_path / "rig.yaml",
                         "--names-from-topics", "--rig-frame", "cam_mid")
    assert code == 0, err
    rig = load_rig_calibration(tmp_path / "rig.yaml")
    assert_poses(rig.cam_to_rig, relative_to(poses, poses["cam_mid"]))
    calib = rig.intrinsics["cam_right"]
    assert np.allclose(calib.K, intrinsics["cam_right"].K)
    assert calib.distortion_model == "plumb_bob"
    assert np.allclose(calib.distortion, intrinsics["cam_right"].distortion[:4])
    assert "T_cam_imu" in out                                  # told that IMU fields are unused


def test_kalibr_equidistant_and_mean_rig_frame(tmp_path, capsys):
    poses, intrinsics = known_rig()
    write_kalibr_camchain(tmp_path / "c.yaml", poses, intrinsics, distortion="equidistant")
    code, _, err = run(capsys, "calibration", "import", "--from", "kalibr", tmp_path / "c.yaml",
                       "--out", tmp_path / "rig.yaml", "--rig-frame", "mean",
                       "--names", ",".join(NAMES), "--frame-id", "rig_centre")
    assert code == 0, err
    rig = load_rig_calibration(tmp_path / "rig.yaml")
    assert rig.frame_id == "rig_centre"
    assert rig.intrinsics["cam_top"].distortion_model == "equidistant"
    stack = np.stack(list(rig.cam_to_rig.values()))
    assert np.allclose(stack[:, :3, 3].mean(axis=0), 0, atol=1e-12)      # mean centre
    assert np.allclose(chordal_mean_rotation(stack[:, :3, :3])[0], np.eye(3), atol=1e-12)
    # the same rig, up to the choice of frame
    assert_poses(relative_to(rig.cam_to_rig, rig.cam_to_rig["cam_left"]),
                 relative_to(poses, poses["cam_left"]))


# --- OpenCV
def test_opencv_one_file_chain_in_millimetres(tmp_path, capsys):
    poses, intrinsics = known_rig()
    nodes = {"image_size": (WIDTH, HEIGHT)}
    for i, name in enumerate(NAMES, start=1):
        nodes[f"K{i}"] = intrinsics[name].K
        nodes[f"D{i}"] = intrinsics[name].distortion.reshape(1, 5)
    for i in range(1, len(NAMES)):
        R, T = opencv_pair(poses, NAMES[i - 1], NAMES[i], unit=1e-3)
        nodes[f"R{i}{i + 1}"], nodes[f"T{i}{i + 1}"] = R, T
    fs_write(tmp_path / "rig.xml", nodes)
    code, out, err = run(capsys, "calibration", "import", "--from", "opencv",
                         tmp_path / "rig.xml", "--out", tmp_path / "rig.yaml", "--names",
                         "cam1=cam_left,cam2=cam_mid,cam3=cam_right,cam4=cam_top",
                         "--scale", "0.001")
    assert code == 0, err
    rig = load_rig_calibration(tmp_path / "rig.yaml")
    assert_poses(rig.cam_to_rig, relative_to(poses, poses["cam_left"]), trans_m=1e-9)
    assert np.allclose(rig.intrinsics["cam_top"].distortion, intrinsics["cam_top"].distortion)
    assert "cam_left's optical frame" in out                  # the default rig frame is said


def test_opencv_stereo_calib_sample_files(tmp_path, capsys):
    """The OpenCV stereo_calib sample: intrinsics.yml (M1, D1, M2, D2) + extrinsics.yml (R, T
    and stereoRectify's R1, R2, P1, P2, Q), no image size: --image-size."""
    poses, intrinsics = known_rig()
    a, b = NAMES[:2]
    fs_write(tmp_path / "intrinsics.yml", {"M1": intrinsics[a].K, "D1": intrinsics[a].distortion,
                                           "M2": intrinsics[b].K, "D2": intrinsics[b].distortion})
    R, T = opencv_pair(poses, a, b)
    fs_write(tmp_path / "extrinsics.yml", {"R": R, "T": T, "R1": np.eye(3), "R2": np.eye(3),
                                           "P1": np.zeros((3, 4)), "P2": np.zeros((3, 4)),
                                           "Q": np.eye(4)})
    code, out, err = run(capsys, "calibration", "import", "--from", "opencv",
                         tmp_path / "intrinsics.yml", tmp_path / "extrinsics.yml", "--out",
                         tmp_path / "rig.yaml", "--image-size", f"{WIDTH}x{HEIGHT}",
                         "--rig-frame", "cam2")
    assert code == 0, err
    rig = load_rig_calibration(tmp_path / "rig.yaml")
    assert_poses(rig.cam_to_rig, relative_to({"cam1": poses[a], "cam2": poses[b]}, poses[b]))
    assert rig.intrinsics["cam1"].width == WIDTH
    assert "ignored nodes: P1, P2, Q, R1, R2" in out


def test_opencv_chain_of_pair_files_with_rodrigues_and_fisheye(tmp_path, capsys):
    poses, intrinsics = known_rig()
    files = []
    for k in range(len(NAMES) - 1):
        a, b = NAMES[k], NAMES[k + 1]
        R, T = opencv_pair(poses, a, b)
        fisheye = np.array([[0.01 * k, -0.002, 0.0, 0.0]])
        nodes = {"K1": intrinsics[a].K, "D1": fisheye, "K2": intrinsics[b].K,
                 "D2": np.array([[0.01 * (k + 1), -0.002, 0.0, 0.0]]),
                 "R": cv2.Rodrigues(R)[0] if k == 1 else R, "T": T,
                 "imageSize": (WIDTH, HEIGHT)}
        files.append(tmp_path / f"pair{k + 1}{k + 2}.yml")
        fs_write(files[-1], nodes)
    code, _, err = run(capsys, "calibration", "import", "--from", "opencv", *files, "--out",
                       tmp_path / "rig.yaml", "--fisheye", "--names", ",".join(NAMES),
                       "--rig-frame", "cam_left")
    assert code == 0, err
    rig = load_rig_calibration(tmp_path / "rig.yaml")
    assert_poses(rig.cam_to_rig, relative_to(poses, poses["cam_left"]))
    assert rig.intrinsics["cam_right"].distortion_model == "equidistant"
    assert np.allclose(rig.intrinsics["cam_right"].distortion, [0.02, -0.002, 0, 0])


# --- COLMAP
@pytest.mark.parametrize("binary", [False, True])
def test_colmap_import_world_to_camera_scale_and_pixel_centres(tmp_path, capsys, binary):
    poses, intrinsics = known_rig()
    unit = 0.25                                   # metres per COLMAP unit
    write_colmap_text(tmp_path / "text", poses, intrinsics, unit)
    model = tmp_path / "text"
    if binary:
        colmap_text_to_binary(tmp_path / "text", tmp_path / "bin")
        model = tmp_path / "bin"
    code, _, err = run(capsys, "calibration", "import", "--from", "colmap", model, "--out",
                       tmp_path / "rig.yaml", "--rig-frame", "file", "--scale", unit)
    assert code == 0, err
    rig = load_rig_calibration(tmp_path / "rig.yaml")
    assert_poses(rig.cam_to_rig, poses, trans_m=1e-9)
    for name in NAMES:                           # COLMAP's +0.5 pixel centres removed
        assert np.allclose(rig.intrinsics[name].K[:2, 2], intrinsics[name].K[:2, 2])
    assert rig.intrinsics["cam_left"].distortion_model == ""                    # PINHOLE
    assert np.allclose(rig.intrinsics["cam_mid"].distortion, [-0.09, 0, 0, 0, 0])  # SIMPLE_RADIAL
    assert rig.intrinsics["cam_top"].distortion_model == "equidistant"         # OPENCV_FISHEYE
    # the scale from a measured baseline instead
    measured = float(np.linalg.norm(poses["cam_left"][:3, 3] - poses["cam_top"][:3, 3]))
    code, _, err = run(capsys, "calibration", "import", "--from", "colmap", model, "--out",
                       tmp_path / "rig2.yaml", "--rig-frame", "cam_mid", "--baseline",
                       "cam_left", "cam_top", measured)
    assert code == 0, err
    assert_poses(load_rig_calibration(tmp_path / "rig2.yaml").cam_to_rig,
                 relative_to(poses, poses["cam_mid"]), trans_m=1e-9)


# --- export -> import
@pytest.mark.parametrize("fmt,out_name,import_args", [
    ("kalibr", "camchain.yaml", ["--names-from-topics", "--rig-frame", "cam_left"]),
    ("opencv", "rig.yml", ["--rig-frame", "cam_left"]),
    ("opencv", "rig.xml", ["--rig-frame", "cam_left"]),
    ("colmap", "sparse", ["--rig-frame", "file", "--scale", "1"]),
])
def test_export_import_round_trip(tmp_path, capsys, fmt, out_name, import_args):
    poses, intrinsics = known_rig(seed=3)
    if fmt != "kalibr":   # Kalibr's radtan has 4 coefficients; the others also carry k3
        intrinsics["cam_mid"] = CameraCalibration(
            intrinsics["cam_mid"].K, WIDTH, HEIGHT, np.array([0.1, -0.02, 0.001, 0.0, 0.003]),
            "plumb_bob")
    intrinsics["cam_top"] = CameraCalibration(intrinsics["cam_top"].K, WIDTH, HEIGHT,
                                              np.array([0.05, 0.01, -0.002, 0.001]),
                                              "equidistant")
    write_rig_calibration(tmp_path / "rig.yaml", RigCalibration("rig", poses, intrinsics))
    code, _, err = run(capsys, "calibration", "export", "--to", fmt, tmp_path / "rig.yaml",
                       "--out", tmp_path / out_name)
    assert code == 0, err
    code, _, err = run(capsys, "calibration", "import", "--from", fmt, tmp_path / out_name,
                       "--out", tmp_path / "back.yaml", *import_args)
    assert code == 0, err
    back = load_rig_calibration(tmp_path / "back.yaml")
    want = poses if fmt == "colmap" else relative_to(poses, poses["cam_left"])
    assert_poses(back.cam_to_rig, want, rot_deg=1e-5, trans_m=1e-7)
    for name in NAMES:
        got, ref = back.intrinsics[name], intrinsics[name]
        assert np.allclose(got.K, ref.K) and (got.width, got.height) == (WIDTH, HEIGHT)
        assert got.distortion_model == ref.distortion_model, name
        n = max(got.distortion.size, ref.distortion.size)
        assert np.allclose(np.pad(got.distortion, (0, n - got.distortion.size)),
                           np.pad(ref.distortion, (0, n - ref.distortion.size)))


def test_export_refuses_what_the_format_cannot_hold(tmp_path, capsys):
    poses, intrinsics = known_rig()
    intrinsics["cam_mid"] = CameraCalibration(intrinsics["cam_mid"].K, WIDTH, HEIGHT,
                                              np.array([0.1, 0.0, 0.0, 0.0, 0.02]), "plumb_bob")
    write_rig_calibration(tmp_path / "rig.yaml", RigCalibration("rig", poses, intrinsics))
    code, _, err = run(capsys, "calibration", "export", "--to", "kalibr", tmp_path / "rig.yaml",
                       "--out", tmp_path / "c.yaml")
    assert code == 1 and "radtan has four coefficients" in err
    write_rig_calibration(tmp_path / "poses.yaml", RigCalibration("rig", poses, {}))
    code, _, err = run(capsys, "calibration", "export", "--to", "colmap",
                       tmp_path / "poses.yaml", "--out", tmp_path / "m")
    assert code == 1 and "have no intrinsics" in err


# --- malformed files
def _kalibr_doc(tmp_path: Path) -> dict:
    poses, intrinsics = known_rig()
    write_kalibr_camchain(tmp_path / "good.yaml", poses, intrinsics)
    return yaml.safe_load((tmp_path / "good.yaml").read_text())


def _broken_kalibr(change):
    def make(tmp_path: Path) -> list[Path]:
        doc = _kalibr_doc(tmp_path)
        change(doc)
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(doc))
        return [tmp_path / "bad.yaml"]
    return make


def _broken_opencv(change):
    def make(tmp_path: Path) -> list[Path]:
        poses, intrinsics = known_rig()
        nodes = {"image_size": (WIDTH, HEIGHT)}
        for i, name in enumerate(NAMES[:3], start=1):
            nodes[f"K{i}"] = intrinsics[name].K
            nodes[f"D{i}"] = intrinsics[name].distortion
        for i in (1, 2):
            nodes[f"R_{i}_{i + 1}"], nodes[f"T_{i}_{i + 1}"] = opencv_pair(poses, NAMES[i - 1],
                                                                             NAMES[i])
        change(nodes)
        fs_write(tmp_path / "bad.yml", nodes)
        return [tmp_path / "bad.yml"]
    return make


def _broken_colmap(change, binary=False):
    def make(tmp_path: Path) -> list[Path]:
        poses, intrinsics = known_rig()
        write_colmap_text(tmp_path / "m", poses, intrinsics, 1.0)
        change(tmp_path / "m")
        if binary:
            colmap_text_to_binary(tmp_path / "m", tmp_path / "b")
            data = (tmp_path / "b" / "images.bin").read_bytes()
            (tmp_path / "b" / "images.bin").write_bytes(data[:-30])
            return [tmp_path / "b"]
        return [tmp_path / "m"]
    return make


def _edit(name: str, old: str, new: str):
    def change(folder: Path) -> None:
        path = folder / name
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new, 1))
    return change


def _no_link(nodes):
    del nodes["R_2_3"], nodes["T_2_3"]


def _skip_link(nodes):
    nodes["R_1_3"], nodes["T_1_3"] = nodes.pop("R_2_3"), nodes.pop("T_2_3")


MALFORMED = [
    ("kalibr", _broken_kalibr(lambda d: d["cam1"].pop("intrinsics")), [],
     "cam1 has no 'intrinsics'"),
    ("kalibr", _broken_kalibr(lambda d: d["cam2"].update(T_cn_cnm1=d["cam2"]["T_cn_cnm1"][:3])),
     [], "'T_cn_cnm1' must be a 4x4"),
    ("kalibr", _broken_kalibr(lambda d: d["cam0"].update(camera_model="omni")), [],
     "camera model 'omni'"),
    ("kalibr", _broken_kalibr(lambda d: d["cam0"].update(distortion_model="fov",
                                                         distortion_coeffs=[0.9])), [],
     "'fov' cannot be represented"),
    ("kalibr", _broken_kalibr(lambda d: d.pop("cam1")), [], "numbered without gaps"),
    ("kalibr", _broken_kalibr(lambda d: d["cam0"].update(resolution=[640.5, 480])), [],
     "'resolution' must be [width, height]"),
    ("kalibr", _broken_kalibr(lambda d: None), ["--names", "a,b"], "--names gives 2 names"),
    ("kalibr", _broken_kalibr(lambda d: d["cam2"].update(T_cn_cnm1=np.eye(4).tolist())), [],
     "cam1 and cam2 have the same pose"),
    ("kalibr", _broken_kalibr(lambda d: None), ["--rig-frame", "nope"],
     "--rig-frame: no camera 'nope'"),
    ("opencv", _broken_opencv(_skip_link), [], "links camera 1 to camera 3, which is not the next"),
    ("opencv", _broken_opencv(_no_link), [], "camera 3 is not chained to camera 2"),
    ("opencv", _broken_opencv(lambda n: n.update(K2=np.eye(3)[:, :2])), [],
     "K2 must be a 3x3 camera matrix"),
    ("opencv", _broken_opencv(lambda n: n.update(R_1_2=2 * np.eye(3))), [],
     "R_1_2 is not a rotation"),
    ("opencv", _broken_opencv(lambda n: n.update(D1=np.arange(1, 15) * 1e-3)), [],
     "14 distortion coefficients cannot be represented"),
    ("opencv", _broken_opencv(lambda n: n.pop("T_1_2")), [], "R_1_2 has no matching T node"),
    ("opencv", _broken_opencv(lambda n: [n.pop(k) for k in list(n) if k.startswith("K")]), [],
     "no camera matrix found"),
    ("colmap", _broken_colmap(lambda f: None), [], "a COLMAP model has no metric scale"),
    ("colmap", _broken_colmap(_edit("cameras.txt", "PINHOLE", "FOV")), ["--scale", "1"],
     "COLMAP camera model FOV cannot be represented"),
    ("colmap", _broken_colmap(_edit("cameras.txt", "OPENCV 640", "PINHOLE 640")),
     ["--scale", "1"], "PINHOLE takes 4 parameters, got 8"),
    ("colmap", _broken_colmap(_edit("images.txt", "frames/cam_mid.jpg", "frames/cam_left.jpg")),
     ["--scale", "1"], "do not name one camera each"),
    ("colmap", _broken_colmap(_edit("images.txt", " 11 frames/", " 99 frames/")),
     ["--scale", "1"], "uses camera 99"),
    ("colmap", _broken_colmap(lambda f: None, binary=True), ["--scale", "1"], "ends early"),
]


@pytest.mark.parametrize("fmt,make,extra,message", MALFORMED,
                         ids=[f"{m[0]}-{m[3][:30]}" for m in MALFORMED])
def test_malformed_files_give_a_clear_error(tmp_path, capsys, fmt, make, extra, message):
    files = make(tmp_path)
    code, out, err = run(capsys, "calibration", "import", "--from", fmt, *files, "--out",
                         tmp_path / "rig.yaml", *extra)
    assert code == 1
    assert message in err + out, err + out
    assert not (tmp_path / "rig.yaml").exists()


# --- check
def small_config(tmp_path: Path) -> Path:
    """The node's parameter file with four cameras (a small synthetic rig)."""
    path = tmp_path / "capture.yaml"
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "cameras": list(NAMES), "image_topic": "{camera}/image_raw",
        "camera_info_topic": "{camera}/camera_info", "image_transport": "raw",
        "output_frame": "rig"}}}))
    return path


def test_check_synthetic_rig_against_its_bag(tmp_path, capsys):
    config = small_config(tmp_path)
    code, _, err = run(capsys, "calibration", "synthetic", "--width", 48, "--config", config,
                       "--out", tmp_path / "rig.yaml")
    assert code == 0, err
    code, _, err = run(capsys, "bag", "from-synthetic", "--sets", 1, "--width", 48, "--t0", 0,
                       "--config", config, "--out", tmp_path / "bag")
    assert code == 0, err
    code, out, err = run(capsys, "calibration", "check", tmp_path / "rig.yaml", "--bag",
                         tmp_path / "bag", "--config", config)
    assert code == 0, out + err
    assert all(out.count(name) >= 3 for name in NAMES)      # table, geometry, bag lines
    assert "OK: 0 error(s), 0 warning(s)" in out
    # a calibration for another image size, and a camera the bag does not have
    code, _, _ = run(capsys, "calibration", "synthetic", "--width", 64, "--config", config,
                     "--out", tmp_path / "rig64.yaml")
    rig = load_rig_calibration(tmp_path / "rig64.yaml")
    rig.cam_to_rig["cam_extra"] = rig.cam_to_rig.pop("cam_top")
    rig.cam_to_rig["cam_mid"][:3, 3] += [0.01, 0.0, 0.0]
    write_rig_calibration(tmp_path / "rig64.yaml", rig)
    code, out, _ = run(capsys, "calibration", "check", tmp_path / "rig64.yaml", "--bag",
                       tmp_path / "bag", "--config", config)
    assert code == 1
    assert "cam_left: the bag's CameraInfo is 48x70, the file's intrinsics are for 64x93" in out
    assert "cam_extra: the bag has no images on /cam_extra/image_raw" in out
    assert "the bag has images of camera(s) cam_top, which the file does not have" in out
    assert "the node's cameras cam_top are not in the file" in out
    assert "cam_mid: the bag's /tf_static pose differs from the file by 0.0100 m" in out


def test_check_a_compressed_bag(tmp_path, capsys):
    config = small_config(tmp_path)
    run(capsys, "calibration", "synthetic", "--width", 48, "--config", config, "--out",
        tmp_path / "rig.yaml")
    code, _, err = run(capsys, "bag", "from-synthetic", "--sets", 1, "--width", 48, "--t0", 0,
                       "--config", config, "--compressed", "--out", tmp_path / "bag")
    assert code == 0, err
    code, out, _ = run(capsys, "calibration", "check", tmp_path / "rig.yaml", "--bag",
                       tmp_path / "bag", "--config", config)
    assert code == 0, out
    assert "cam_left: images on /cam_left/image_raw/compressed 48x70, CameraInfo" in out


def test_check_finds_what_looks_wrong(tmp_path, capsys):
    poses, intrinsics = known_rig()
    write_rig_calibration(tmp_path / "good.yaml", RigCalibration("rig", poses, intrinsics))
    code, out, _ = run(capsys, "calibration", "check", tmp_path / "good.yaml")
    assert code == 0 and "optical axes converge at" in out and "warning:" not in out
    duplicate = dict(poses, cam_top=poses["cam_mid"].copy())
    write_rig_calibration(tmp_path / "dup.yaml", RigCalibration("rig", duplicate, intrinsics))
    code, out, _ = run(capsys, "calibration", "check", tmp_path / "dup.yaml")
    assert code == 1 and "error: cam_mid and cam_top have the same pose" in out
    flipped = {n: p.copy() for n, p in poses.items()}
    flipped["cam_top"][:3, :3] = flipped["cam_top"][:3, :3] @ np.diag([-1.0, 1.0, -1.0])
    for pose in flipped.values():
        pose[:3, 3] *= 1000.0                                    # millimetres
    write_rig_calibration(tmp_path / "odd.yaml", RigCalibration("rig", flipped, intrinsics))
    code, out, _ = run(capsys, "calibration", "check", tmp_path / "odd.yaml")
    assert code == 0
    assert "warning: cam_top: faces away from the rig centre" in out
    assert "looks like millimetres (re-import with --scale 0.001)" in out
    doc = yaml.safe_load((tmp_path / "good.yaml").read_text())
    doc["cameras"]["cam_mid"]["rotation"] = [0.1, 0.2, 0.3, 0.4]
    (tmp_path / "norm.yaml").write_text(yaml.safe_dump(doc))
    code, out, _ = run(capsys, "calibration", "check", tmp_path / "norm.yaml")
    assert code == 1 and "'cam_mid': rotation quaternion has norm 0.5477" in out
    del doc["cameras"]["cam_mid"]["width"]
    doc["cameras"]["cam_mid"]["rotation"] = [0.0, 0.0, 0.0, 1.0]
    (tmp_path / "size.yaml").write_text(yaml.safe_dump(doc))
    code, out, _ = run(capsys, "calibration", "check", tmp_path / "size.yaml")
    assert code == 1 and "has K but 'width' is None" in out
