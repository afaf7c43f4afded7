"""Turn decoded camera images into backend-ready :class:`Frame` objects (no ROS).

Each image is undistorted when its calibration has distortion (maps computed once per camera
and calibration), resized to the working width, and given the intrinsics that match the
resized, undistorted image.
"""

from __future__ import annotations

import cv2
import numpy as np

from threer_ros.pipeline.types import CameraCalibration, Frame


class CalibrationMismatch(ValueError):
    """An image whose size disagrees with its camera's calibration."""


def _undistort_maps(calib: CameraCalibration) -> tuple[np.ndarray, np.ndarray]:
    size = (calib.width, calib.height)
    K = np.asarray(calib.K, dtype=np.float64)
    D = np.asarray(calib.distortion, dtype=np.float64)
    if calib.distortion_model == "equidistant":
        return cv2.fisheye.initUndistortRectifyMap(K, D[:4], np.eye(3), K, size, cv2.CV_16SC2)
    return cv2.initUndistortRectifyMap(K, D, np.eye(3), K, size, cv2.CV_16SC2)


class FramePreparer:
    """Undistort and resize images of one rig; caches undistortion maps per camera.

    Args:
        working_width: Output width in pixels (height keeps the aspect ratio, rounded);
            0 keeps the input size. Images are never enlarged.
    """

    def __init__(self, working_width: int) -> None:
        self.working_width = working_width
        self._maps: dict[str, tuple[bytes, tuple[np.ndarray, np.ndarray]]] = {}

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """Working (width, height) for an input of ``width x height`` pixels."""
        if self.working_width <= 0 or self.working_width >= width:
            return width, height
        return self.working_width, max(1, round(height * self.working_width / width))

    def prepare(self, camera: str, rgb: np.ndarray, stamp_ns: int,
                calibration: CameraCalibration | None) -> Frame:
        """Return the backend frame for ``rgb`` (H x W x 3 uint8) taken at ``stamp_ns``.

        Raises:
            CalibrationMismatch: the image size differs from the calibrated size.
        """
        height, width = rgb.shape[:2]
        if calibration is not None:
            if (calibration.width, calibration.height) != (width, height):
                raise CalibrationMismatch(
                    f"camera {camera}: image is {width}x{height} but its calibration is for "
                    f"{calibration.width}x{calibration.height}; fix the CameraInfo / rig "
                    "calibration or the camera's resolution")
            if np.any(np.asarray(calibration.distortion) != 0):
                rgb = self._undistort(camera, rgb, calibration)
                calibration = CameraCalibration(calibration.K, width, height, np.zeros(0), "",
                                                calibration.cam_to_rig)
        out_w, out_h = self.output_size(width, height)
        if (out_w, out_h) != (width, height):
            rgb = cv2.resize(rgb, (out_w, out_h), interpolation=cv2.INTER_AREA)
            if calibration is not None:
                calibration = calibration.scaled_to(out_w, out_h)
        return Frame(camera, np.ascontiguousarray(rgb), stamp_ns, calibration)

    def _undistort(self, camera: str, rgb: np.ndarray, calib: CameraCalibration) -> np.ndarray:
        key = b"".join((np.asarray(calib.K, np.float64).tobytes(),
                        np.asarray(calib.distortion, np.float64).tobytes(),
                        f"{calib.width}x{calib.height}{calib.distortion_model}".encode()))
        cached = self._maps.get(camera)
        if cached is None or cached[0] != key:
            cached = (key, _undistort_maps(calib))
            self._maps[camera] = cached
        map1, map2 = cached[1]
        return cv2.remap(rgb, map1, map2, interpolation=cv2.INTER_LINEAR)
