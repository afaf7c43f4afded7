"""MASt3R's sparse alignment as published: four-way matching, the kinematic chain, the
fallback of pairs without usable matches, and the recovery of poses and focal lengths from
imperfect answers of a ground-truth pair network on the synthetic rig."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.nn.functional import normalize

from threer_ros.data.synthetic import SyntheticRig
from threer_ros.geometry.fusion import FusionSettings
from threer_ros.geometry.kinematic_chain import kinematic_chain
from threer_ros.geometry.matching import (Correspondences, fast_reciprocal_matches,
                                          four_way_matches, reciprocal_matches_brute_force)
from threer_ros.geometry.registration import align_to_reference, pose_disagreement
from threer_ros.geometry.sparse_alignment import (Gamma, SparseSettings, gamma_loss,
                                                  scaled_subsample, sparse_global_alignment)
from threer_ros.pipeline.network import NetworkSettings, prepare_network_images
from threer_ros.pipeline.oracle import HEAD_CONFIDENCE, OraclePairNetwork, Perturbation
from threer_ros.pipeline.pairwise import MASt3RReconstructor, PairSettings, pair_graph
from threer_ros.pipeline.realistic import realistic
from threer_ros.pipeline.types import FrameSet

SIZE = 96
#: The realistic answers' depth errors and wrong descriptors, without their focal errors,
#: confident garbage, silhouettes and poor view.
ACCURATE = Perturbation(noise=0.002, outliers=0.002, depth_warp=0.002, descriptor_noise=0.001,
                        descriptor_outliers=0.1, seed=3)
FAST = SparseSettings(coarse_iterations=100, fine_iterations=100)


def _network(frames: FrameSet, perturbation: Perturbation, size: int = SIZE
             ) -> OraclePairNetwork:
    """The ground-truth pair network with MASt3R's descriptors."""
    return OraclePairNetwork(frames, size, unit=0.41, perturbation=perturbation,
                             descriptors=True)


@pytest.fixture(scope="module")
def rig() -> SyntheticRig:
    return SyntheticRig.render(seed=4, width=SIZE, count=8)


def _uncalibrated(frames: FrameSet) -> FrameSet:
    return FrameSet(tuple(replace(f, calibration=replace(f.calibration, cam_to_rig=None))
                          for f in frames.frames), frames.stamp_ns)


def _reconstruct(rig: SyntheticRig, calibrated: bool, perturbation: Perturbation,
                 sparse: SparseSettings = SparseSettings(), size: int = SIZE):
    frames = rig.frame_set(7)
    settings = NetworkSettings(image_size=size, alignment="full", use_calibration=calibrated,
                               fusion=FusionSettings(HEAD_CONFIDENCE - 2, 0.002))
    network = _network(frames, perturbation, size)
    reconstructor = MASt3RReconstructor(network, settings, PairSettings(
        graph="knn", neighbours=3, sparse=sparse))
    return reconstructor.reconstruct(frames if calibrated else _uncalibrated(frames))


# --- four-way matching ------------------------------------------------------------------
def _random_pairs(seed: int, B: int = 2, H: int = 6, W: int = 7, D: int = 3):
    generator = torch.Generator().manual_seed(seed)
    descriptors = [normalize(torch.randn(B, H, W, D, generator=generator), dim=-1)
                   for _ in range(4)]
    confidences = [1 + torch.rand(B, H, W, generator=generator) for _ in range(4)]
    return descriptors, confidences


def _as_dict(found: Correspondences, pair: int) -> dict[tuple[int, int], float]:
    mine = found.pair == pair
    return dict(zip(zip(found.pixel1[mine].tolist(), found.pixel2[mine].tolist()),
                    found.weight[mine].tolist()))


@pytest.mark.parametrize("seed", range(3))
def test_four_way_matches_are_the_mutual_neighbours_of_both_decodings(seed: int) -> None:
    """Seeds on every pixel: the union of the brute-force mutual nearest neighbours of the
    (a, b) and (b, a) decodings, each match with the confidence of the first decoding that
    has it."""
    (a, b, b_swapped, a_swapped), confs = _random_pairs(seed)
    found = four_way_matches(a, b, b_swapped, a_swapped, *confs, subsample=1, max_iterations=1)
    decodings = ((a, b, confs[0], confs[1]), (a_swapped, b_swapped, confs[3], confs[2]))
    for pair in range(len(a)):
        expected: dict[tuple[int, int], float] = {}
        for da, db, ca, cb in decodings:
            i, j = reciprocal_matches_brute_force(da[pair].reshape(-1, 3),
                                                  db[pair].reshape(-1, 3))
            for p, q in zip(i.tolist(), j.tolist()):
                expected.setdefault((p, q), float((ca[pair].flatten()[p]
                                                   * cb[pair].flatten()[q]).sqrt()))
        got = _as_dict(found, pair)
        assert got.keys() == expected.keys()
        assert np.allclose([got[k] for k in expected], list(expected.values()))


