"""The realistic-answer model of the oracles: each error is there, of the size asked, seeded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from threer_ros.data.synthetic import SyntheticRig
from threer_ros.geometry.registration import estimate_focal
from threer_ros.pipeline.network import prepare_network_images
from threer_ros.pipeline.oracle import (BACKDROP_CONFIDENCE, HEAD_CONFIDENCE, OracleFast3R,
                                        OraclePairNetwork)
from threer_ros.pipeline.realistic import Perturbation, realistic

SIZE = 64


@pytest.fixture(scope="module")
def frames():
    return SyntheticRig.render(seed=2, width=SIZE, count=4).frame_set(0)


def _views(frames, names):
    return [{"instance": [n]} for n in names]


def test_exact_answers_are_the_ground_truth(frames):
    oracle = OracleFast3R(frames, SIZE, unit=0.5)
    out = oracle(_views(frames, frames.cameras))
    K = prepare_network_images(frames, SIZE, "cpu").intrinsics
    local = torch.cat([o["pts3d_local"] for o in out])
    conf = torch.cat([o["conf"] for o in out])
    head = conf == HEAD_CONFIDENCE
    focal = estimate_focal(local, torch.from_numpy(K[:, :2, 2]), mask=head)
    np.testing.assert_allclose(focal.numpy(), K[:, 0, 0], rtol=2e-3)   # float32 answers
    assert set(conf.unique().tolist()) == {HEAD_CONFIDENCE, BACKDROP_CONFIDENCE}


def test_focal_error_is_the_implied_focal_of_every_answer_in_that_frame(frames):
    oracle = OracleFast3R(frames, SIZE, perturbation=Perturbation(focal_error=0.05,
                                                                  focal_spread=0.01, seed=1))
    out = oracle(_views(frames, frames.cameras))
    K = torch.from_numpy(prepare_network_images(frames, SIZE, "cpu").intrinsics)
    local = torch.cat([o["pts3d_local"] for o in out])
    focal = estimate_focal(local, K[:, :2, 2])
    factors = torch.tensor([oracle.focal_factor[n] for n in frames.cameras], dtype=torch.float64)
    torch.testing.assert_close(focal, K[:, 0, 0] * factors, rtol=2e-3, atol=0)
    assert float((factors - 1.05).abs().max()) < 0.04 and float(factors.std()) > 0.002
    # the global answer of view 0 is stretched by view 0's factor, depths untouched
    glob0 = out[0]["pts3d_in_other_view"]
    torch.testing.assert_close(glob0, out[0]["pts3d_local"])
    exact = OracleFast3R(frames, SIZE)(_views(frames, frames.cameras))
    torch.testing.assert_close(out[2]["pts3d_in_other_view"][..., 2],
                               exact[2]["pts3d_in_other_view"][..., 2])


def test_realistic_answers_have_each_structured_error(frames):
    p = realistic(seed=3, poor_view=1)
    oracle = OraclePairNetwork(frames, SIZE, perturbation=p, descriptors=True)
    exact = OraclePairNetwork(frames, SIZE)
    name = frames.cameras[0]
    conf, truth_conf = oracle.conf[name], exact.conf[name]
    head = truth_conf == HEAD_CONFIDENCE
    low = (conf < p.silhouette_confidence) & (conf != BACKDROP_CONFIDENCE)
    assert low.any() and (low & head).any() and (low & ~head).any()      # both band sides
    garbage = conf == p.garbage_confidence
    share = float(garbage.sum() / (~head & ~low).sum())
    assert abs(share - p.garbage) < 0.01
    depth_error = (oracle.world[name] - exact.world[name]).norm(dim=-1)
    assert float(depth_error[head & ~low].median()) < 0.01           # head: millimetres
    assert float(depth_error[garbage].median()) > 0.3                # garbage: nonsense
    # the poor view is worse and less confident
    poor = frames.cameras[1]
    poor_head = exact.conf[poor] == HEAD_CONFIDENCE
    assert float(oracle.conf[poor][poor_head].max()) < HEAD_CONFIDENCE
    poor_error = (oracle.world[poor] - exact.world[poor]).norm(dim=-1)
    assert float(poor_error[poor_head].median()) > 2 * float(depth_error[head].median())
    # a fifth of the descriptors encode another pixel
    moved = (oracle.described[name] - exact.world[name]).norm(dim=-1) > 0.01
    assert 0.15 < float(moved.float().mean()) < 0.25
    # the poor view's, poor_factor (3) times as many
    poor_moved = (oracle.described[poor] - exact.world[poor]).norm(dim=-1) > 0.01
    assert 0.5 < float(poor_moved.float().mean()) < 0.7


def test_answers_are_seeded_and_independent_of_the_camera_order(frames):
    a = OraclePairNetwork(frames, SIZE, perturbation=realistic(seed=5, poor_view=1))
    reordered = type(frames)(frames.frames[::-1], frames.stamp_ns)
    b = OraclePairNetwork(reordered, SIZE, perturbation=realistic(seed=5, poor_view=2))
    for name in frames.cameras:
        torch.testing.assert_close(a.world[name], b.world[name])
        assert a.focal_factor[name] == b.focal_factor[name]
    c = OraclePairNetwork(frames, SIZE, perturbation=realistic(seed=6))
    assert not torch.equal(a.world[frames.cameras[0]], c.world[frames.cameras[0]])


def test_pose_priors_are_followed_as_far_as_the_prior_weight(frames):
    """A wrong relative-pose prior moves the pair's second view ``prior_weight`` of the way."""
    from threer_ros.models.pow3r import relative_pose

    a, b = frames.cameras[:2]
    oracle = OraclePairNetwork(frames, SIZE, perturbation=Perturbation(prior_weight=0.5))
    poses = {f.camera: torch.from_numpy(f.calibration.cam_to_rig) for f in frames.frames}
    bumped = poses[b].clone()
    bumped[:3, 3] += torch.tensor([0.02, 0.0, 0.0], dtype=torch.float64)
    prior = relative_pose(poses[a][None], bumped[None])
    view1, view2 = {"instance": [a]}, {"instance": [b], "known_pose": prior}
    _, moved = oracle(view1, view2)
    _, free = oracle({"instance": [a]}, {"instance": [b]})
    shift = (moved["pts3d_in_other_view"] - free["pts3d_in_other_view"]) \
        * oracle.unit * oracle.pair_scale(a, b)
    # half of a 2 cm bump of the direction (baseline kept): about 1 cm
    assert 0.005 < float(shift.norm(dim=-1).median()) < 0.015
