"""The warm-up set at configure (pipeline layer, no ROS): shaped like the live sets, run once
through the backend, failures returned instead of raised, and when it is wanted."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from threer_ros.data.synthetic import SyntheticRig
from threer_ros.pipeline.backends import BackendOptions, make_reconstructor
from threer_ros.pipeline.frames import FramePreparer
from threer_ros.pipeline.types import FrameSet
from threer_ros.pipeline.warmup import (WarmupGeometryError, warm_up, warmup_frame_set,
                                        warmup_wanted)


@pytest.fixture(scope="module")
def rig() -> SyntheticRig:
    return SyntheticRig.render(seed=5, width=80, count=4)


def _calibrations(rig: SyntheticRig) -> dict:
    return {v.name: v.calibration for v in rig.views}


@pytest.mark.parametrize("mode, device, compiled, expected", [
    ("auto", "cpu", {}, False), ("auto", "cuda", {}, True), ("auto", "cuda:1", {}, True),
    ("auto", "cpu", {"compile_network": True}, True),
    ("auto", "cpu", {"compile_alignment": True}, True),
    ("always", "cpu", {}, True), ("never", "cuda", {"compile_network": True}, False)])
def test_warm_up_where_it_pays_unless_told(mode, device, compiled, expected):
    assert warmup_wanted(mode, BackendOptions(device=device, **compiled)) is expected


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="auto, always, never"):
        warmup_wanted("yes", BackendOptions(device="cpu"))


def test_the_warm_up_set_has_the_live_sets_cameras_shapes_and_calibration(rig):
    live = rig.frame_set(7)
    frames = warmup_frame_set(live.cameras, _calibrations(rig), FramePreparer())
    assert frames.cameras == live.cameras and frames.stamp_ns == 0 and frames.is_calibrated
    for warm, real in zip(frames.frames, live.frames):
        assert warm.image.shape == real.image.shape and warm.image.dtype == np.uint8
        np.testing.assert_array_equal(warm.calibration.K, real.calibration.K)
        np.testing.assert_array_equal(warm.calibration.cam_to_rig, real.calibration.cam_to_rig)
    assert frames.frames[0].image.std() > 50          # random content, not a blank image


def test_distorted_cameras_are_undistorted_by_the_live_preparer(rig):
    camera = rig.views[0].name
    calibrations = _calibrations(rig)
    calibrations[camera] = replace(calibrations[camera], distortion=np.array([0.1, 0, 0, 0]),
                                   distortion_model="plumb_bob")
    preparer = FramePreparer()
    frames = warmup_frame_set(tuple(calibrations), calibrations, preparer)
    assert frames.frames[0].calibration.distortion.size == 0    # as a live frame comes out
    assert camera in preparer._maps       # the maps are ready for the first live image


def test_unknown_or_mixed_image_sizes_give_no_warm_up_set(rig):
    calibrations = _calibrations(rig)
    cameras = tuple(calibrations)
    with pytest.raises(WarmupGeometryError, match=f"no image size known for {cameras[-1]}"):
        warmup_frame_set(cameras, {**calibrations, cameras[-1]: None}, FramePreparer())
    wider = replace(calibrations[cameras[1]], width=120)
    with pytest.raises(WarmupGeometryError, match="differ in image size"):
        warmup_frame_set(cameras, {**calibrations, cameras[1]: wider}, FramePreparer())


def test_a_tiny_network_is_run_with_the_live_shapes(rig, parity_dir):
    """Fast3R with random weights on the CPU: the warm-up feeds the network the tensors a live
    set of the same rig gives it, and returns its time and stages."""
    options = BackendOptions(device="cpu", checkpoint=str(parity_dir / "fast3r" / "checkpoint"),
                             network_size=64)
    reconstructor = make_reconstructor("fast3r", options)
    calls: list[list[tuple]] = []
    reconstructor.network.register_forward_pre_hook(lambda _, args: calls.append(
        [(tuple(v["img"].shape), v["img"].dtype, tuple(v["true_shape"].tolist()[0]))
         for v in args[0]]))
    live = rig.frame_set(7)
    done = warm_up(reconstructor, warmup_frame_set(live.cameras, _calibrations(rig),
                                                   FramePreparer()))
    assert done.error == "" and done.seconds > 0 and "network" in done.timings_s
    height, width = live.frames[0].image.shape[:2]
    assert (done.cameras, done.width, done.height) == (4, width, height)
    assert done.shape == f"4 x {width}x{height}"
    reconstructor.reconstruct(live)
    assert len(calls) == 2 and calls[0] == calls[1]
    assert calls[0][0][:2] == ((1, 3, 64, 32), torch.float32)  # portrait, cropped to 16s


def test_a_failing_backend_is_reported_not_raised(rig):
    class Broken:
        name = "broken"

        def reconstruct(self, frames: FrameSet):
            raise RuntimeError("CUDA out of memory")

    frames = warmup_frame_set(tuple(_calibrations(rig)), _calibrations(rig), FramePreparer())
    done = warm_up(Broken(), frames)
    assert done.error == "RuntimeError: CUDA out of memory" and done.timings_s == {}
