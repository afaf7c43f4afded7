"""The synthetic rig: deterministic, exact ground truth, NeRSemble-like layout."""

from __future__ import annotations

import numpy as np
import pytest

from threer_ros.data.synthetic import SyntheticRig, backproject_depth, signed_distance


@pytest.fixture(scope="module")
def rig() -> SyntheticRig:
    return SyntheticRig.render(seed=5, width=64)


def test_rendering_is_deterministic_from_the_seed(rig):
    again = SyntheticRig.render(seed=5, width=64)
    other = SyntheticRig.render(seed=6, width=64)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(rig.views, again.views))
    assert not np.array_equal(rig.views[0].image, other.views[0].image)


def test_ground_truth_depth_lies_on_the_surface(rig):
    for view in rig.views:
        points = backproject_depth(view.depth, view.calibration)
        assert len(points) > 0.3 * view.depth.size          # the head fills the frame
        assert np.abs(signed_distance(points)).max() < 1e-4


def test_a_surface_point_projects_consistently_into_two_cameras(rig):
    a, b = rig.views[4], rig.views[5]
    hits = np.argwhere(np.isfinite(a.depth))
    v, u = hits[len(hits) // 2]                             # a pixel near the face's middle
    in_a = np.linalg.inv(a.calibration.K) @ [u, v, 1.0] * a.depth[v, u]
    point = a.calibration.cam_to_rig @ np.r_[in_a, 1.0]
    cam = np.linalg.inv(b.calibration.cam_to_rig) @ point
    pix = b.calibration.K @ cam[:3]
    ub, vb = int(round(pix[0] / pix[2])), int(round(pix[1] / pix[2]))
    assert abs(b.depth[vb, ub] - cam[2]) < 5e-3            # b sees the same surface there


def test_sixteen_cameras_in_two_rows_on_an_arc_looking_at_the_head(rig):
    centres = np.array([v.calibration.cam_to_rig[:3, 3] for v in rig.views])
    axes = np.array([v.calibration.cam_to_rig[:3, 2] for v in rig.views])
    assert len(rig.views) == 16
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 1.0)
    assert sorted(set(np.round(centres[:, 2], 9))) == pytest.approx(
        [-np.sin(np.radians(16)), np.sin(np.radians(16))])
    azimuth = np.degrees(np.arctan2(centres[:, 1], centres[:, 0]))
    assert azimuth.max() - azimuth.min() == pytest.approx(93.0)
    np.testing.assert_allclose(axes, -centres, atol=1e-9)  # every camera looks at the origin
    h, w = rig.views[0].image.shape[:2]
    assert h > w                                            # portrait, like the real rig
