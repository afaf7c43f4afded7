"""Rotations, poses, fusion, metrics, PLY and rig calibration files."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from threer_ros.data.calibration import (CalibrationError, load_rig_calibration,
                                         save_rig_calibration)
from threer_ros.data.ply import read_ply, write_ply
from threer_ros.geometry.fusion import (FusionSettings, accuracy_completeness, fuse_points,
                                        remove_statistical_outliers, stratified_subset,
                                        voxel_downsample)
from threer_ros.geometry.transforms import (invert_pose, look_at, make_pose,
                                            matrix_to_quaternion, quaternion_to_matrix,
                                            transform_points)
from threer_ros.pipeline.types import CameraCalibration

unit = st.floats(-1, 1, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(q=st.tuples(unit, unit, unit, unit).filter(lambda q: np.linalg.norm(q) > 0.1))
def test_quaternion_round_trip_including_half_turns(q):
    q = np.asarray(q) / np.linalg.norm(q)
    R = quaternion_to_matrix(q)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.isclose(np.linalg.det(R), 1.0)
    back = matrix_to_quaternion(R)
    assert back[3] >= 0
    assert min(np.abs(back - q).max(), np.abs(back + q).max()) < 1e-9   # q and -q: one rotation


@settings(max_examples=100, deadline=None)
@given(q=st.tuples(unit, unit, unit, unit).filter(lambda q: np.linalg.norm(q) > 0.1))
def test_quaternions_agree_with_scipy_in_both_directions(q):
    # SciPy's Rotation uses the same (x, y, z, w) order and the active convention: an
    # inversion (a transposed matrix) in both of our conversions would pass a round trip only
    q = np.asarray(q) / np.linalg.norm(q)
    np.testing.assert_allclose(quaternion_to_matrix(q), Rotation.from_quat(q).as_matrix(),
                               atol=1e-12)
    R = Rotation.from_quat(q).as_matrix()
    theirs = Rotation.from_matrix(R).as_quat()
    ours = matrix_to_quaternion(R)
    assert min(np.abs(ours - theirs).max(), np.abs(ours + theirs).max()) < 1e-9


def test_quaternions_of_hand_computed_rotations():
    # 90 degrees about z: (0, 0, sin 45, cos 45) turns x into y
    q = np.array([0.0, 0.0, np.sqrt(0.5), np.sqrt(0.5)])
    np.testing.assert_allclose(quaternion_to_matrix(q) @ [1, 0, 0], [0, 1, 0], atol=1e-15)
    # REP-103 body -> optical frame, (-0.5, 0.5, -0.5, 0.5): the optical x, y, z axes are the
    # body's -y, -z, x (the columns of the rotation)
    optical = np.array([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]])
    np.testing.assert_allclose(quaternion_to_matrix([-0.5, 0.5, -0.5, 0.5]), optical, atol=1e-15)
    np.testing.assert_allclose(matrix_to_quaternion(optical), [-0.5, 0.5, -0.5, 0.5], atol=1e-15)


def test_half_turns_about_each_axis():
    for axis in np.eye(3):
        R = 2 * np.outer(axis, axis) - np.eye(3)          # 180 degrees about `axis`
        np.testing.assert_allclose(np.abs(matrix_to_quaternion(R)), [*axis, 0.0], atol=1e-12)


def test_look_at_is_an_optical_frame_looking_at_the_target_with_up_upwards():
    T = look_at(np.array([2.0, 0, 0]), np.zeros(3), np.array([0.0, 0, 1]))
    np.testing.assert_allclose(T[:3, 2], [-1, 0, 0])      # z forward, at the target
    np.testing.assert_allclose(T[:3, 1], [0, 0, -1])      # y down
    np.testing.assert_allclose(T[:3, 0], [0, 1, 0])       # x to the right: forward x up
    p = np.array([[0.1, 0.2, 0.3]])
    np.testing.assert_allclose(transform_points(invert_pose(T), transform_points(T, p)), p)


def test_voxel_downsampling_averages_per_voxel():
    points = torch.tensor([[0.1, 0.1, 0.1], [0.3, 0.3, 0.3], [1.5, 0.5, 0.5]])
    colors = torch.tensor([[0, 0, 0], [100, 200, 50], [9, 9, 9]], dtype=torch.uint8)
    p, c, f = (t.numpy() for t in voxel_downsample(points, colors, torch.tensor([1.0, 3, 5]),
                                                   voxel=1.0))
    order = np.argsort(p[:, 0])
    np.testing.assert_allclose(p[order], [[0.2, 0.2, 0.2], [1.5, 0.5, 0.5]], atol=1e-6)
    np.testing.assert_array_equal(c[order], [[50, 100, 25], [9, 9, 9]])
    np.testing.assert_allclose(f[order], [2, 5])


def _surface_with_outliers(seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """A voxel-averaged (2 mm) sphere of radius 0.1 m plus 1% of points 2-5 cm off it."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(60_000, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    radius = np.full(len(directions), 0.1)
    off = rng.random(len(directions)) < 0.01
    radius[off] += rng.uniform(0.02, 0.05, off.sum())
    points = torch.from_numpy(directions * radius[:, None])
    n = len(points)
    voxelised, _, _ = voxel_downsample(points, torch.zeros(n, 3, dtype=torch.uint8),
                                       torch.zeros(n), voxel=0.002)
    truth = np.abs(np.linalg.norm(voxelised.numpy(), axis=1) - 0.1) > 0.01
    return voxelised, truth


