"""COLMAP sparse models (``cameras.txt`` + ``images.txt``, or ``cameras.bin`` + ``images.bin``).

Facts of the format (colmap/colmap, doc/format.rst):

* ``cameras``: ``CAMERA_ID MODEL WIDTH HEIGHT PARAMS...``; binary: uint64 count, then per
  camera int32 id, int32 model id, uint64 width, uint64 height, float64 params (little endian).
* ``images``: two lines per image, ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME`` and the 2D
  points (ignored); binary: uint64 count, then int32 id, 7 float64 (qw, qx, qy, qz, tx, ty,
  tz), int32 camera id, the NUL-terminated name, uint64 point count, 24 bytes per point.
* The pose is **world-to-camera** (``p_cam = R(q) p_world + t``), the quaternion is Hamilton
  (w, x, y, z); camera frames are x right, y down, z forward (as ours).
* The model has **no metric scale** (give ``--scale`` or ``--baseline``).
* Pixel coordinates put the centre of the top-left pixel at (0.5, 0.5); ROS and OpenCV put it
  at (0, 0), so ``cx_ros = cx_colmap - 0.5`` (and + 0.5 on export).

Each image is one rig camera, named by its file stem (``cam_a.png`` -> ``cam_a``), or by its
folder when the stems repeat (``cam_a/000.png``, ``cam_b/000.png``).
"""

from __future__ import annotations

import struct
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np

from threer_ros.data.calibration import CalibrationError, RigCalibration
from threer_ros.data.calibration_formats.common import (SourceRig, checked_calibration,
                                                        export_distortion, ordered_intrinsics)
from threer_ros.geometry.transforms import (invert_pose, make_pose, matrix_to_quaternion,
                                            quaternion_to_matrix)

#: COLMAP camera models: name -> (model id, number of parameters).
MODELS = {"SIMPLE_PINHOLE": (0, 3), "PINHOLE": (1, 4), "SIMPLE_RADIAL": (2, 4),
          "RADIAL": (3, 5), "OPENCV": (4, 8), "OPENCV_FISHEYE": (5, 8),
          "FULL_OPENCV": (6, 12), "FOV": (7, 5), "SIMPLE_RADIAL_FISHEYE": (8, 4),
          "RADIAL_FISHEYE": (9, 5), "THIN_PRISM_FISHEYE": (10, 12),
          "RAD_TAN_THIN_PRISM_FISHEYE": (11, 16)}
_BY_ID = {model_id: name for name, (model_id, _) in MODELS.items()}
#: The models whose distortion ROS / OpenCV can represent.
SUPPORTED = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV",
             "OPENCV_FISHEYE", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE")


def _intrinsics(model: str, p: np.ndarray) -> tuple[np.ndarray, str, np.ndarray]:
    """(K in COLMAP pixels, ROS distortion model, OpenCV-order coefficients) of a camera of a
    model in ``SUPPORTED``."""
    single = model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "SIMPLE_RADIAL_FISHEYE",
                       "RADIAL_FISHEYE")
    fx, fy, cx, cy = (p[0], p[0], p[1], p[2]) if single else p[:4]
    extra = p[3:] if single else p[4:]
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    if model in ("SIMPLE_PINHOLE", "PINHOLE"):
        return K, "", np.zeros(0)
    if model in ("SIMPLE_RADIAL", "RADIAL", "OPENCV"):           # k1[, k2[, p1, p2]]
        return K, "plumb_bob", np.pad(extra, (0, 5 - extra.size))
    if model == "FULL_OPENCV":                                   # k1 k2 p1 p2 k3 k4 k5 k6
        if not np.any(extra[5:]):
            return K, "plumb_bob", extra[:5]
        return K, "rational_polynomial", extra
    return K, "equidistant", np.pad(extra, (0, 4 - extra.size))  # the theta polynomial


def _data_lines(path: Path) -> list[list[str]]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise CalibrationError(f"{path}: cannot read: {exc.strerror}") from None
    return [line.split() for line in lines if not line.lstrip().startswith("#")]


def _read_cameras_text(path: Path) -> dict[int, tuple[str, int, int, np.ndarray]]:
    cameras = {}
    for number, tokens in enumerate(_data_lines(path), start=1):
        if not tokens:
            continue
        try:
            camera_id, model, width, height = int(tokens[0]), tokens[1], int(tokens[2]), \
                int(tokens[3])
            params = np.array([float(v) for v in tokens[4:]])
        except (ValueError, IndexError):
            raise CalibrationError(f"{path}: line '{' '.join(tokens)}' is not CAMERA_ID MODEL "
                                   "WIDTH HEIGHT PARAMS...") from None
        cameras[camera_id] = (model, width, height, params)
    return cameras


