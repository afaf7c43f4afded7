"""Data passed between the ROS adapter and the reconstruction pipelines (no ROS here).

Conventions used everywhere in threer_ros:

* Images are H x W x 3 ``uint8`` RGB arrays, row 0 at the top.
* Camera frames are OpenCV/ROS optical frames: x right, y down, z forward.
* Poses are **camera-to-rig** 4 x 4 homogeneous matrices (``p_rig = T @ p_cam``), i.e. the
  transform that ``tf2`` publishes as ``rig -> <camera>_optical_frame``. Translations in metres
  when the rig is calibrated, in the network's arbitrary unit otherwise.
* Intrinsics ``K`` are 3 x 3 pinhole matrices in pixels of the image they accompany.
* Stamps are integer nanoseconds (ROS time).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np



@dataclass(frozen=True)
class CameraCalibration:
    """What is known about one camera of the rig.

    Attributes:
        K: 3x3 intrinsics in pixels of the image this calibration refers to.
        width: Image width in pixels that ``K`` refers to.
        height: Image height in pixels that ``K`` refers to.
        distortion: Distortion coefficients in OpenCV order (empty: none).
        distortion_model: ``plumb_bob``, ``rational_polynomial``, ``equidistant`` or ``""``.
        cam_to_rig: 4x4 camera-to-rig pose in metres, or ``None`` when the extrinsics are unknown.
    """

    K: np.ndarray
    width: int
    height: int
    distortion: np.ndarray = field(default_factory=lambda: np.zeros(0))
    distortion_model: str = ""
    cam_to_rig: np.ndarray | None = None

    def scaled_to(self, width: int, height: int) -> "CameraCalibration":
        """Return the calibration of the same camera for an image resized to ``width x height``."""
        sx, sy = width / self.width, height / self.height
        K = self.K.astype(np.float64).copy()
        K[0, :] *= sx
        K[1, :] *= sy
        # Pixel centres: x' + 0.5 = s (x + 0.5)  ->  cx' = s cx + 0.5 (s - 1)
        K[0, 2] += 0.5 * (sx - 1.0)
        K[1, 2] += 0.5 * (sy - 1.0)
        return CameraCalibration(K, width, height, self.distortion, self.distortion_model,
                                 self.cam_to_rig)


@dataclass(frozen=True)
class Frame:
    """One camera image of a synchronized set.

    Attributes:
        camera: Camera name from the configuration (e.g. ``cam_222200037``).
        image: H x W x 3 uint8 RGB.
        stamp_ns: Acquisition time in nanoseconds.
        calibration: Calibration of this camera at this image's resolution, if known.
        device_image: The same image already on the backend's GPU, uploaded when it arrived
            (a :class:`threer_ros.pipeline.upload.DeviceImage`), or ``None``; the network
            backends use it instead of copying ``image`` there.
    """

    camera: str
    image: np.ndarray
    stamp_ns: int
    calibration: CameraCalibration | None = None
    device_image: Any = None


@dataclass(frozen=True)
class FrameSet:
    """Frames of several cameras taken at (approximately) the same time.

    Attributes:
        frames: One frame per present camera, in the configured camera order.
        stamp_ns: Reference stamp of the set (the newest frame's stamp).
        missing: Names of configured cameras absent from this set.
    """

    frames: tuple[Frame, ...]
    stamp_ns: int
    missing: tuple[str, ...] = ()

    @property
    def cameras(self) -> tuple[str, ...]:
        return tuple(f.camera for f in self.frames)

    @property
    def is_calibrated(self) -> bool:
        """True when every frame has intrinsics and extrinsics."""
        return all(f.calibration is not None and f.calibration.cam_to_rig is not None
                   for f in self.frames)


@dataclass
class Reconstruction:
    """A fused point cloud and one pose per camera, all in the rig frame.

    Attributes:
        points: (P, 3) float32 positions in the rig frame (metres when calibrated).
        colors: (P, 3) uint8 RGB.
        confidence: (P,) float32 network confidence (>= 1 for the DUSt3R family; photometric
            consistency in [0, 1] for ``mvs``).
        cameras: Camera names, in the order of ``cam_to_rig`` and ``intrinsics``.
        cam_to_rig: (N, 4, 4) float64 camera-to-rig poses.
        intrinsics: (N, 3, 3) float64 intrinsics at the resolution the backend worked at.
        stamp_ns: Stamp of the frame set this was made from.
        poses_from_calibration: True when ``cam_to_rig`` are the calibrated poses (static TF).
        timings_s: Seconds per pipeline stage, in execution order.
        info: Free-form diagnostic values (e.g. calibration residuals), strings to floats.
    """

    points: np.ndarray
    colors: np.ndarray
    confidence: np.ndarray
    cameras: tuple[str, ...]
    cam_to_rig: np.ndarray
    intrinsics: np.ndarray
    stamp_ns: int
    poses_from_calibration: bool = False
    timings_s: dict[str, float] = field(default_factory=dict)
    info: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.points)
        if (self.points.shape, self.colors.shape, self.confidence.shape) != ((n, 3), (n, 3), (n,)):
            raise ValueError(
                f"inconsistent reconstruction arrays: points {self.points.shape}, "
                f"colors {self.colors.shape}, confidence {self.confidence.shape}")
        if self.cam_to_rig.shape != (len(self.cameras), 4, 4):
            raise ValueError(f"cam_to_rig has shape {self.cam_to_rig.shape} for "
                             f"{len(self.cameras)} cameras")


class Reconstructor(Protocol):
    """A backend: one synchronized set in, one reconstruction out."""

    name: str

    def reconstruct(self, frames: FrameSet) -> Reconstruction:
        """Reconstruct ``frames``; raises ``ValueError`` for unusable input."""
        ...

    def update_fusion(self, options: Any) -> None:
        """Filter the fused cloud as the node's ``options`` (``BackendOptions``: confidence,
        voxel size, outlier test) say, from the next set on (a live parameter change; called
        from another thread than ``reconstruct``)."""
        ...
