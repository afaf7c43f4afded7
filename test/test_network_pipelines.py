"""Fast3R and pairwise pipelines against ground-truth "networks" built from the synthetic rig.

The oracles answer with the rig's exact geometry (optionally 1 % depth noise and 5 % outliers)
in their own unit, with a different unit per pair, so every pipeline must recover scale, poses
and the cloud. Errors are measured after bringing estimates into the rig frame: rotation in
degrees, camera centres and cloud accuracy in metres (the head is ~0.2 m across, 1 m away).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from threer_ros.data.synthetic import SyntheticRig
from threer_ros.geometry.fusion import FusionSettings, accuracy_completeness
from threer_ros.geometry.global_alignment import AlignmentSettings
from threer_ros.geometry.registration import align_to_reference, pose_disagreement
from threer_ros.geometry.sparse_alignment import SparseSettings
from threer_ros.pipeline.fast3r import Fast3RReconstructor
from threer_ros.pipeline.network import NetworkSettings, prepare_network_images
from threer_ros.pipeline.oracle import (HEAD_CONFIDENCE, OracleFast3R, OraclePairNetwork,
                                        Perturbation)
from threer_ros.pipeline.pairwise import (MASt3RReconstructor, PairSettings, Pow3RReconstructor,
                                          pair_graph)
from threer_ros.pipeline.types import FrameSet

SIZE = 96                     # network image long side (the oracles work at any size)
HEAD_ONLY = FusionSettings(confidence_threshold=HEAD_CONFIDENCE - 1, voxel_size=0.002)
NOISY = Perturbation(noise=0.01, outliers=0.05, seed=3)


@pytest.fixture(scope="module")
def rig() -> SyntheticRig:
    return SyntheticRig.render(seed=4, width=SIZE, count=8)


@pytest.fixture(scope="module")
def truth(rig) -> np.ndarray:
    return rig.surface_points()


def _uncalibrated(frames: FrameSet) -> FrameSet:
    """The same images with intrinsics only (extrinsics unknown)."""
    return FrameSet(tuple(replace(f, calibration=replace(f.calibration, cam_to_rig=None))
                          for f in frames.frames), frames.stamp_ns)


def _check(recon, rig, truth, rotation_deg, centre_m, median_m, completeness):
    """Bring the estimate into the rig frame if needed and compare with the ground truth."""
    reference = np.stack([v.calibration.cam_to_rig for v in rig.views])
    points = recon.points
    if not recon.poses_from_calibration:
        to_rig, disagreement = align_to_reference(recon.cam_to_rig, reference)
        points = to_rig.apply(points)
        errors = disagreement.summary()
    else:
        np.testing.assert_allclose(recon.cam_to_rig, reference)
        errors = {k: v for k, v in recon.info.items() if k.startswith("pose_")}
    if errors:   # fast paths keep the calibration and have no pose estimate to check
        assert errors["pose_rotation_max_deg"] < rotation_deg, errors
        assert errors["pose_centre_max_m"] < centre_m, errors
    metrics = accuracy_completeness(points, truth, threshold=0.005)
    assert metrics.median < median_m, metrics
    assert metrics.completeness > completeness, metrics
    assert np.isfinite(recon.points).all() and len(recon.points) > 1000


@pytest.mark.parametrize("alignment", ["fast", "full"])
@pytest.mark.parametrize("perturbation", [Perturbation(), NOISY], ids=["exact", "noisy"])
def test_fast3r_recovers_poses_and_a_metric_cloud_in_the_rig_frame(rig, truth, alignment,
                                                                   perturbation):
    frames = rig.frame_set(7)
    network = OracleFast3R(frames, SIZE, unit=0.37, perturbation=perturbation)
    settings = NetworkSettings(image_size=SIZE, alignment=alignment, fusion=HEAD_ONLY)
    recon = Fast3RReconstructor(network, settings).reconstruct(frames)
    assert recon.poses_from_calibration and recon.cameras == frames.cameras
    exact = perturbation == Perturbation()
    _check(recon, rig, truth, rotation_deg=0.05 if exact else 0.5,
           centre_m=0.001 if exact else 0.005, median_m=0.0015 if exact else 0.005,
           completeness=0.95)
    if alignment == "full":
        assert abs(recon.info["rig_scale"] - 0.37) < (1e-4 if exact else 0.01)


def test_fast3r_without_calibration_estimates_focal_and_poses(rig, truth):
    frames = _uncalibrated(rig.frame_set(7))
    calibrated = rig.frame_set(7)
    network = OracleFast3R(calibrated, SIZE)
    settings = NetworkSettings(image_size=SIZE, use_calibration=False, fusion=HEAD_ONLY)
    recon = Fast3RReconstructor(network, settings).reconstruct(frames)
    assert not recon.poses_from_calibration
    np.testing.assert_allclose(recon.cam_to_rig[0], np.eye(4), atol=1e-12)   # first camera's
    true_K = prepare_network_images(calibrated, SIZE, "cpu").intrinsics
    np.testing.assert_allclose(recon.intrinsics[:, 0, 0], true_K[:, 0, 0], rtol=5e-3)
    # the principal point is assumed at the image centre: 0.2 % focal error, 0.1 deg
    _check(recon, rig, truth, rotation_deg=0.25, centre_m=0.002, median_m=0.0025,
           completeness=0.95)


def _pairwise(cls, frames, oracle_frames, perturbation, alignment_settings=AlignmentSettings(
        iterations=100), **settings):
    network = OraclePairNetwork(oracle_frames, SIZE, unit=0.41, perturbation=perturbation,
                                descriptors=cls is MASt3RReconstructor)
    pairs = PairSettings(graph="knn", neighbours=3, alignment=alignment_settings)
    return cls(network, NetworkSettings(image_size=SIZE, fusion=HEAD_ONLY, **settings),
               pairs).reconstruct(frames)


@pytest.mark.parametrize("cls", [MASt3RReconstructor, Pow3RReconstructor])
@pytest.mark.parametrize("perturbation", [Perturbation(), NOISY], ids=["exact", "noisy"])
def test_pairwise_calibrated_fast_path_is_metric_and_in_the_rig_frame(rig, truth, cls,
                                                                      perturbation):
    frames = rig.frame_set(7)
    recon = _pairwise(cls, frames, frames, perturbation, alignment="fast")
    assert recon.poses_from_calibration and "alignment" in recon.timings_s
    exact = perturbation == Perturbation()
    _check(recon, rig, truth, rotation_deg=0, centre_m=0, median_m=0.0015 if exact else 0.005,
           completeness=0.95)


# MASt3R's full alignment needs descriptors that match: test/test_sparse_alignment.py
@pytest.mark.parametrize("cls", [Pow3RReconstructor])
@pytest.mark.parametrize("calibrated", [True, False], ids=["intrinsics+extrinsics", "none"])
def test_pairwise_full_alignment_recovers_poses_and_cloud(rig, truth, cls, calibrated):
    frames = rig.frame_set(7)
    recon = _pairwise(cls, frames if calibrated else _uncalibrated(frames), frames, NOISY,
                      alignment="full", use_calibration=calibrated)
    assert recon.poses_from_calibration == calibrated
    if calibrated:       # the live calibration check: residuals reported, scale recovered
        assert {"pose_rotation_max_deg", "pose_centre_max_m", "rig_scale"} <= set(recon.info)
    _check(recon, rig, truth, rotation_deg=1.0, centre_m=0.01, median_m=0.006,
           completeness=0.9)


def test_pow3r_full_alignment_with_a_shared_focal_gives_the_rig_one_focal(rig, truth):
    """``shared_focal``: one focal length for all cameras (the synthetic rig's are identical),
    estimated without calibration; poses and cloud as with a focal per camera."""
    frames = rig.frame_set(7)
    recon = _pairwise(Pow3RReconstructor, _uncalibrated(frames), frames, NOISY,
                      AlignmentSettings(iterations=100, shared_focal=True), alignment="full",
                      use_calibration=False)
    focal = recon.intrinsics[:, 0, 0]
    true = prepare_network_images(frames, SIZE, "cpu").intrinsics[:, 0, 0]
    assert np.ptp(focal) < 1e-6 * focal[0] and abs(focal[0] / true[0] - 1) < 0.02, focal
    _check(recon, rig, truth, rotation_deg=1.0, centre_m=0.01, median_m=0.006,
           completeness=0.9)


@pytest.mark.parametrize("cls", [MASt3RReconstructor, Pow3RReconstructor])
def test_a_shared_focal_gives_way_to_one_per_camera_when_the_lenses_differ(rig, cls):
    """``shared_focal`` on a rig with one camera's lens 30 % longer (its network answers
    imply that focal): each camera keeps its own focal, and diagnostics say the focal was
    not shared; with the rig's identical lenses it is."""
    frames = rig.frame_set(7)
    K = frames.frames[3].calibration.K @ np.diag([1.3, 1.3, 1.0])    # fx and fy
    long_lens = replace(frames.frames[3].calibration, K=K)
    changed = FrameSet(tuple(replace(f, calibration=long_lens) if i == 3 else f
                             for i, f in enumerate(frames.frames)), frames.stamp_ns)
    settings = AlignmentSettings(iterations=30, shared_focal=True)
    for oracle_frames, shared in ((frames, True), (changed, False)):
        network = OraclePairNetwork(oracle_frames, SIZE, unit=0.41,
                                    descriptors=cls is MASt3RReconstructor)
        pairs = PairSettings(graph="knn", neighbours=3, alignment=settings,
                             sparse=SparseSettings(coarse_iterations=30, fine_iterations=30,
                                                   shared_focal=True))
        recon = cls(network, NetworkSettings(image_size=SIZE, fusion=HEAD_ONLY,
                                             alignment="full", use_calibration=False),
                    pairs).reconstruct(_uncalibrated(oracle_frames))
        focal = recon.intrinsics[:, 0, 0]
        assert recon.info["shared_focal"] == float(shared)
        assert (np.ptp(focal) < 1e-6 * focal[0]) == shared, focal
        if not shared:
            assert focal[3] > 1.2 * np.median(focal), focal