def _read_images_text(path: Path) -> list[tuple[str, np.ndarray, np.ndarray, int]]:
    images = []
    rows = _data_lines(path)
    k = 0
    while k < len(rows):
        tokens = rows[k]
        if not tokens:
            k += 1
            continue
        try:
            q = np.array([float(v) for v in tokens[1:5]])
            t = np.array([float(v) for v in tokens[5:8]])
            camera_id = int(tokens[8])
            name = " ".join(tokens[9:])
        except (ValueError, IndexError):
            name = ""
        if not name or q.size != 4 or t.size != 3:
            raise CalibrationError(f"{path}: line '{' '.join(tokens)}' is not IMAGE_ID QW QX QY "
                                   "QZ TX TY TZ CAMERA_ID NAME")
        images.append((name, q, t, camera_id))
        k += 2                                   # the next line holds the image's 2D points
    return images


class _Binary:
    """Little-endian reads from a COLMAP .bin file that name the file when it ends early."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.data = path.read_bytes()
        except OSError as exc:
            raise CalibrationError(f"{path}: cannot read: {exc.strerror}") from None
        self.at = 0

    def skip(self, size: int) -> None:
        if self.at + size > len(self.data):
            raise CalibrationError(f"{self.path}: ends early (truncated or not a COLMAP model)")
        self.at += size

    def read(self, fmt: str) -> tuple:
        start = self.at
        self.skip(struct.calcsize("<" + fmt))
        return struct.unpack_from("<" + fmt, self.data, start)

    def name(self) -> str:
        end = self.data.find(b"\0", self.at)
        if end < 0:
            raise CalibrationError(f"{self.path}: ends early (truncated or not a COLMAP model)")
        text = self.data[self.at:end].decode("utf-8", errors="replace")
        self.at = end + 1
        return text


def _read_cameras_binary(path: Path) -> dict[int, tuple[str, int, int, np.ndarray]]:
    f = _Binary(path)
    cameras = {}
    for _ in range(f.read("Q")[0]):
        camera_id, model_id, width, height = f.read("iiQQ")
        if model_id not in _BY_ID:
            raise CalibrationError(f"{path}: camera {camera_id} has unknown model id {model_id}")
        model = _BY_ID[model_id]
        cameras[camera_id] = (model, width, height, np.array(f.read("d" * MODELS[model][1])))
    return cameras


def _read_images_binary(path: Path) -> list[tuple[str, np.ndarray, np.ndarray, int]]:
    f = _Binary(path)
    images = []
    for _ in range(f.read("Q")[0]):
        values = f.read("idddddddi")
        name = f.name()
        f.skip(24 * f.read("Q")[0])             # the 2D points: x, y (float64), point id
        images.append((name, np.array(values[1:5]), np.array(values[5:8]), values[8]))
    return images


def _model_files(paths: Sequence[Path]) -> tuple[Path, Path]:
    """cameras and images files of a model folder (binary preferred, as COLMAP) or given."""
    if len(paths) == 1 and Path(paths[0]).is_dir():
        folder = Path(paths[0])
        for ext in (".bin", ".txt"):
            cams, imgs = folder / f"cameras{ext}", folder / f"images{ext}"
            if cams.is_file() and imgs.is_file():
                return cams, imgs
        raise CalibrationError(f"{folder}: no cameras.bin + images.bin or cameras.txt + "
                               "images.txt (a COLMAP sparse model folder, e.g. sparse/0)")
    files = {Path(p).stem: Path(p) for p in paths}
    if set(files) != {"cameras", "images"} or len(paths) != 2:
        raise CalibrationError("give a COLMAP model folder, or its cameras and images files "
                               f"(got {', '.join(map(str, paths))})")
    return files["cameras"], files["images"]


def _camera_names(names: list[str]) -> list[str]:
    stems = [PurePosixPath(n).stem for n in names]
    if len(set(stems)) == len(stems):
        return stems
    folders = [PurePosixPath(n).parent.name for n in names]
    if all(folders) and len(set(folders)) == len(folders):
        return folders
    repeated = sorted({s for s in stems if stems.count(s) > 1})
    raise CalibrationError(
        f"the model's images do not name one camera each (repeated: {', '.join(repeated)}): "
        "a rig file holds one pose per camera, so give a model of one frame set, its images "
        "named <camera>.<ext> or <camera>/<frame>.<ext>")


def read_colmap(paths: Sequence[Path]) -> SourceRig:
    """Cameras of a COLMAP sparse model; reference frame: the model's world; no metric unit.

    Raises:
        CalibrationError: missing files, malformed lines or records, a camera model that
            cannot be represented, an image whose camera is missing, or images that do not
            name one camera each.
    """
    cams_path, imgs_path = _model_files(paths)
    binary = cams_path.suffix == ".bin"
    cameras = (_read_cameras_binary if binary else _read_cameras_text)(cams_path)
    images = (_read_images_binary if binary else _read_images_text)(imgs_path)
    if not images:
        raise CalibrationError(f"{imgs_path}: no images (no camera poses)")
    names = _camera_names([image[0] for image in images])
    poses, intrinsics = {}, {}
    for name, (file_name, q, t, camera_id) in zip(names, images):
        if camera_id not in cameras:
            raise CalibrationError(f"{imgs_path}: image {file_name} uses camera {camera_id}, "
                                   f"which {cams_path.name} does not have")
        model, width, height, params = cameras[camera_id]
        if model not in SUPPORTED:
            raise CalibrationError(
                f"{cams_path}: camera {camera_id}: COLMAP camera model {model} cannot be "
                "represented (ROS and threer_ros undistort OpenCV's pinhole and fisheye "
                f"models): reconstruct with one of {', '.join(SUPPORTED)}")
        if params.size != MODELS[model][1]:
            raise CalibrationError(f"{cams_path}: camera {camera_id}: {model} takes "
                                   f"{MODELS[model][1]} parameters, got {params.size}")
        if not np.all(np.isfinite(q)) or np.linalg.norm(q) < 1e-9 or not np.all(np.isfinite(t)):
            raise CalibrationError(f"{imgs_path}: image {file_name}: the pose is not finite or "
                                   "its quaternion is zero")
        K, ros_model, coeffs = _intrinsics(model, params)
        K[0, 2] -= 0.5                     # COLMAP's pixel centres are at +0.5
        K[1, 2] -= 0.5
        intrinsics[name] = checked_calibration(cams_path, name, K, width, height, ros_model,
                                               coeffs)
        rotation = quaternion_to_matrix(np.array([q[1], q[2], q[3], q[0]]))  # (w,x,y,z) -> ROS
        poses[name] = invert_pose(make_pose(rotation, t))
    return SourceRig(tuple(names), poses, intrinsics, "COLMAP world", metric=False)


def _colmap_camera(name: str, calib) -> tuple[str, list[float]]:
    kind, coeffs = export_distortion(name, calib)
    K = np.asarray(calib.K, np.float64)
    base = [K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5]
    if kind == "none":
        return "PINHOLE", base
    if kind == "fisheye":
        return "OPENCV_FISHEYE", base + list(coeffs)
    if coeffs.size == 4:
        return "OPENCV", base + list(coeffs)
    return "FULL_OPENCV", base + list(np.pad(coeffs, (0, 8 - coeffs.size)))


def write_colmap(rig: RigCalibration, out: Path, image_name: str = "{camera}.png") -> None:
    """Write ``rig`` as a COLMAP text model in the folder ``out`` (created): one camera and one
    image per rig camera, the rig frame as the world, metres as the unit, image names from the
    ``image_name`` template, an empty ``points3D.txt``.

    Raises:
        CalibrationError: a camera without intrinsics.
    """
    cameras = ordered_intrinsics(rig, "COLMAP")
    out.mkdir(parents=True, exist_ok=True)
    cam_lines = ["# Camera list with one line of data per camera:",
                 "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
                 f"# Number of cameras: {len(cameras)}"]
    img_lines = ["# Image list with two lines of data per image:",
                 "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
                 "#   POINTS2D[] as (X, Y, POINT3D_ID)",
                 f"# Number of images: {len(cameras)}, mean observations per image: 0"]
    for index, (name, calib) in enumerate(cameras, start=1):
        model, params = _colmap_camera(name, calib)
        cam_lines.append(" ".join([str(index), model, str(calib.width), str(calib.height)]
                                  + [repr(float(v)) for v in params]))
        world_to_cam = invert_pose(rig.cam_to_rig[name])
        qx, qy, qz, qw = matrix_to_quaternion(world_to_cam[:3, :3])
        values = [qw, qx, qy, qz, *world_to_cam[:3, 3]]
        img_lines.append(" ".join([str(index)] + [repr(float(v)) for v in values]
                                  + [str(index), image_name.replace("{camera}", name)]))
        img_lines.append("")
    (out / "cameras.txt").write_text("\n".join(cam_lines) + "\n")
    (out / "images.txt").write_text("\n".join(img_lines) + "\n")
    (out / "points3D.txt").write_text(
        "# 3D point list with one line of data per point:\n"
        "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)\n"
        "# Number of points: 0, mean track length: 0\n")
