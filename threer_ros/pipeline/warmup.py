"""A warm-up set: one reconstruction of synthetic frames with the live sets' shapes (no ROS).

``torch.compile`` compiles on the first call for each input shape, and a GPU loads its kernels,
sets up cuBLAS and grows its memory pool on the first set: tens of seconds with
``compile_network``, up to a few seconds without. A capture node pays this at configure instead
of on the operator's first set by reconstructing, once, a set of random images with every
camera's image size and calibration (:func:`warmup_frame_set`, :func:`warm_up`). Nothing of that
reconstruction leaves this module but its timings.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from threer_ros.pipeline.backends import BackendOptions
from threer_ros.pipeline.frames import FramePreparer
from threer_ros.pipeline.types import CameraCalibration, FrameSet, Reconstructor

#: Values of the node's ``warmup_on_configure``: ``auto`` warms up where it pays
#: (:func:`warmup_wanted`), ``always`` and ``never`` as they say.
WARMUP_MODES = ("auto", "always", "never")


class WarmupGeometryError(ValueError):
    """The rig's geometry (every camera's image size) is not known well enough for a warm-up
    set; the message says what is missing."""


def warmup_wanted(mode: str, options: BackendOptions) -> bool:
    """Whether to warm up in ``mode`` (:data:`WARMUP_MODES`) with ``options`` (its
    ``device`` resolved): ``auto`` does on CUDA and whenever something is compiled
    (``compile_network``, ``compile_alignment``), not for a CPU that runs eagerly (nothing to
    prepare there, and a CPU reconstruction can take minutes).

    Raises:
        ValueError: an unknown ``mode``.
    """
    if mode not in WARMUP_MODES:
        raise ValueError(f"warm-up mode {mode!r}: use {', '.join(WARMUP_MODES)}")
    if mode == "auto":
        return options.device.startswith("cuda") or options.compile_network \
            or options.compile_alignment
    return mode == "always"


def warmup_frame_set(cameras: Sequence[str],
                     calibrations: Mapping[str, CameraCalibration | None],
                     preparer: FramePreparer) -> FrameSet:
    """A set of random images shaped like the live sets: one frame per camera of ``cameras``
    at its calibrated image size, prepared by ``preparer`` as live images are (undistortion
    maps computed and cached there), with its calibration.

    Args:
        cameras: The rig's cameras, in the order of the live sets.
        calibrations: Each camera's calibration (intrinsics with the image size, and
            extrinsics where known), or None where nothing is known yet.
        preparer: The preparer of the live images.

    Raises:
        WarmupGeometryError: some camera has no known image size, or the cameras differ in
            size (the network backends take one image size per set).
    """
    unknown = [c for c in cameras if calibrations.get(c) is None]
    if unknown:
        raise WarmupGeometryError(f"no image size known for {', '.join(unknown)} (no "
                                  "intrinsics in the rig calibration, no CameraInfo yet)")
    sizes = {c: (calibrations[c].width, calibrations[c].height) for c in cameras}
    if len(set(sizes.values())) > 1:
        raise WarmupGeometryError("the cameras differ in image size: " + ", ".join(
            f"{c} {w}x{h}" for c, (w, h) in sizes.items()))
    rng = np.random.default_rng(0)
    frames = tuple(preparer.prepare(c, rng.integers(0, 256, (h, w, 3), dtype=np.uint8), 0,
                                    calibrations[c]) for c, (w, h) in sizes.items())
    return FrameSet(frames, stamp_ns=0)


@dataclass(frozen=True)
class Warmup:
    """What a warm-up did.

    Attributes:
        cameras: Cameras of the warm-up set.
        width: Their image width (pixels).
        height: Their image height (pixels).
        seconds: Wall time of the reconstruction (compiling included).
        error: ``"<exception type>: <message>"`` when it failed, else ``""``.
        timings_s: The reconstruction's seconds per stage (empty when it failed).
    """

    cameras: int
    width: int
    height: int
    seconds: float
    error: str = ""
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def shape(self) -> str:
        """``<cameras> x <width>x<height>``, as logged and reported."""
        return f"{self.cameras} x {self.width}x{self.height}"


def warm_up(reconstructor: Reconstructor, frames: FrameSet) -> Warmup:
    """Reconstruct ``frames`` (a :func:`warmup_frame_set`) once and throw the result away.

    Never raises for a failing reconstruction (an ``Exception``): the failure is returned in
    :attr:`Warmup.error`, for the caller to report; the live sets would meet it again.
    """
    height, width = frames.frames[0].image.shape[:2]
    started = time.perf_counter()
    try:
        timings = dict(reconstructor.reconstruct(frames).timings_s)
        error = ""
    except Exception as exc:  # noqa: BLE001 - reported by the caller; live sets will tell
        timings, error = {}, f"{type(exc).__name__}: {exc}"
    return Warmup(len(frames.frames), width, height, time.perf_counter() - started, error,
                  timings)