def test_the_outlier_test_on_the_voxel_grid_agrees_with_the_exact_search():
    points, off_surface = _surface_with_outliers()
    exact = remove_statistical_outliers(points, neighbours=16, std_ratio=2.0).numpy()
    grid = remove_statistical_outliers(points, neighbours=16, std_ratio=2.0, cell=0.004).numpy()
    assert off_surface.sum() > 100
    assert not grid[off_surface].any() and not exact[off_surface].any()   # every outlier goes
    assert grid[~off_surface].mean() > 0.97                             # the surface stays
    assert (grid == exact).mean() > 0.97


def test_accuracy_and_completeness_against_a_known_offset():
    rng = np.random.default_rng(0)
    plane = np.c_[rng.random((2000, 2)), np.zeros(2000)]
    shifted = plane + [0, 0, 0.002]
    m = accuracy_completeness(shifted, plane, threshold=0.005)
    assert abs(m.mean - 0.002) < 1e-4 and abs(m.median - 0.002) < 1e-4 and m.completeness == 1
    half = accuracy_completeness(shifted[plane[:, 0] < 0.5], plane, threshold=0.005)
    assert 0.4 < half.completeness < 0.6


def test_ply_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    points = rng.normal(size=(100, 3)).astype(np.float32)
    colors = rng.integers(0, 256, (100, 3), dtype=np.uint8)
    conf = rng.random(100).astype(np.float32)
    write_ply(tmp_path / "c.ply", points, colors, conf)
    assert (tmp_path / "c.ply").read_bytes().startswith(b"ply\nformat binary_little_endian 1.0\n")
    p, c, f = read_ply(tmp_path / "c.ply")
    np.testing.assert_array_equal(p, points)
    np.testing.assert_array_equal(c, colors)
    np.testing.assert_array_equal(f, conf)


def test_rig_calibration_file_round_trip_and_errors(tmp_path):
    pose = look_at(np.array([1.0, 0.1, 0.2]), np.zeros(3), np.array([0.0, 0, 1]))
    K = np.array([[600.0, 0, 160], [0, 600.0, 230], [0, 0, 1]])
    calib = CameraCalibration(K, 320, 467, np.array([0.01, 0, 0, 0, 0]), "plumb_bob", pose)
    path = tmp_path / "rig.yaml"
    save_rig_calibration(path, "rig", {"cam_a": calib})
    rig = load_rig_calibration(path)
    assert rig.frame_id == "rig"
    np.testing.assert_allclose(rig.cam_to_rig["cam_a"], pose, atol=1e-12)
    merged = rig.calibration_for("cam_a", None)
    np.testing.assert_allclose(merged.K, K)
    assert merged.distortion_model == "plumb_bob"
    assert rig.calibration_for("cam_b", None) is None
    path.write_text("cameras:\n  cam_a:\n    translation: [0, 0]\n    rotation: [0, 0, 0, 1]\n")
    with pytest.raises(CalibrationError, match="rig.yaml: camera 'cam_a': 'translation' must be 3"):
        load_rig_calibration(path)
    path.write_text("cameras:\n  cam_a:\n    translation: [0, 0, 0]\n    rotation: [0, 0, 0, 2]\n")
    with pytest.raises(CalibrationError, match="norm 2.0000"):
        load_rig_calibration(path)
    with pytest.raises(CalibrationError, match="cannot read"):
        load_rig_calibration(tmp_path / "missing.yaml")
    assert make_pose(np.eye(3), np.ones(3))[3, 3] == 1


@pytest.mark.parametrize("count,budget", [(10, 9), (1_000_003, 500_000), (7, 0), (100, 1)])
def test_stratified_subset_is_distinct_sorted_and_in_range(count, budget):
    idx = stratified_subset(count, budget, seed=3).numpy()
    assert len(idx) == budget and len(np.unique(idx)) == budget
    assert np.all(np.diff(idx) > 0) and (budget == 0 or (idx[0] >= 0 and idx[-1] < count))
    # one draw per stratum: every tenth of the range holds a tenth of the subset
    if budget >= 1000:
        per_tenth = np.bincount(idx * 10 // count, minlength=10)
        assert np.all(np.abs(per_tenth - budget / 10) <= 1)
    with pytest.raises(ValueError, match="budget"):
        stratified_subset(count, count, seed=0)


def test_fusion_keeps_the_point_budget_as_an_even_subset_of_the_fused_cloud():
    rng = np.random.default_rng(0)
    points = torch.from_numpy(rng.uniform(-1, 1, (5000, 3)))
    points[::50] = float("nan")                                 # 100 non-finite points go
    colors = torch.from_numpy(rng.integers(0, 256, (5000, 3), dtype=np.uint8))
    confidence = torch.from_numpy(np.linspace(0.0, 1.0, 5000))
    unlimited = FusionSettings(voxel_size=0.0, outlier_neighbours=0, confidence_threshold=0.5)
    every, _, _ = fuse_points(points, colors, confidence, unlimited)
    kept, kept_colors, kept_conf = fuse_points(points, colors, confidence,
                                               replace(unlimited, max_points=300))
    assert len(every) > 300 and len(kept) == len(kept_colors) == len(kept_conf) == 300
    assert np.isfinite(kept).all() and kept_conf.min() >= 0.5
    # a subset of the fused cloud, spread over it (stratified: every tenth holds ~a tenth)
    index = {tuple(p): i for i, p in enumerate(every)}
    positions = np.array([index[tuple(p)] for p in kept])
    assert np.all(np.abs(np.bincount(positions * 10 // len(every), minlength=10) - 30) <= 1)
    small, _, _ = fuse_points(points, colors, confidence, replace(unlimited, max_points=10**6))
    np.testing.assert_array_equal(small, every)                # under the budget: all of it
