"""Frame preparation: undistortion, size checks; the working-width resize keeps intrinsics
consistent."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from threer_ros.pipeline.frames import CalibrationMismatch, FramePreparer, resize_frame
from threer_ros.pipeline.types import Frame
from threer_ros.pipeline.types import CameraCalibration


def _calibration(width=640, height=480, distortion=()) -> CameraCalibration:
    K = np.array([[500.0, 0, 319.5], [0, 500.0, 239.5], [0, 0, 1]])
    return CameraCalibration(K, width, height, np.asarray(distortion, float), "plumb_bob")


def test_resized_intrinsics_project_a_point_to_the_same_relative_pixel():
    calib = _calibration()
    original = FramePreparer().prepare("cam", np.zeros((480, 640, 3), np.uint8), 7, calib)
    assert original.image.shape == (480, 640, 3)          # networks get the original size
    frame = resize_frame(original, 320)
    assert frame.image.shape == (240, 320, 3) and frame.stamp_ns == 7
    point = np.array([0.05, -0.02, 1.0])
    full = calib.K @ point
    small = frame.calibration.K @ point
    # pixel centres: (u + 0.5) scales by the resize factor
    np.testing.assert_allclose((small[:2] / small[2] + 0.5), (full[:2] / full[2] + 0.5) / 2)


def test_images_are_never_enlarged():
    frame = resize_frame(Frame("cam", np.zeros((48, 64, 3), np.uint8), 0, None), 1000)
    assert frame.image.shape == (48, 64, 3) and frame.calibration is None


def test_an_image_that_disagrees_with_its_calibration_is_refused_with_both_sizes():
    with pytest.raises(CalibrationMismatch, match="320x240.*640x480"):
        FramePreparer().prepare("cam", np.zeros((240, 320, 3), np.uint8), 0, _calibration())


def test_undistortion_straightens_a_distorted_grid_line():
    calib = _calibration(distortion=(-0.3, 0.1, 0.0, 0.0, 0.0))
    # draw a straight horizontal line in the undistorted image, then distort it like the lens
    ys, xs = np.mgrid[0:480, 0:640].astype(np.float32)
    pts = np.stack([xs.ravel(), ys.ravel()], 1)[:, None, :]
    undist = cv2.undistortPoints(pts, calib.K, calib.distortion, P=calib.K).reshape(480, 640, 2)
    distorted = np.zeros((480, 640, 3), np.uint8)
    distorted[np.abs(undist[..., 1] - 100.0) < 1.0] = 255   # line y = 100 in ideal pixels
    frame = FramePreparer().prepare("cam", distorted, 0, calib)
    rows = np.nonzero(frame.image[:, 100:540, 0].max(axis=1) > 128)[0]
    assert rows.min() >= 97 and rows.max() <= 103      # straight again, at y = 100
    assert frame.calibration.distortion.size == 0
