"""Kalibr camera chains (``camchain-*.yaml``, ``camchain-imucam-*.yaml``) in and out.

Layout (ethz-asl/kalibr): one mapping per camera, ``cam0``, ``cam1``, ... with

* ``camera_model``: ``pinhole`` (``omni``, ``ds``, ``eucm`` cannot be represented here);
* ``intrinsics``: ``[fu, fv, pu, pv]`` in pixels (pixel centres at integer coordinates, as
  OpenCV and ROS);
* ``distortion_model``: ``radtan`` (k1, k2, r1, r2 = OpenCV's k1, k2, p1, p2; ROS
  ``plumb_bob``), ``equidistant`` (k1..k4 = OpenCV fisheye; ROS ``equidistant``), ``none``
  (``fov`` cannot be represented); ``distortion_coeffs``: the coefficients;
* ``resolution``: ``[width, height]``;
* ``T_cn_cnm1`` (every camera but cam0): 4x4 transform taking points of the previous camera's
  frame into this camera's frame, metres (``p_cn = T_cn_cnm1 @ p_cnm1``);
* ``rostopic``, ``cam_overlaps``, ``T_cam_imu``, ``timeshift_cam_imu``: the topic is kept to
  name cameras (``--names-from-topics``); the IMU fields are not used.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

from threer_ros.data.calibration import CalibrationError, RigCalibration, read_yaml
from threer_ros.data.calibration_formats.common import (SourceRig, checked_calibration,
                                                        export_distortion, ordered_intrinsics,
                                                        rotation_from)
from threer_ros.geometry.transforms import invert_pose, make_pose

_CAMERA_KEY = re.compile(r"^cam(\d+)$")
#: Kalibr distortion model -> (ROS model, number of coefficients).
_DISTORTION = {"radtan": ("plumb_bob", 4), "equidistant": ("equidistant", 4), "none": ("", 0)}
_IMU_KEYS = ("T_cam_imu", "T_imu_cam", "timeshift_cam_imu")


def _field(path: Path, camera: str, entry: dict, key: str):
    if key not in entry:
        raise CalibrationError(f"{path}: {camera} has no '{key}' (a Kalibr camchain gives "
                               "camera_model, intrinsics, distortion_model, distortion_coeffs, "
                               "resolution and, from cam1 on, T_cn_cnm1)")
    return entry[key]


def _numbers(path: Path, camera: str, key: str, value, count: int | None) -> np.ndarray:
    try:
        arr = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        arr = np.array([np.nan])
    if not np.all(np.isfinite(arr)) or (count is not None and arr.shape != (count,)):
        want = f"{count} numbers" if count is not None else "numbers"
        raise CalibrationError(f"{path}: {camera}: '{key}' must be {want}, got {value!r}")
    return arr


def _transform(path: Path, camera: str, value) -> np.ndarray:
    try:
        T = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        T = np.zeros(0)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)) \
            or not np.allclose(T[3], [0, 0, 0, 1], atol=1e-9):
        raise CalibrationError(f"{path}: {camera}: 'T_cn_cnm1' must be a 4x4 rigid transform "
                               "(four rows of four numbers, the last [0, 0, 0, 1])")
    return make_pose(rotation_from(path, f"{camera} T_cn_cnm1 rotation", T[:3, :3]), T[:3, 3])


def read_kalibr(paths: Sequence[Path]) -> SourceRig:
    """Cameras of one Kalibr camchain file; the reference frame is cam0's, metres.

    Raises:
        CalibrationError: not one readable YAML file, no ``cam0``, a gap in the numbering, a
            missing or malformed field, or a model that cannot be represented.
    """
    if len(paths) != 1:
        raise CalibrationError(f"a Kalibr calibration is one camchain YAML file, got "
                               f"{len(paths)} files")
    path = Path(paths[0])
    doc = read_yaml(path, "Kalibr camchain")
    if not isinstance(doc, dict):
        raise CalibrationError(f"{path}: expected a mapping cam0, cam1, ... (a Kalibr camchain)")
    indices = sorted(int(m.group(1)) for m in map(_CAMERA_KEY.match, map(str, doc)) if m)
    if not indices or indices != list(range(len(indices))):
        raise CalibrationError(f"{path}: expected cameras cam0, cam1, ... numbered without gaps, "
                               f"found {sorted(map(str, doc))}")
    cameras = tuple(f"cam{i}" for i in indices)
    poses, intrinsics, topics, notes = {}, {}, {}, []
    for camera in cameras:
        entry = doc[camera]
        if not isinstance(entry, dict):
            raise CalibrationError(f"{path}: {camera} must be a mapping of camera fields")
        model = _field(path, camera, entry, "camera_model")
        if model != "pinhole":
            raise CalibrationError(
                f"{path}: {camera} uses Kalibr camera model {model!r}; threer_ros undistorts "
                "pinhole cameras only (radtan, equidistant or no distortion): calibrate with "
                "pinhole-radtan or pinhole-equi")
        fu, fv, pu, pv = _numbers(path, camera, "intrinsics",
                                  _field(path, camera, entry, "intrinsics"), 4)
        dist_model = _field(path, camera, entry, "distortion_model")
        if dist_model not in _DISTORTION:
            raise CalibrationError(
                f"{path}: {camera}: distortion model {dist_model!r} cannot be represented (ROS "
                f"and threer_ros know radtan = plumb_bob and equidistant); use one of "
                f"{', '.join(_DISTORTION)}")
        ros_model, count = _DISTORTION[dist_model]
        coeffs = _numbers(path, camera, "distortion_coeffs",
                          entry.get("distortion_coeffs", []), count)
        resolution = _field(path, camera, entry, "resolution")
        if not (isinstance(resolution, list) and len(resolution) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in resolution)):
            raise CalibrationError(f"{path}: {camera}: 'resolution' must be [width, height] in "
                                   f"pixels, got {resolution!r}")
        K = np.array([[fu, 0.0, pu], [0.0, fv, pv], [0.0, 0.0, 1.0]])
        intrinsics[camera] = checked_calibration(path, camera, K, resolution[0], resolution[1],
                                                 ros_model, coeffs)
        if camera == "cam0":
            poses[camera] = np.eye(4)
        else:
            T_cn_cnm1 = _transform(path, camera, _field(path, camera, entry, "T_cn_cnm1"))
            poses[camera] = poses[f"cam{int(camera[3:]) - 1}"] @ invert_pose(T_cn_cnm1)
        if isinstance(entry.get("rostopic"), str):
            topics[camera] = entry["rostopic"]
        if any(key in entry for key in _IMU_KEYS) and not notes:
            notes.append("the camera-IMU fields (T_cam_imu, timeshift_cam_imu) are not used")
    return SourceRig(cameras, poses, intrinsics, "cam0", True, tuple(notes), topics)


def write_kalibr(rig: RigCalibration, out: Path, image_topic: str = "{camera}/image_raw") -> None:
    """Write ``rig`` as a Kalibr camchain: cam0, cam1, ... in the rig file's order, each with
    ``rostopic`` from the ``image_topic`` template and ``T_cn_cnm1`` from the poses.

    Raises:
        CalibrationError: a camera without intrinsics, or distortion Kalibr cannot hold
            (radtan has exactly four coefficients: k3 and higher must be zero).
    """
    doc = {}
    previous = None
    for index, (name, calib) in enumerate(ordered_intrinsics(rig, "Kalibr")):
        kind, coeffs = export_distortion(name, calib)
        if kind == "radtan" and coeffs.size > 4:
            raise CalibrationError(f"camera {name!r}: Kalibr's radtan has four coefficients "
                                   f"(k1, k2, p1, p2) but this camera has {coeffs.size} non-zero "
                                   "ones; it cannot be written as a Kalibr camchain")
        K = np.asarray(calib.K, np.float64)
        entry: dict = {}
        pose = rig.cam_to_rig[name]
        if previous is not None:
            entry["T_cn_cnm1"] = (invert_pose(pose) @ previous).tolist()
        entry.update({
            "camera_model": "pinhole",
            "intrinsics": [float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])],
            "distortion_model": {"none": "none", "radtan": "radtan",
                                 "fisheye": "equidistant"}[kind],
            "distortion_coeffs": [float(v) for v in coeffs],
            "resolution": [int(calib.width), int(calib.height)],
            "rostopic": "/" + image_topic.replace("{camera}", name).lstrip("/"),
        })
        doc[f"cam{index}"] = entry
        previous = pose
    out.write_text(yaml.safe_dump(doc, sort_keys=False, default_flow_style=None))
