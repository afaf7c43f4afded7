"""The synthetic rig: deterministic, exact ground truth, NeRSemble-like layout."""

from __future__ import annotations

import numpy as np
import pytest

from threer_ros.data.synthetic import (VARIANTS, Scene, SyntheticRig, backproject_depth,
                                      signed_distance)


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


def test_scene_variants_have_exact_ground_truth_on_subject_and_wall():
    scene = Scene(wall=0.3, offset=(0.02, 0.03, -0.01), scale=1.5, dark_cameras=(1,),
                  supersample=3)
    rig = SyntheticRig.render(seed=3, width=32, count=4, scene=scene)
    plain = SyntheticRig.render(seed=3, width=32, count=4, scene=Scene(scale=1.5, wall=0.3))
    for view in rig.views:
        assert view.subject.any() and (~view.subject).any()
        assert np.isfinite(view.depth).all()                  # the wall fills the background
        head = backproject_depth(np.where(view.subject, view.depth, np.nan), view.calibration)
        in_head_units = (head - np.array(scene.offset) * 1.5) / 1.5
        assert np.abs(signed_distance(in_head_units)).max() < 1e-4
        wall = backproject_depth(np.where(view.subject, np.nan, view.depth), view.calibration)
        np.testing.assert_allclose(wall[:, 0], -0.3 * 1.5, atol=1e-5)
    assert np.linalg.norm(rig.views[0].calibration.cam_to_rig[:3, 3]) == pytest.approx(1.5)
    assert rig.views[1].image.mean() < 0.5 * plain.views[1].image.mean()   # a dark camera


def test_named_variants_render_and_base_is_the_default_scene():
    assert set(VARIANTS) >= {"base", "smooth", "fine", "wall", "off_centre", "scale", "dark"}
    default = SyntheticRig.render(seed=5, width=32, count=2)
    base = SyntheticRig.render(seed=5, width=32, count=2, scene="base")
    assert all(np.array_equal(a.image, b.image) for a, b in zip(default.views, base.views))


def test_a_saved_rig_loads_as_it_was_rendered(tmp_path):
    scene = Scene(wall=0.3, offset=(0.02, 0.0, 0.0), dark_cameras=(1,))
    rig = SyntheticRig.render(seed=4, width=32, count=3, scene=scene)
    path = tmp_path / "rig.npz"
    rig.save(path)
    loaded = SyntheticRig.load(path)
    assert (loaded.seed, loaded.scene) == (4, scene)
    for a, b in zip(rig.views, loaded.views, strict=True):
        assert a.name == b.name
        for x, y in ((a.image, b.image), (a.depth, b.depth), (a.subject, b.subject),
                     (a.calibration.K, b.calibration.K),
                     (a.calibration.cam_to_rig, b.calibration.cam_to_rig)):
            np.testing.assert_array_equal(x, y)
        assert (b.calibration.width, b.calibration.height) == (32, a.image.shape[0])
    (tmp_path / "other.npz").write_bytes(b"not a rig")
    with pytest.raises(ValueError, match="not a synthetic rig.*render it again"):
        SyntheticRig.load(tmp_path / "other.npz")
