"""Depth cleaning (free-space consistency between views): threer_ros.geometry.depth_cleaning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from threer_ros.geometry.cameras import depths_to_rig, project
from threer_ros.geometry.depth_cleaning import free_space_violations, view_depths
from threer_ros.geometry.transforms import look_at

H, W, F = 48, 64, 80.0
WALL = 2.0          # metres: the wall z = 2 that both cameras see


def _scene(views: int = 2):
    """Cameras 0.4 m apart on the x axis, all looking at (0, 0, 2); every pixel's point on
    the wall z = 2 (world frame, metres). Returns points, confidence (all 2), K, poses."""
    K = torch.tensor([[F, 0, (W - 1) / 2], [0, F, (H - 1) / 2], [0, 0, 1]],
                     dtype=torch.float64).expand(views, 3, 3).clone()
    poses = torch.tensor(np.stack([look_at(np.array([0.4 * i, 0.0, 0.0]),
                                           np.array([0.0, 0.0, WALL]), np.array([0, -1.0, 0]))
                                   for i in range(views)]))
    unit = depths_to_rig(torch.ones(views, H, W, dtype=torch.float64), K, poses)
    centre = poses[:, None, None, :3, 3]
    # the ray centre + s (unit - centre) meets z = WALL at s = (WALL - c_z) / (u_z - c_z)
    s = (WALL - centre[..., 2]) / (unit[..., 2] - centre[..., 2])
    points = centre + s[..., None] * (unit - centre)
    return points, torch.full((views, H, W), 2.0, dtype=torch.float64), K, poses


def _pixel_of(K, pose, point):
    uv, z = project(point[None], K, pose)
    return int(round(float(uv[0, 1]))), int(round(float(uv[0, 0]))), float(z[0])


def test_consistent_views_keep_every_point():
    points, conf, K, poses = _scene()
    # independent depth noise far below the margin: still consistent
    noisy = points * (1 + 1e-5 * torch.randn(points.shape[:-1], generator=torch.Generator()
                                           .manual_seed(0), dtype=torch.float64))[..., None]
    assert not free_space_violations(points, conf, K, poses).any()
    assert not free_space_violations(noisy, conf, K, poses).any()


def test_view_depths_are_the_depths_along_each_optical_axis():
    points, _, K, poses = _scene()
    depth = torch.ones(2, H, W, dtype=torch.float64) * torch.rand(2, 1, 1, dtype=torch.float64)
    torch.testing.assert_close(view_depths(depths_to_rig(depth, K, poses), poses), depth)
    assert torch.allclose(view_depths(points, poses)[0], torch.full((H, W), WALL,
                                                                    dtype=torch.float64))


FLOATER = (20, 25)           # (v, u) of view 1's flying pixel in the tests below


def _add_floater(points: torch.Tensor, conf: torch.Tensor, poses: torch.Tensor,
                 confidence: float) -> None:
    """Make view 1's pixel :data:`FLOATER` a flying pixel halfway along its ray to the wall,
    where view 0 sees the wall, with ``confidence``."""
    v1, u1 = FLOATER
    points[1, v1, u1] = (poses[1, :3, 3] + points[1, v1, u1]) / 2
    conf[1, v1, u1] = confidence


def test_a_floating_point_in_front_of_the_other_views_surface_is_removed():
    points, conf, K, poses = _scene()
    _add_floater(points, conf, poses, 1.0)
    v1, u1 = FLOATER
    v0, u0, z0 = _pixel_of(K[0], poses[0], points[1, v1, u1])
    assert 0 <= v0 < H and 0 <= u0 < W and z0 < 0.999 * WALL
    bad = free_space_violations(points, conf, K, poses)
    assert bad[1, v1, u1] and int(bad.sum()) == 1      # only the floater
    # float32 on the points' device gives the same answer
    bad32 = free_space_violations(points.float(), conf.float(), K.float(), poses.float())
    assert torch.equal(bad32, bad)


def test_a_more_confident_floater_is_kept_and_the_less_confident_surface_is_not_touched():
    points, conf, K, poses = _scene()
    _add_floater(points, conf, poses, 5.0)             # more confident than view 0's wall (2)
    assert not free_space_violations(points, conf, K, poses).any()


def test_points_behind_a_surface_and_outside_the_view_are_kept():
    points, conf, K, poses = _scene()
    conf[1] = 1.0
    # view 1's point pushed 10 % behind the wall: occluded by view 0's surface, not in front
    points[1, 20, 25] = poses[1, :3, 3] + 1.1 * (points[1, 20, 25] - poses[1, :3, 3])
    # a point of view 1 that view 0 cannot see (behind camera 0)
    points[1, 30, 30] = torch.tensor([0.2, 0.0, -1.0], dtype=torch.float64)
    # a tolerance-sized step in front of the wall is consistent too
    points[1, 10, 10] = poses[1, :3, 3] + 0.9995 * (points[1, 10, 10] - poses[1, :3, 3])
    assert not free_space_violations(points, conf, K, poses).any()


def test_missing_points_neither_flag_nor_get_flagged():
    points, conf, K, poses = _scene()
    _add_floater(points, conf, poses, 1.0)
    v1, u1 = FLOATER
    v0, u0, _ = _pixel_of(K[0], poses[0], points[1, v1, u1])
    points[0, v0, u0] = float("nan")                 # view 0 saw nothing there
    points[1, 5, 5] = float("nan")
    bad = free_space_violations(points, conf, K, poses)
    assert not bad.any()


def test_three_views_are_order_independent():
    points, conf, K, poses = _scene(3)
    gen = torch.Generator().manual_seed(1)
    # every 7th pixel of every view floats towards its camera, less confident than the wall
    # (consistent points of different confidences could go too: the depth they are compared
    # with is the nearest pixel's, which differs by more than the margin on a slanted wall)
    pulled = torch.rand(points.shape[:-1], generator=gen) < 1 / 7
    conf = torch.where(pulled, 1 + torch.rand(conf.shape, generator=gen, dtype=torch.float64),
                       conf)
    centre = poses[:, None, None, :3, 3]
    points = torch.where(pulled[..., None], centre + 0.7 * (points - centre), points)
    bad = free_space_violations(points, conf, K, poses)
    assert bad.any() and not (bad & ~pulled).any()   # only pulled points are ever flagged
    order = torch.tensor([2, 0, 1])
    again = free_space_violations(points[order], conf[order], K[order], poses[order])
    assert torch.equal(again, bad[order])


def test_bad_arguments_are_refused():
    points, conf, K, poses = _scene()
    with pytest.raises(ValueError, match="tolerance"):
        free_space_violations(points, conf, K, poses, tolerance=1.0)
    with pytest.raises(ValueError, match="shapes"):
        free_space_violations(points, conf[:1], K, poses)


def test_the_pipelines_clean_depth_setting_is_checked():
    from threer_ros.pipeline.pairwise import CLEAN_DEPTH, PairSettings

    assert PairSettings().clean_depth == "calibrated" and "always" in CLEAN_DEPTH
    with pytest.raises(ValueError, match="clean_depth"):
        PairSettings(clean_depth="on")
