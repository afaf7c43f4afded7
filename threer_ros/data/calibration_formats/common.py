"""What the readers of other tools' calibrations return, and the checks they share (no ROS)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from threer_ros.data.calibration import DISTORTION_MODELS, CalibrationError, RigCalibration
from threer_ros.pipeline.types import CameraCalibration


@dataclass(frozen=True)
class SourceRig:
    """Cameras as another tool's calibration gives them, before any choice of ours.

    Attributes:
        cameras: Camera names as the file gives them, in the file's order.
        cam_to_ref: Camera-to-reference 4x4 poses (optical frames) in the file's own
            reference frame (its first camera, or its world) and unit.
        intrinsics: Intrinsics in ROS conventions (pixel centres at integer coordinates,
            distortion in OpenCV order), for the cameras the file has them for.
        reference: What the reference frame is, in words (e.g. ``cam0``, ``COLMAP world``).
        metric: Whether the file's unit is the metre (COLMAP models have no unit).
        notes: Things the reader met that the user should know (dropped fields, ...).
        topics: Image topic per camera, where the file names one (Kalibr's ``rostopic``).
    """

    cameras: tuple[str, ...]
    cam_to_ref: dict[str, np.ndarray]
    intrinsics: dict[str, CameraCalibration]
    reference: str
    metric: bool = True
    notes: tuple[str, ...] = field(default_factory=tuple)
    topics: dict[str, str] = field(default_factory=dict)


def rotation_from(path: Path, what: str, value: np.ndarray, tolerance: float = 1e-4
                  ) -> np.ndarray:
    """A 3x3 rotation read from a file, re-orthonormalised; rejects matrices that are not one.

    Raises:
        CalibrationError: not 3x3, not finite, not orthonormal within ``tolerance`` or a
            reflection (determinant -1).
    """
    R = np.asarray(value, np.float64)
    if R.shape != (3, 3) or not np.all(np.isfinite(R)):
        raise CalibrationError(f"{path}: {what} must be a finite 3x3 rotation matrix, got shape "
                               f"{R.shape}")
    error = float(np.abs(R.T @ R - np.eye(3)).max())
    if error > tolerance or np.linalg.det(R) < 0:
        raise CalibrationError(
            f"{path}: {what} is not a rotation (|R^T R - I| = {error:.2g}, det = "
            f"{np.linalg.det(R):.4f}); the file is damaged or holds another matrix")
    U, _, Vt = np.linalg.svd(R)
    return U @ Vt


def checked_calibration(path: Path, camera: str, K: np.ndarray, width: int, height: int,
                        model: str, coefficients) -> CameraCalibration:
    """A :class:`CameraCalibration` after checking size, K and the coefficient count.

    Raises:
        CalibrationError: non-positive size or focal length, or a coefficient count the
            model does not take.
    """
    D = np.asarray(coefficients, np.float64).ravel()
    if width <= 0 or height <= 0:
        raise CalibrationError(f"{path}: camera {camera!r}: image size {width}x{height} is not "
                               "positive")
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise CalibrationError(f"{path}: camera {camera!r}: the focal lengths must be positive "
                               f"and finite (fx {K[0, 0]}, fy {K[1, 1]})")
    if D.size not in DISTORTION_MODELS[model] or not np.all(np.isfinite(D)):
        raise CalibrationError(f"{path}: camera {camera!r}: distortion model {model or 'none'} "
                               f"takes {' or '.join(map(str, DISTORTION_MODELS[model]))} "
                               f"finite coefficients, got {D.size}")
    return CameraCalibration(np.asarray(K, np.float64), int(width), int(height), D, model)


def export_distortion(camera: str, calib: CameraCalibration) -> tuple[str, np.ndarray]:
    """A rig camera's distortion as ``("none" | "radtan" | "fisheye", coefficients)``.

    ``radtan`` coefficients are OpenCV's (k1, k2, p1, p2[, k3[, k4, k5, k6]]) with trailing
    zeros dropped down to four; ``fisheye`` is OpenCV's fisheye (ROS ``equidistant``) k1..k4.
    """
    D = np.asarray(calib.distortion, np.float64).ravel()
    if not np.any(D):
        return "none", np.zeros(0)
    if calib.distortion_model == "equidistant":
        return "fisheye", np.pad(D, (0, 4 - D.size))
    if calib.distortion_model in ("plumb_bob", "rational_polynomial"):
        last = max(4, int(np.nonzero(D)[0][-1]) + 1)
        return "radtan", np.pad(D, (0, max(0, last - D.size)))[:last]
    raise CalibrationError(f"camera {camera!r}: distortion model {calib.distortion_model!r} "
                           "cannot be exported; use plumb_bob, rational_polynomial or "
                           "equidistant")


def ordered_intrinsics(rig: RigCalibration, target: str) -> list[tuple[str, CameraCalibration]]:
    """The rig's cameras in file order with their intrinsics, which every export needs.

    Raises:
        CalibrationError: a camera without intrinsics, naming it and the ``target`` format.
    """
    missing = [name for name in rig.cam_to_rig if name not in rig.intrinsics]
    if missing:
        raise CalibrationError(f"camera(s) {', '.join(missing)} have no intrinsics (K, width, "
                               f"height) in the rig file; a {target} calibration needs them")
    if not rig.cam_to_rig:
        raise CalibrationError("the rig file has no cameras to export")
    return [(name, rig.intrinsics[name]) for name in rig.cam_to_rig]