def test_four_way_matches_seed_both_images_of_both_decodings() -> None:
    """On a seed grid, the four searches find more than the search from image a's seeds in
    one decoding, the same whichever decoding is called first, and every match is a mutual
    nearest neighbour of one decoding."""
    (a, b, b_swapped, a_swapped), confs = _random_pairs(5, B=1, H=20, W=20)
    found = _as_dict(four_way_matches(a, b, b_swapped, a_swapped, *confs, subsample=4), 0)
    swapped = _as_dict(four_way_matches(a_swapped, b_swapped, b, a, confs[3], confs[2],
                                        confs[1], confs[0], subsample=4), 0)
    assert found.keys() == swapped.keys()
    both = set()
    for da, db in ((a, b), (a_swapped, b_swapped)):
        i, j = reciprocal_matches_brute_force(da[0].reshape(-1, 3), db[0].reshape(-1, 3))
        both |= set(zip(i.tolist(), j.tolist()))
    one = fast_reciprocal_matches(a[0], b[0], subsample=4, max_iterations=10)
    one = set(zip((one.pixels1[:, 1] * 20 + one.pixels1[:, 0]).tolist(),
                  (one.pixels2[:, 1] * 20 + one.pixels2[:, 0]).tolist()))
    assert one < found.keys() <= both


# --- kinematic chain --------------------------------------------------------------------
def _two_triangles() -> np.ndarray:
    """Views 0-2 and 3-5 matched strongly among themselves, weakly across."""
    scores = np.zeros((6, 6))
    for i, j, s in [(0, 1, 90), (1, 2, 80), (0, 2, 70), (3, 4, 90), (4, 5, 85), (3, 5, 60),
                    (2, 3, 10), (1, 4, 5)]:
        scores[i, j] = scores[j, i] = s
    return scores


def _check_chain(chain, n: int) -> None:
    placed = {chain.root}
    for parent, child in chain.edges:
        assert parent in placed and child not in placed
        placed.add(child)
    assert placed == set(range(n)) and len(chain.edges) == n - 1


def test_kinematic_chain_mst_keeps_the_best_pairs_rooted_at_the_centre() -> None:
    chain = kinematic_chain(_two_triangles(), np.full(6, 100), "mst")
    _check_chain(chain, 6)
    assert sorted(tuple(sorted(e)) for e in chain.edges) == [(0, 1), (1, 2), (2, 3), (3, 4),
                                                              (4, 5)]
    assert chain.root == 2                   # the middle of the path 0-1-2-3-4-5
    assert chain.levels() == [([2, 2], [1, 3]), ([1, 3], [0, 4]), ([4], [5])]
    with pytest.raises(ValueError, match="does not reach"):
        kinematic_chain(np.diag(np.ones(3)), np.full(3, 100), "mst")


def test_kinematic_chain_hclust_links_clusters_through_their_best_views() -> None:
    chain = kinematic_chain(_two_triangles(), np.full(6, 100))
    _check_chain(chain, 6)
    edges = {tuple(sorted(e)) for e in chain.edges}
    across = [e for e in edges if (e[0] < 3) != (e[1] < 3)]
    assert len(across) == 1                   # each triangle is a subtree
    # a representative has the largest summed normalised score of its cluster
    assert across == [(1, 4)]
    with pytest.raises(ValueError, match="unknown kinematic"):
        kinematic_chain(_two_triangles(), np.full(6, 100), "star")


# --- anchors ------------------------------------------------------------------------------
def test_anchor_blocks_cover_the_official_fraction_of_the_image_with_known_focals() -> None:
    """8 px at 512 px (official); with known focal lengths the same fraction of smaller
    images, a power of two; without them the official 8 px; an explicit size wins."""
    assert [scaled_subsample(h, w) for h, w in ((64, 96), (80, 128), (160, 256), (384, 512))] \
        == [2, 2, 4, 8]
    assert SparseSettings().block(80, 128, True) == 2
    assert SparseSettings().block(80, 128, False) == 8
    assert SparseSettings(subsample=4).block(80, 128, True) == 4


