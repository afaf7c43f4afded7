"""Turn decoded camera images into backend-ready :class:`Frame` objects (no ROS).

Each image is undistorted when its calibration has distortion (maps computed once per camera
and calibration) and given the intrinsics that match the undistorted image, at its original
size: the network backends make their own network images from it, as the official
``load_images`` does from the original files. :func:`resize_frames` shrinks a set to the
working width (the ``mvs`` backend and previews).
"""

from __future__ import annotations

import cv2
import numpy as np

from threer_ros.pipeline.types import CameraCalibration, Frame, FrameSet


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
    """Undistort images of one rig; caches undistortion maps per camera."""

    def __init__(self) -> None:
        self._maps: dict[str, tuple[bytes, tuple[np.ndarray, np.ndarray]]] = {}

    def prepare(self, camera: str, rgb: np.ndarray, stamp_ns: int,
                calibration: CameraCalibration | None) -> Frame:
        """Return the backend frame for ``rgb`` (H x W x 3 uint8) taken at ``stamp_ns``,
        undistorted, at its size.

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


def working_size(width: int, height: int, working_width: int) -> tuple[int, int]:
    """(width, height) of a ``width x height`` image shrunk to ``working_width`` (height keeps
    the aspect ratio, rounded); never enlarged; ``working_width <= 0`` keeps the size."""
    if working_width <= 0 or working_width >= width:
        return width, height
    return working_width, max(1, round(height * working_width / width))


def resize_frame(frame: Frame, working_width: int) -> Frame:
    """``frame`` shrunk to ``working_width`` (:func:`working_size`; area interpolation) with
    its calibration scaled to match."""
    height, width = frame.image.shape[:2]
    out_w, out_h = working_size(width, height, working_width)
    if (out_w, out_h) == (width, height):
        return frame
    image = cv2.resize(frame.image, (out_w, out_h), interpolation=cv2.INTER_AREA)
    calibration = None if frame.calibration is None else frame.calibration.scaled_to(out_w,
                                                                                     out_h)
    return Frame(frame.camera, image, frame.stamp_ns, calibration)


def resize_frames(frames: FrameSet, working_width: int) -> FrameSet:
    """Every frame of ``frames`` shrunk to ``working_width`` (:func:`resize_frame`)."""
    return FrameSet(tuple(resize_frame(f, working_width) for f in frames.frames),
                    frames.stamp_ns, frames.missing)