@pytest.mark.parametrize("cls", [Pow3RReconstructor])
def test_compiled_alignment_finds_the_same_cameras(rig, cls):
    """``compile_alignment`` changes speed, not results: dense (Pow3R) alignment with
    compiled losses, on two sets (the second reuses the compiled code; MASt3R's sparse
    alignment: test/test_sparse_alignment.py)."""
    frames = _uncalibrated(rig.frame_set(7))
    eager = _pairwise(cls, frames, rig.frame_set(7), NOISY, alignment="full",
                      use_calibration=False)
    for _ in range(2):
        compiled = _pairwise(cls, frames, rig.frame_set(7), NOISY,
                             AlignmentSettings(iterations=100, compile=True), alignment="full",
                             use_calibration=False)
        errors = pose_disagreement(compiled.cam_to_rig, eager.cam_to_rig)   # same frame
        spread = np.linalg.norm(eager.cam_to_rig[:, :3, 3], axis=1).max()
        assert errors.rotation_deg.max() < 0.05, errors
        assert errors.centre_error.max() < 1e-3 * spread, errors
        np.testing.assert_allclose(compiled.intrinsics, eager.intrinsics, rtol=1e-3)


def test_pair_graphs_are_symmetric_and_knn_follows_the_rig():
    complete = pair_graph("complete", 5)
    assert len(complete) == 20 and all((j, i) in complete for i, j in complete)
    assert pair_graph("reference", 4) == [(0, 1), (0, 2), (0, 3), (1, 0), (2, 0), (3, 0)]
    centres = np.array([[0, 0, 0], [1, 0, 0], [2.5, 0, 0], [4, 0, 0]], float)
    knn = pair_graph("knn", 4, neighbours=1, centres=centres)
    assert knn == [(0, 1), (1, 0), (1, 2), (2, 1), (2, 3), (3, 2)]
    assert pair_graph("knn", 4, neighbours=4) == pair_graph("complete", 4)   # no self-pairs
    ring = pair_graph("knn", 6, neighbours=2)          # no extrinsics: neighbours by index
    assert (0, 5) in ring and (0, 1) in ring and (0, 3) not in ring
    with pytest.raises(ValueError, match="unknown pair graph 'star'"):
        pair_graph("star", 4)