# --- losses and fallback ----------------------------------------------------------------
def test_gamma_loss_has_unit_slope_at_zero() -> None:
    d = torch.tensor([0.0, 1e-4, 1.0, 10.0], dtype=torch.float64)
    for gamma in (0.5, 1.1, 1.5):
        loss = gamma_loss(d, Gamma.of(gamma))
        assert abs(loss[0]) < 1e-6 and abs(loss[1] / 1e-4 - 1) < 1e-2
    torch.testing.assert_close(gamma_loss(d, Gamma.of(1.0)), d, check_dtype=False)
    assert gamma_loss(d, Gamma.of(0.5))[3] < 10 < gamma_loss(d, Gamma.of(1.5))[3]


def test_pairs_without_matches_are_held_by_the_fallback(rig) -> None:
    """A view whose pairs have no usable matches is placed by its pairs' own pointmaps at
    weight 0.01 (close to its true pose); without the fallback term it is lost."""
    frames = rig.frame_set(7)
    network = _network(frames, Perturbation())
    reconstructor = MASt3RReconstructor(network, NetworkSettings(image_size=SIZE),
                                        PairSettings(graph="knn", neighbours=3))
    images = prepare_network_images(frames, SIZE, "cpu")
    edges = pair_graph("knn", 8, 3)
    pred, descriptors = reconstructor._run_pairs(images, edges)
    matches = reconstructor._match(pred, descriptors, False, reconstructor.pairs.sparse)
    lonely = 7
    # matches of view 7 exist but none is more confident than the threshold
    weak = (pred.first[matches.pair] == lonely) | (pred.second[matches.pair] == lonely)
    matches = replace(matches, weight=torch.where(weak, 1.2, matches.weight))
    reference = images.cam_to_rig
    errors = {}
    for weight in (0.01, 0.0):
        settings = replace(FAST, matching_confidence=1.3, fallback_weight=weight)
        with torch.enable_grad():
            views, _ = sparse_global_alignment(pred, matches, 8, settings)
        estimate = views.cam_to_world.numpy()
        to_rig, _ = align_to_reference(estimate[:lonely], reference[:lonely])
        errors[weight] = pose_disagreement(to_rig.apply_to_poses(estimate), reference)
    assert errors[0.01].rotation_deg[lonely] < 2.0, errors[0.01]
    assert errors[0.0].rotation_deg[lonely] > 10.0, errors[0.0]


# --- recovery -----------------------------------------------------------------------------
def _pose_errors(recon, rig):
    reference = np.stack([v.calibration.cam_to_rig for v in rig.views])
    extent = np.linalg.norm(reference[:, None, :3, 3] - reference[None, :, :3, 3],
                            axis=-1).max()
    if recon.poses_from_calibration:        # the calibration check's residuals
        return recon.info["pose_rotation_max_deg"], recon.info["pose_centre_max_m"] / extent
    _, errors = align_to_reference(recon.cam_to_rig, reference)
    return errors.rotation_deg.max(), errors.centre_error.max() / extent


def test_mast3r_full_alignment_recovers_poses_and_focals(rig) -> None:
    """Realistic depth errors and 10 % wrong descriptors, no calibration, the official
    schedule: poses within 1 degree and 1 % of the rig's size, focal lengths within 2 %."""
    recon = _reconstruct(rig, False, ACCURATE)
    rotation, centre = _pose_errors(recon, rig)
    assert rotation < 1.0 and centre < 0.01, (rotation, centre)
    true_K = prepare_network_images(rig.frame_set(7), SIZE, "cpu").intrinsics
    focal_error = recon.intrinsics[:, 0, 0] / true_K[:, 0, 0] - 1
    assert np.abs(focal_error).max() < 0.02, focal_error
    assert recon.info["matches"] > 500 and not recon.poses_from_calibration


def _target_errors(recon, rig: SyntheticRig, size: int = SIZE
                   ) -> tuple[float, float, np.ndarray]:
    """Rotation (degrees) and centre (fraction of the rig) maxima, and every view's relative
    focal error (network images ``size`` pixels on the long side)."""
    rotation, centre = _pose_errors(recon, rig)
    true_K = prepare_network_images(rig.frame_set(7), size, "cpu").intrinsics
    return rotation, centre, recon.intrinsics[:, 0, 0] / true_K[:, 0, 0] - 1


