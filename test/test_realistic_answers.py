"""The network backends with answers that err like real networks (threer_ros.pipeline.realistic):
a 5 % focal error must cost at most 20 % of the accuracy and completeness reached with exact
focal lengths and the same other errors, in the calibrated fast and full modes; Pow3R's full
alignment must see a camera moved by 1 cm or 1 degree.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from threer_ros.data.synthetic import SyntheticRig
from threer_ros.pipeline.backends import BackendOptions
from threer_ros.pipeline.network import prepare_network_images
from threer_ros.pipeline.realistic import realistic
from threer_ros.pipeline.types import FrameSet
from threer_ros.quality import oracle_backend, score

SIZE = 96
OPTIONS = BackendOptions(device="cpu", network_size=SIZE, alignment_iterations=100)


@pytest.fixture(scope="module")
def rig() -> SyntheticRig:
    return SyntheticRig.render(seed=1, width=2 * SIZE * 2200 // 3208, count=8)


@pytest.fixture(scope="module")
def truth(rig):
    return rig.surface_points()


def _quality(rig, truth, backend: str, alignment: str, focal_error: float):
    frames = rig.frame_set(0)
    perturbation = realistic(1, focal_error=focal_error, focal_spread=0.01 if focal_error else 0)
    recon = oracle_backend(backend, frames, replace(OPTIONS, alignment=alignment),
                           perturbation).reconstruct(frames)
    images = prepare_network_images(frames, SIZE, "cpu")
    return score(recon, images.intrinsics, images.cam_to_rig, truth, focal_error, backend,
                 alignment)


@pytest.mark.parametrize("alignment", ["fast", "full"])
@pytest.mark.parametrize("backend", ["fast3r", "mast3r", "pow3r"])
def test_a_five_percent_focal_error_costs_at_most_a_fifth(rig, truth, backend, alignment):
    exact = _quality(rig, truth, backend, alignment, 0.0)
    wrong = _quality(rig, truth, backend, alignment, 0.05)
    assert exact.completeness_5mm > 0.9 and exact.median < 0.003, exact
    assert wrong.median <= 1.2 * exact.median, (exact, wrong)
    assert wrong.completeness_5mm >= exact.completeness_5mm / 1.2, (exact, wrong)


def _moved(frames: FrameSet, camera: int, shift_m: float = 0.0, turn_deg: float = 0.0
           ) -> FrameSet:
    """``frames`` with camera ``camera``'s calibrated pose moved sideways by ``shift_m`` and
    turned by ``turn_deg`` about its y axis (the camera moved; the calibration did not)."""
    from scipy.spatial.transform import Rotation

    out = list(frames.frames)
    calib = out[camera].calibration
    pose = calib.cam_to_rig.copy()
    pose[:3, 3] += shift_m * pose[:3, 0]
    pose[:3, :3] = pose[:3, :3] @ Rotation.from_euler("y", turn_deg, degrees=True).as_matrix()
    out[camera] = replace(out[camera], calibration=replace(calib, cam_to_rig=pose))
    return FrameSet(tuple(out), frames.stamp_ns)


@pytest.mark.parametrize("move", [{"shift_m": 0.01}, {"turn_deg": 1.0}], ids=["1cm", "1deg"])
def test_pow3r_full_alignment_sees_a_moved_camera(rig, move):
    """The network sees the true rig; the calibration it is checked against has camera 3
    where it used to be. Its disagreement must stand out of the others'."""
    true_frames = rig.frame_set(0)
    options = replace(OPTIONS, alignment="full")
    perturbation = realistic(1)

    def disagreement(frames):
        backend = oracle_backend("pow3r", true_frames, options, perturbation)
        return backend.reconstruct(frames).info

    still = disagreement(true_frames)
    moved = disagreement(_moved(true_frames, 3, **move))
    if "shift_m" in move:
        assert moved["pose_centre_max_m"] > 0.006 > 2 * still["pose_centre_max_m"], (still, moved)
    else:
        assert moved["pose_rotation_max_deg"] > 0.6 > 2 * still["pose_rotation_max_deg"], \
            (still, moved)
