"""Rig calibration files: camera-to-rig poses (and optional intrinsics) per camera, as YAML.

Format (``docs/calibration.md``)::

    frame_id: rig                 # the frame the poses are expressed in; the node publishes
                                  # them under its output_frame, which should be the same
    cameras:
      cam_222200037:
        translation: [x, y, z]    # camera centre in the rig frame, metres
        rotation: [qx, qy, qz, qw]  # orientation of the optical frame (x right, y down,
                                    # z forward) in the rig frame, unit quaternion
        # intrinsics: optional for the node (CameraInfo comes first), needed where no
        # CameraInfo exists (threer-ros reconstruct --calibration, calibration export):
        width: 2200
        height: 3208
        K: [fx, 0, cx, 0, fy, cy, 0, 0, 1]
        distortion_model: plumb_bob
        D: [k1, k2, p1, p2, k3]

Each entry is exactly what a ``rig -> <camera>_optical_frame`` TF would carry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import yaml

from threer_ros.geometry.transforms import matrix_to_quaternion, quaternion_to_matrix
from threer_ros.pipeline.types import CameraCalibration


#: Distortion models the pipeline undistorts (``threer_ros.pipeline.frames``), with the numbers
#: of coefficients each takes, in OpenCV order; ``""``: none.
DISTORTION_MODELS: dict[str, tuple[int, ...]] = {
    "plumb_bob": (0, 4, 5), "rational_polynomial": (0, 8), "equidistant": (0, 4), "": (0,)}


class CalibrationError(ValueError):
    """A rig calibration file that cannot be used (the message names the file and entry)."""


@dataclass(frozen=True)
class RigCalibration:
    """Camera-to-rig poses (metres) and optional intrinsics, keyed by camera name.

    ``cam_to_rig`` is a plain dict: the capture node fills it from ``/tf_static`` when the rig
    publishes its camera frames itself (``rig_calibration: tf``).
    """

    frame_id: str
    cam_to_rig: dict[str, np.ndarray]
    intrinsics: Mapping[str, CameraCalibration]

    def calibration_for(self, camera: str, from_camera_info: CameraCalibration | None
                        ) -> CameraCalibration | None:
        """Combine intrinsics (CameraInfo first, then this file) with this file's extrinsics."""
        intr = from_camera_info or self.intrinsics.get(camera)
        if intr is None:
            return None
        return CameraCalibration(intr.K, intr.width, intr.height, intr.distortion,
                                 intr.distortion_model, self.cam_to_rig.get(camera))


def _floats(path: Path, camera: str, key: str, value, length: int) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        arr = np.full(length + 1, np.nan)      # not numbers: reported below
    if arr.size != length or not np.all(np.isfinite(arr)):
        raise CalibrationError(f"{path}: camera {camera!r}: '{key}' must be {length} finite "
                               f"numbers, got {value!r}")
    return arr


def read_yaml(path: Path, what: str) -> object:
    """The YAML document in ``path`` (a ``what``, named in the error).

    Raises:
        CalibrationError: the file cannot be read, or is not YAML.
    """
    try:
        return yaml.safe_load(path.read_text())
    except OSError as exc:
        raise CalibrationError(f"{path}: cannot read {what}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise CalibrationError(f"{path}: not valid YAML: {exc}") from None


def load_rig_calibration(path: str | Path) -> RigCalibration:
    """Read a rig calibration YAML file (format in the module docstring)."""
    path = Path(path).expanduser()
    doc = read_yaml(path, "rig calibration")
    if not isinstance(doc, dict) or not isinstance(doc.get("cameras"), dict):
        raise CalibrationError(f"{path}: expected a mapping with a 'cameras' mapping")
    poses: dict[str, np.ndarray] = {}
    intrinsics: dict[str, CameraCalibration] = {}
    for camera, entry in doc["cameras"].items():
        camera = str(camera)
        if not isinstance(entry, dict) or "translation" not in entry or "rotation" not in entry:
            raise CalibrationError(f"{path}: camera {camera!r} needs 'translation' and 'rotation'")
        q = _floats(path, camera, "rotation", entry["rotation"], 4)
        if abs(np.linalg.norm(q) - 1.0) > 1e-3:
            raise CalibrationError(f"{path}: camera {camera!r}: rotation quaternion has norm "
                                   f"{np.linalg.norm(q):.4f}, expected 1")
        pose = np.eye(4)
        pose[:3, :3] = quaternion_to_matrix(q)
        pose[:3, 3] = _floats(path, camera, "translation", entry["translation"], 3)
        poses[camera] = pose
        if "K" in entry:
            intrinsics[camera] = _intrinsics(path, camera, entry)
    return RigCalibration(str(doc.get("frame_id", "rig")), poses, intrinsics)


def _intrinsics(path: Path, camera: str, entry: dict) -> CameraCalibration:
    size = []
    for key in ("width", "height"):
        value = entry.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise CalibrationError(f"{path}: camera {camera!r} has K but '{key}' is "
                                   f"{value!r}: give the image size (pixels) that K refers to")
        size.append(value)
    distortion = entry.get("D", [])
    if not isinstance(distortion, list):
        raise CalibrationError(f"{path}: camera {camera!r}: 'D' must be a list of numbers")
    return CameraCalibration(
        K=_floats(path, camera, "K", entry["K"], 9).reshape(3, 3), width=size[0],
        height=size[1], distortion=_floats(path, camera, "D", distortion, len(distortion)),
        distortion_model=str(entry.get("distortion_model", "")))


def write_rig_calibration(path: str | Path, rig: RigCalibration) -> None:
    """Write ``rig`` as a rig calibration file: every camera's pose, and its intrinsics where
    ``rig.intrinsics`` has them (format in the module docstring)."""
    cameras = {}
    for name, pose in rig.cam_to_rig.items():
        entry = {"translation": [float(v) for v in pose[:3, 3]],
                 "rotation": [float(v) for v in matrix_to_quaternion(pose[:3, :3])]}
        calib = rig.intrinsics.get(name)
        if calib is not None:
            entry.update({"width": int(calib.width), "height": int(calib.height),
                          "K": [float(v) for v in np.asarray(calib.K).ravel()],
                          "distortion_model": calib.distortion_model,
                          "D": [float(v) for v in np.asarray(calib.distortion).ravel()]})
        cameras[name] = entry
    Path(path).write_text(yaml.safe_dump({"frame_id": rig.frame_id, "cameras": cameras},
                                         sort_keys=False, default_flow_style=None))


def save_rig_calibration(path: str | Path, frame_id: str,
                         calibrations: Mapping[str, CameraCalibration]) -> None:
    """Write poses and intrinsics of ``calibrations`` (cameras with a pose) as a rig file."""
    for name, calib in calibrations.items():
        if calib.cam_to_rig is None:
            raise CalibrationError(f"camera {name!r} has no camera-to-rig pose to save")
    write_rig_calibration(path, RigCalibration(
        frame_id, {n: c.cam_to_rig for n, c in calibrations.items()}, dict(calibrations)))