@pytest.mark.xfail(strict=True, reason="issue 15's target is not met with a focal length per "
                   "camera: the alignment keeps the network's focal errors and poses stay 1-2 "
                   "degrees off (docs/backends.md, What limits MASt3R's full alignment)")
def test_mast3r_full_alignment_meets_the_targets_on_realistic_answers(rig) -> None:
    """Issue 15's target with a focal length per camera: all realistic errors (focal errors
    of about 3 %, 7.7 % for the poor view), no calibration: poses within 1 degree and 1 % of
    the rig's size, focal lengths within 2 %."""
    rotation, centre, focal_error = _target_errors(_reconstruct(rig, False, realistic(0)), rig)
    assert rotation < 1.0 and centre < 0.01 and np.abs(focal_error).max() < 0.02, (
        rotation, centre, focal_error)


def test_mast3r_full_alignment_with_a_shared_focal_meets_the_targets() -> None:
    """Issue 15's target with one focal length for the rig's identical cameras
    (``shared_focal``; anchors at every matched pixel, seeds every 2 px at this size): all
    realistic errors, no calibration, 128 px (at 96 px the matches are too few: the focal
    stays 2.5-3 % off): poses within 1 degree and 1 % of the rig's size (0.4 degrees and
    0.3 % here), the focal within 2 % (0.3 %). A focal per camera with the same anchors
    would let the poor view's focal run (docs/backends.md)."""
    rig = SyntheticRig.render(seed=4, width=128, count=8)
    recon = _reconstruct(rig, False, realistic(0), SparseSettings(shared_focal=True), 128)
    rotation, centre, focal_error = _target_errors(recon, rig, 128)
    assert np.ptp(recon.intrinsics[:, 0, 0]) < 1e-6 * recon.intrinsics[0, 0, 0]
    assert rotation < 1.0 and centre < 0.01 and np.abs(focal_error).max() < 0.02, (
        rotation, centre, focal_error)


def test_mast3r_full_alignment_on_realistic_answers_with_the_rigs_intrinsics(rig) -> None:
    """All realistic errors (pipeline/realistic.py: focal errors of about 3 %, confident
    garbage, silhouettes, a poor view with 60 % wrong descriptors, 20 % elsewhere) with the
    calibrated intrinsics: the calibration check's residuals. With the anchors every 2 px (the
    fraction of the image the official 8 px cover at 512 px) 1.2 degrees and 0.64 % at this
    tiny size (96 px; 0.51-0.59 degrees at 128 px, docs/backends.md); with the official 8-px
    anchors 2.5 degrees and 1.5 % (1.1-2.1 degrees at 128 px). Issue 15's target is 1 degree
    and 1 %."""
    recon = _reconstruct(rig, True, realistic(0))
    rotation, centre = _pose_errors(recon, rig)
    assert rotation < 1.5 and centre < 0.01, (rotation, centre)
    assert abs(recon.info["rig_scale"] - 0.41) < 0.02


def test_compiled_sparse_alignment_finds_the_same_cameras(rig) -> None:
    """``compile_alignment`` changes speed, not results (twice: the second run reuses the
    compiled losses); poses come out in view 0's frame, so they compare directly."""
    frames = _uncalibrated(rig.frame_set(7))
    short = replace(FAST, coarse_iterations=30, fine_iterations=30)

    def run(compile_losses: bool):
        network = _network(rig.frame_set(7), ACCURATE)
        return MASt3RReconstructor(network, NetworkSettings(image_size=SIZE, alignment="full",
                                                            use_calibration=False),
                                   PairSettings(graph="knn", neighbours=2, sparse=replace(
                                       short, compile=compile_losses))).reconstruct(frames)

    eager = run(False)
    np.testing.assert_allclose(eager.cam_to_rig[0], np.eye(4), atol=1e-9)
    for _ in range(2):
        compiled = run(True)
        errors = pose_disagreement(compiled.cam_to_rig, eager.cam_to_rig)
        spread = np.linalg.norm(eager.cam_to_rig[:, :3, 3], axis=1).max()
        assert errors.rotation_deg.max() < 0.05, errors
        assert errors.centre_error.max() < 1e-3 * spread, errors
        np.testing.assert_allclose(compiled.intrinsics, eager.intrinsics, rtol=1e-3)