def test_knn_graphs_stay_connected_when_cameras_form_clusters():
    centres = np.array([[0, 0, 0], [1, 0, 0], [10, 0, 0], [11, 0, 0], [30, 0, 0]], float)
    knn = pair_graph("knn", 5, neighbours=1, centres=centres)
    # each camera's nearest neighbour, plus the shortest links between the clusters
    assert knn == [(0, 1), (1, 0), (1, 2), (2, 1), (2, 3), (3, 2), (3, 4), (4, 3)]


def test_fast_alignment_without_calibration_is_refused(rig):
    frames = _uncalibrated(rig.frame_set(7))
    network = OracleFast3R(rig.frame_set(7), SIZE)
    with pytest.raises(ValueError, match="alignment 'fast' needs intrinsics and extrinsics"):
        Fast3RReconstructor(network, NetworkSettings(image_size=SIZE, alignment="fast")
                            ).reconstruct(frames)


def test_mast3r_calibrated_fast_path_does_not_compute_descriptors(rig, parity_dir):
    """The fast path keeps the calibration and matches nothing: the (tiny, real) MASt3R
    network is asked for points only, so its descriptor MLP never runs."""
    from threer_ros.models import load_model

    network = load_model(parity_dir / "mast3r" / "checkpoint.pth")
    calls = []
    for head in (network.downstream_head1, network.downstream_head2):
        head.head_local_features.register_forward_hook(lambda *_: calls.append(1))
    recon = MASt3RReconstructor(network, NetworkSettings(image_size=64, alignment="fast"),
                                PairSettings(graph="knn", neighbours=2)).reconstruct(
        rig.frame_set(0))
    assert recon.poses_from_calibration and len(recon.points) > 0
    assert not calls


