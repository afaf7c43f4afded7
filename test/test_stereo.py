"""Multi-view stereo primitives: pyramid intrinsics, ZNCC over hypotheses, the two-way check."""

from __future__ import annotations

import numpy as np
import torch

from threer_ros.data.synthetic import SyntheticRig
from threer_ros.geometry.stereo import cross_check, half_resolution, zncc_cost


def _tensors(rig: SyntheticRig):
    depth = torch.from_numpy(np.nan_to_num(np.stack([v.depth for v in rig.views])))
    K = torch.tensor(np.stack([v.calibration.K for v in rig.views]))
    T = torch.tensor(np.stack([v.calibration.cam_to_rig for v in rig.views]))
    return depth.float(), K, T


def test_true_depth_maps_agree_both_ways_and_a_wrong_one_does_not():
    rig = SyntheticRig.render(seed=0, width=48, count=4)
    depth, K, T = _tensors(rig)
    score = torch.full_like(depth, 0.9)
    count, agreement, points = cross_check(depth, score, K, T, relative=0.01, pixels=1.0)
    seen = depth[1] > 0
    assert (count[1][seen] >= 1).float().mean() > 0.9
    assert torch.allclose(agreement[1][seen], torch.tensor(0.9))
    assert (count[1][~seen] == 0).all()                    # no depth, no agreement
    wrong = depth.clone()
    wrong[1] *= 1.05
    count, _, _ = cross_check(wrong, score, K, T, relative=0.01, pixels=1.0)
    assert (count[1][seen] == 0).float().mean() > 0.95
    # agreeing points average onto the surface
    truth = torch.tensor(rig.surface_points(), dtype=torch.float32)
    assert torch.cdist(points[1][seen][::50], truth).min(1).values.median() < 2e-3


def test_zncc_peaks_at_the_true_depth_and_half_resolution_keeps_the_geometry():
    rig = SyntheticRig.render(seed=0, width=64, count=16)
    depth, K, T = _tensors(rig)
    images = torch.stack([torch.from_numpy(v.image) for v in rig.views]).permute(0, 3, 1, 2)
    images = images.float() / 255
    grey = images.mean(1, keepdim=True)
    half, K_half = half_resolution(grey, K)
    assert half.shape[-1] == 32
    # a ray seen at (u, v) in the half image is seen at (2u + 0.5, 2v + 0.5) in the full one
    ray = torch.tensor([0.01, -0.02, 1.0], dtype=torch.float64)
    np.testing.assert_allclose((K_half[0] @ ray)[:2].numpy() * 2 + 0.5,
                               (K[0] @ ray)[:2].numpy(), atol=1e-9)
    true_inv = torch.where(depth[1] > 0, 1 / depth[1].clamp(min=1e-6), 1.0).reshape(1, -1)
    hypotheses = torch.cat([true_inv * f for f in (0.9, 0.95, 1.0, 1.05, 1.1)])
    head = depth[1] > 0
    for channels in (grey, images):
        cost = zncc_cost(channels, 1, [0, 2], K, T, hypotheses, 7, 2)
        assert (cost.argmax(0)[head] == 2).float().mean() > 0.8


def test_colour_zncc_ignores_exposure_and_white_balance_and_sees_chroma_texture():
    """One gain on every channel and per-channel offsets leave the score as it is; a pattern
    that only varies in chroma (constant grey level) is matched in colour, not in grey."""
    rig = SyntheticRig.render(seed=0, width=48, count=4)
    _, K, T = _tensors(rig)
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(3, 70, 48, generator=g)
    images = torch.stack([ref] * 4)
    changed = images.clone()
    changed[0] = 0.5 * ref + torch.tensor([0.1, 0.0, 0.2])[:, None, None]
    hypotheses = torch.full((1, 70 * 48), 1.0)
    # a source camera placed on the reference: every hypothesis maps a pixel onto itself
    T_same = T.clone()
    T_same[0] = T[1]
    plain = zncc_cost(images, 1, [0], K, T_same, hypotheses, 7, 1)
    assert torch.allclose(zncc_cost(changed, 1, [0], K, T_same, hypotheses, 7, 1), plain,
                          atol=1e-4)
    assert (plain > 0.999).all()
    chroma = torch.stack([torch.stack([ref[0], ref[1], 1.5 - ref[0] - ref[1]])] * 4)
    assert torch.allclose(chroma.mean(1), torch.tensor(0.5))             # no grey texture
    assert (zncc_cost(chroma, 1, [0], K, T_same, hypotheses, 7, 1) > 0.999).all()
    assert (zncc_cost(chroma.mean(1, keepdim=True), 1, [0], K, T_same, hypotheses, 7, 1
                      ).abs() < 0.01).all()