def test_a_gpu_out_of_memory_halves_pair_batch_and_the_set_still_comes(rig, parity_dir):
    """A GPU that holds only 2 pairs a batch (the tiny, real MASt3R network, whose head
    raises CUDA's out-of-memory error for larger batches): the set is decoded again with
    smaller batches and reconstructed as with ``pair_batch`` 2; later sets keep the smaller
    batch; one pair that does not fit is an error."""
    import torch

    from threer_ros.models import load_model

    network = load_model(parity_dir / "mast3r" / "checkpoint.pth")
    fits = {"pairs": 2}

    def memory_of_two_pairs(module, args):
        batch = args[0][0].shape[0]
        if batch > fits["pairs"]:
            raise torch.cuda.OutOfMemoryError(f"{batch} pairs do not fit")

    network.downstream_head1.register_forward_pre_hook(memory_of_two_pairs)
    settings = NetworkSettings(image_size=64, alignment="fast")
    frames = rig.frame_set(0)
    shrinking = MASt3RReconstructor(network, settings,
                                    PairSettings(graph="knn", neighbours=2, batch=16))
    first = shrinking.reconstruct(frames)
    assert first.info["pair_batch"] == 2 and shrinking.pairs.batch == 2
    direct = MASt3RReconstructor(network, settings,
                                 PairSettings(graph="knn", neighbours=2, batch=2)
                                 ).reconstruct(frames)
    np.testing.assert_allclose(first.points, direct.points, rtol=1e-5, atol=1e-6)
    assert shrinking.reconstruct(frames).info["pair_batch"] == 2
    fits["pairs"] = 0
    with pytest.raises(torch.cuda.OutOfMemoryError):
        shrinking.reconstruct(frames)
