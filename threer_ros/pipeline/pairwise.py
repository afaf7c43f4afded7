"""Pairwise backends (MASt3R, Pow3R): pair graph -> network on batched pairs -> alignment.

1. **Pair graph** (:func:`pair_graph`): ``complete`` (every ordered pair), ``knn`` (each camera
   with its k nearest cameras, by calibrated centre or else by index around the rig) or
   ``reference`` (every camera with the first); always symmetric, so every view also appears
   as the first view of a pair (its own-frame pointmap), and ``knn`` always connected (the
   nearest-camera spanning tree is added, so separate rows of a rig still meet).
2. **Network**: each image is encoded once per set and the pairs are decoded in batches
   (``forward_pairs`` of our models; any module with the official ``model(view1, view2)``
   contract works too, pair batch by pair batch). Pow3R receives the calibration as priors:
   rays from each camera's intrinsics and, on the calibrated fast path (or with
   ``pose_priors``), each pair's relative pose.
3. **Alignment**: the calibrated fast path (poses fixed, one scale per pair), or MASt3R's
   sparse alignment as published on its four-way reciprocal descriptor matches
   (:mod:`threer_ros.geometry.sparse_alignment`; MASt3R), or spanning-tree initialisation
   followed by DUSt3R's dense alignment (:mod:`threer_ros.geometry.global_alignment`;
   Pow3R); then, for a calibrated rig, the Sim(3) into the rig frame with the pose
   disagreement reported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from threer_ros.geometry.depth_cleaning import free_space_violations
from threer_ros.geometry.global_alignment import (AlignmentSettings, PairPredictions,
                                                  ViewEstimate, calibrated_points,
                                                  refine_dense, spanning_tree_init,
                                                  unstretched)
from threer_ros.geometry.matching import Correspondences, four_way_matches
from threer_ros.geometry.registration import estimate_focal
from threer_ros.geometry.sparse_alignment import SparseSettings, sparse_global_alignment
from threer_ros.pipeline.network import (NetworkImages, NetworkSettings, assemble,
                                         calibration_check, float32_matmul, load_network,
                                         prepare_network_images, update_network_fusion)
from threer_ros.pipeline.types import FrameSet, Reconstruction

GRAPHS = ("complete", "knn", "reference")
#: Values of ``clean_depth`` (:class:`PairSettings`).
CLEAN_DEPTH = ("calibrated", "always", "never")


def pair_graph(kind: str, n: int, neighbours: int = 4, centres: np.ndarray | None = None
               ) -> list[tuple[int, int]]:
    """Directed pairs ``(i, j)`` of ``n`` views, symmetric (``(j, i)`` present too), sorted.

    Args:
        kind: ``complete``, ``knn`` or ``reference`` (module docstring).
        neighbours: k of ``knn``.
        centres: ``(n, 3)`` camera centres for ``knn``; without them cameras are taken to sit
            on a ring in index order.
    """
    if n < 2:
        raise ValueError(f"a pair graph needs at least 2 views, got {n}")
    if kind == "complete":
        undirected = {(i, j) for i in range(n) for j in range(i + 1, n)}
    elif kind == "reference":
        undirected = {(0, j) for j in range(1, n)}
    elif kind == "knn":
        if neighbours < 1:
            raise ValueError(f"graph_neighbours must be >= 1, got {neighbours}")
        if centres is not None:
            distance = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
        else:
            index = np.arange(n)
            gap = np.abs(index[:, None] - index[None])
            distance = np.minimum(gap, n - gap).astype(float)
        np.fill_diagonal(distance, np.inf)
        undirected = {tuple(sorted((i, int(j)))) for i in range(n)
                      for j in np.argsort(distance[i], kind="stable")[:min(neighbours, n - 1)]}
        undirected |= _nearest_tree(distance)   # clusters of cameras stay connected
    else:
        raise ValueError(f"unknown pair graph {kind!r}: use {', '.join(GRAPHS)}")
    return sorted(undirected | {(j, i) for i, j in undirected})


def _nearest_tree(distance: np.ndarray) -> set[tuple[int, int]]:
    """Edges ``(i, j)``, ``i < j``, of the minimum spanning tree of a distance matrix (Prim)."""
    n = len(distance)
    inside = np.zeros(n, dtype=bool)
    inside[0] = True
    best, parent = distance[0].copy(), np.zeros(n, dtype=int)
    edges = set()
    for _ in range(n - 1):
        j = int(np.argmin(np.where(inside, np.inf, best)))
        edges.add(tuple(sorted((int(parent[j]), j))))
        inside[j] = True
        closer = distance[j] < best
        best[closer], parent[closer] = distance[j][closer], j
    return edges


@dataclass(frozen=True)
class PairSettings:
    """Pair graph and alignment settings of the pairwise backends.

    Attributes:
        graph, neighbours, batch: Node parameters ``pair_graph``, ``graph_neighbours``,
            ``pair_batch``.
        alignment: Dense alignment (Pow3R): node parameters ``alignment_iterations``,
            ``alignment_lr`` and ``compile_alignment``.
        sparse: MASt3R's sparse alignment: its stages run ``alignment_iterations`` steps
            each at the official learning rates, ``compile_alignment`` compiles its losses.
        pose_priors: Pow3R with ``full`` alignment also gets the calibrated relative poses
            as priors (node parameter ``pose_priors``). Off by default: the network follows a
            pose prior, right or wrong, so the full alignment would then partly hide a camera
            that moved; without, it checks the calibration independently. The calibrated
            fast path always gives them (its poses are the calibration anyway).
        clean_depth: Whether a ``full`` alignment's cloud drops every point that lies in
            front of what another view sees there and is less confident than that view's
            point (:mod:`threer_ros.geometry.depth_cleaning`), as the official demos'
            "clean-up depthmaps" (on by default) do before building the cloud (node parameter
            ``clean_depth``): ``calibrated`` (default) on sets whose calibration is used
            (intrinsics and extrinsics, ``use_calibration``), ``always`` (the official
            demos), ``never``. Without the calibration the views of realistic answers
            disagree by millimetres and cleaning cost 3-15 points of completeness at 5 mm
            for no accuracy (docs/backends.md).
    """

    graph: str = "knn"
    neighbours: int = 4
    batch: int = 16
    alignment: AlignmentSettings = AlignmentSettings()
    sparse: SparseSettings = SparseSettings()
    pose_priors: bool = False
    clean_depth: str = "calibrated"

    def __post_init__(self) -> None:
        if self.clean_depth not in CLEAN_DEPTH:
            raise ValueError(f"clean_depth {self.clean_depth!r}: use {', '.join(CLEAN_DEPTH)}")

    @classmethod
    def from_options(cls, options) -> "PairSettings":
        """The pair settings named in :class:`~threer_ros.pipeline.backends.BackendOptions`
        (the rest at their defaults)."""
        return cls(options.pair_graph, options.graph_neighbours, options.pair_batch,
                   replace(AlignmentSettings(), iterations=options.alignment_iterations,
                           lr=options.alignment_lr, compile=options.compile_alignment,
                           shared_focal=options.shared_focal),
                   replace(SparseSettings(), coarse_iterations=options.alignment_iterations,
                           fine_iterations=options.alignment_iterations,
                           compile=options.compile_alignment,
                           shared_focal=options.shared_focal),
                   pose_priors=options.pose_priors, clean_depth=options.clean_depth)


#: ``shared_focal`` gives way to a focal per camera when the focal lengths the network implies
#: for the views differ by more than this factor: different lenses (on one kind of lens its
#: errors are a few percent, docs/backends.md).
SHARED_FOCAL_SPREAD = 1.2


def focals_look_shared(focal: torch.Tensor, spread: float = SHARED_FOCAL_SPREAD) -> bool:
    """Whether the views' focal lengths ``focal`` ``(N,)`` (pixels, as the network implies
    them) lie within a factor ``spread`` of one another."""
    return bool(focal.max() <= spread * focal.min())


def implied_focals(pred: PairPredictions, n: int) -> torch.Tensor:
    """``(N,)`` focal lengths (pixels) the ``n`` views' own pointmaps imply (each view's first
    decoding that it leads, image-centre principal point)."""
    lead = torch.stack([(pred.first == v).nonzero()[0, 0] for v in range(n)])
    return estimate_focal(pred.points1[lead].double())


class PairwiseReconstructor:
    """Pairwise reconstruction (module docstring) with the network ``network``.

    Args:
        network: A MASt3R / Pow3R module or any module with the official pair contract.
        settings: Network backend settings.
        pairs: Pair graph and alignment settings.
    """

    name = "pairwise"
    #: With ``alignment: full`` on a calibrated rig (intrinsics and extrinsics): the aligned
    #: cameras are only the calibration check, and the cloud is placed on the calibrated
    #: cameras as on the fast path (see :meth:`_checked_calibrated_cloud`). False: the cloud
    #: follows the aligned cameras, taken into the rig frame by the check's Sim(3).
    cloud_on_calibration = False

    def __init__(self, network: nn.Module, settings: NetworkSettings,
                 pairs: PairSettings = PairSettings()) -> None:
        self.network = network
        self.settings = settings
        self.pairs = pairs

    update_fusion = update_network_fusion

    @classmethod
    def from_options(cls, options) -> "PairwiseReconstructor":
        """Build from :class:`~threer_ros.pipeline.backends.BackendOptions`."""
        settings = options.network_settings(cls.name)
        return cls(load_network(cls.name, settings), settings, PairSettings.from_options(options))

    def reconstruct(self, frames: FrameSet) -> Reconstruction:
        n = len(frames.frames)
        if n < 2:
            raise ValueError(f"{self.name} needs at least 2 cameras, got {n}")
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        images = prepare_network_images(frames, self.settings.image_size, self.settings.device)
        centres = None if images.cam_to_rig is None else images.cam_to_rig[:, :3, 3]
        edges = pair_graph(self.pairs.graph, n, self.pairs.neighbours, centres)
        timings["preprocess"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        fast = self.settings.fast_path(images)
        pred, descriptors = self._run_pairs(images, edges, descriptors=not fast,
                                            pose_priors=fast or self.pairs.pose_priors)
        if images.img.is_cuda:
            torch.cuda.synchronize(images.img.device)
        timings["network"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        info = {"pairs": float(len(edges)), "pair_batch": float(self.pairs.batch)}
        if fast:
            points, conf, _, _ = self._on_calibrated_cameras(pred, images)
            timings["alignment"] = time.perf_counter() - t0
            return assemble(images, points, conf, images.cam_to_rig, images.intrinsics,
                            frames.stamp_ns, self.settings, timings, True, info)
        known = self.settings.use_calibration and images.intrinsics is not None
        focal = principal = None
        answers = pred
        if known:
            K = torch.as_tensor(images.intrinsics, device=pred.points1.device)
            focal, principal = (K[:, 0, 0] + K[:, 1, 1]) / 2, K[:, :2, 2]
            answers = unstretched(pred, K)  # known focal: undo the networks' focal errors
        with torch.enable_grad():
            if descriptors is not None:
                sparse = self.pairs.sparse
                if not known:      # decided before matching: the seed stride depends on it
                    shared = sparse.shared_focal and focals_look_shared(
                        implied_focals(answers, n))
                    info["shared_focal"] = float(shared)
                    sparse = replace(sparse, shared_focal=shared)
                matches = self._match(answers, descriptors, known, sparse)
                info["matches"] = float(len(matches.pair))
                timings["matching"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                views, loss = sparse_global_alignment(answers, matches, n, sparse, focal,
                                                      principal)
            else:
                init = spanning_tree_init(answers, n, focal, principal)
                dense = self.pairs.alignment
                if not known:      # the focals the initialisation estimated
                    shared = dense.shared_focal and focals_look_shared(init.focal)
                    info["shared_focal"] = float(shared)
                    dense = replace(dense, shared_focal=shared)
                timings["init"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                views, loss = refine_dense(answers, init, dense, optimise_focal=not known)
        info["alignment_loss"] = loss
        if known and images.cam_to_rig is not None and self.cloud_on_calibration:
            return self._checked_calibrated_cloud(images, pred, views, frames.stamp_ns,
                                                  timings, info, t0)
        timings["alignment"] = time.perf_counter() - t0
        K = views.intrinsics()
        points = self._cleaned(views.points(), views.confidence, K, views.cam_to_world,
                               known and images.cam_to_rig is not None, timings, info)
        return assemble(images, points, views.confidence, views.cam_to_world.cpu().numpy(),
                        K.cpu().numpy(), frames.stamp_ns, self.settings, timings, False, info)

    def _cleaned(self, points: torch.Tensor, confidence: torch.Tensor, intrinsics: torch.Tensor,
                 cam_to_world: torch.Tensor, calibrated: bool, timings: dict[str, float],
                 info: dict[str, float]) -> torch.Tensor:
        """``points`` ``(N, h, w, 3)`` (frame and unit of ``cam_to_world`` ``(N, 4, 4)``;
        ``intrinsics`` ``(N, 3, 3)`` in network pixels) with the free-space violations of
        :func:`~threer_ros.geometry.depth_cleaning.free_space_violations` set to NaN, so that
        no confidence threshold keeps them, when ``clean_depth`` asks for it on this set
        (``calibrated``: whether the set's calibration is used); else ``points`` as given.
        Reports the time (``timings["cleaning"]``, s) and the fraction of pixels dropped
        (``info["cleaned_fraction"]``)."""
        mode = self.pairs.clean_depth
        if mode == "never" or (mode == "calibrated" and not calibrated):
            return points
        t0 = time.perf_counter()
        bad = free_space_violations(points, confidence, intrinsics, cam_to_world)
        info["cleaned_fraction"] = float(bad.float().mean())
        points = torch.where(bad[..., None], float("nan"), points)
        timings["cleaning"] = time.perf_counter() - t0
        return points

    @staticmethod
    def _on_calibrated_cameras(pred: PairPredictions, images: NetworkImages
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The pairs' depths along the calibrated rays, placed by the calibrated poses
        (:func:`~threer_ros.geometry.global_alignment.calibrated_points`: points in metres in
        the rig frame and their confidences), with the intrinsics ``(N, 3, 3)`` and
        camera-to-rig poses ``(N, 4, 4)`` used, on the predictions' device."""
        dev = pred.points1.device
        K = torch.as_tensor(images.intrinsics, device=dev)
        cam_to_rig = torch.as_tensor(images.cam_to_rig, device=dev)
        return (*calibrated_points(pred, K, cam_to_rig), K, cam_to_rig)

    def _checked_calibrated_cloud(self, images: NetworkImages, pred: PairPredictions,
                                  views: ViewEstimate, stamp_ns: int,
                                  timings: dict[str, float], info: dict[str, float],
                                  t0: float) -> Reconstruction:
        """Full alignment on a calibrated rig with :attr:`cloud_on_calibration`: the aligned
        cameras ``views`` are the calibration check (their Sim(3) onto the calibrated centres
        and the remaining disagreement go into ``info``); the cloud is the calibrated fast
        path's (the pairs' depths along the calibrated rays, placed by the calibrated poses,
        metres in the rig frame), ``t0`` the start of the alignment (``perf_counter`` s)."""
        _, check = calibration_check(views.cam_to_world.cpu().numpy(), images.cam_to_rig)
        info.update(check)
        points, conf, K, cam_to_rig = self._on_calibrated_cameras(pred, images)
        timings["alignment"] = time.perf_counter() - t0
        points = self._cleaned(points, conf, K, cam_to_rig, True, timings, info)
        return assemble(images, points, conf, images.cam_to_rig, images.intrinsics, stamp_ns,
                        self.settings, timings, True, info)

    # --- network ------------------------------------------------------------------------
    def _priors(self, images: NetworkImages, first: torch.Tensor, second: torch.Tensor,
                pose_priors: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Pow3R's prior inputs: rays per image ``(N, 3, h, w)`` and, with ``pose_priors``,
        the relative pose per pair."""
        if self.name != "pow3r" or not self.settings.use_calibration:
            return None, None
        from threer_ros.models.pow3r import rays_from_intrinsics, relative_pose

        h, w = images.img.shape[-2:]
        rays = pose = None
        if images.intrinsics is not None:
            rays = rays_from_intrinsics(torch.as_tensor(images.intrinsics, dtype=torch.float32,
                                                        device=images.img.device), h, w)
        if pose_priors and images.cam_to_rig is not None:
            cams = torch.as_tensor(images.cam_to_rig, device=images.img.device)
            pose = relative_pose(cams[first], cams[second])
        return rays, pose

    def _run_pairs(self, images: NetworkImages, edges: list[tuple[int, int]],
                   descriptors: bool = True, pose_priors: bool = True
                   ) -> tuple[PairPredictions, tuple[torch.Tensor, ...] | None]:
        """All pairs through the network; with ``descriptors``, also the descriptors
        ``(desc1, desc2, conf1, conf2)`` of each pair when the network outputs them (without,
        networks with ``forward_pairs`` skip computing them); ``pose_priors``: Pow3R gets the
        calibrated relative poses."""
        dev = images.img.device
        first = torch.tensor([e[0] for e in edges], device=dev)
        second = torch.tensor([e[1] for e in edges], device=dev)
        dtype = next(self.network.parameters()).dtype
        h, w = images.img.shape[-2:]
        # networks declared landscape-only take portrait images (and priors) transposed
        flip = bool(getattr(self.network, "landscape_only", False)) and h > w
        orient = (lambda x: x.transpose(-1, -2)) if flip else (lambda x: x)
        view = dict(images.view(range(len(images.cameras))), img=orient(images.img.to(dtype)))
        rays, pose = self._priors(images, first, second, pose_priors)
        if rays is not None:
            view["known_rays"] = orient(rays)
        res1, res2 = self._decode_pairs(view, first, second, pose, descriptors)
        descriptors = descriptors and "desc" in res1
        used = ("pts3d", "pts3d_in_other_view", "conf") + \
            (("desc", "desc_conf") if descriptors else ())
        unflip = (lambda x: x.transpose(1, 2)) if flip else (lambda x: x)
        res1, res2 = ({k: unflip(v).float() for k, v in res.items() if k in used}
                      for res in (res1, res2))
        pred = PairPredictions(first, second, res1["pts3d"], res2["pts3d_in_other_view"],
                               res1["conf"], res2["conf"])
        if not descriptors:
            return pred, None
        return pred, (res1["desc"], res2["desc"], res1["desc_conf"], res2["desc_conf"])

    def _decode_pairs(self, view: dict, first: torch.Tensor, second: torch.Tensor,
                      pose: torch.Tensor | None, descriptors: bool) -> tuple[dict, dict]:
        """The pairs ``(first[k], second[k])`` through the network, ``pair_batch`` at a time.

        A GPU out-of-memory error halves ``pair_batch`` for this and every later set (the
        cached memory is handed back first) and decodes again, down to one pair a batch; the
        batch in use is reported as ``pair_batch`` in the reconstruction's info.
        """
        while True:
            try:
                # not inference_mode: the alignment differentiates the outputs
                with torch.no_grad(), float32_matmul(self.settings.precision):
                    if not hasattr(self.network, "forward_pairs"):
                        return self._forward_gathered(view, first, second, pose)
                    extra = {"known_pose": pose} if self.name == "pow3r" \
                        else {"descriptors": descriptors}
                    return self.network.forward_pairs(view, first, second,
                                                      pair_batch=self.pairs.batch, **extra)
            except torch.cuda.OutOfMemoryError:
                batch = self.pairs.batch if self.pairs.batch > 0 else len(first)
                if batch <= 1:
                    raise
                self.pairs = replace(self.pairs, batch=batch // 2)
                torch.cuda.empty_cache()

    def _forward_gathered(self, view: dict, first: torch.Tensor, second: torch.Tensor,
                          pose: torch.Tensor | None) -> tuple[dict, dict]:
        """The official contract, one batch of gathered pairs at a time."""
        from threer_ros.models.dust3r import decode_in_chunks

        def gather(index: torch.Tensor, pose_chunk: torch.Tensor | None) -> dict:
            out = {k: (v[index] if torch.is_tensor(v) else [v[int(i)] for i in index])
                   for k, v in view.items() if k != "true_shape"}
            out["true_shape"] = view["true_shape"][index.cpu()]
            if pose_chunk is not None:
                out["known_pose"] = pose_chunk
            return out

        return decode_in_chunks(
            lambda a, b, p: self.network(gather(a, p), gather(b, p)), first, second,
            self.pairs.batch, pose)

    def _match(self, pred: PairPredictions, descriptors, focal_known: bool,
               sparse: SparseSettings) -> Correspondences:
        """MASt3R's four-way matches of every pair from both its decodings, indexed by the
        pair's ``i < j`` decoding, seeded at the stride of the sparse alignment ``sparse``
        for images with (``focal_known``) or without known focal lengths."""
        desc1, desc2, conf1, conf2 = descriptors
        decoding = {(i, j): e for e, (i, j) in enumerate(zip(pred.first.tolist(),
                                                              pred.second.tolist()))}
        forward = [e for (i, j), e in decoding.items() if i < j]
        backward = [decoding[j, i] for (i, j), e in decoding.items() if i < j]
        found = four_way_matches(desc1[forward], desc2[forward], desc1[backward],
                                 desc2[backward], conf1[forward], conf2[forward],
                                 conf1[backward], conf2[backward],
                                 subsample=sparse.block(*desc1.shape[1:3], focal_known))
        pair = torch.tensor(forward, device=found.pair.device)[found.pair]
        return Correspondences(pair, found.pixel1, found.pixel2, found.weight)


class MASt3RReconstructor(PairwiseReconstructor):
    """MASt3R: pairs, then sparse alignment on its descriptor matches.

    On a calibrated rig its full alignment's cameras are only the calibration check: on
    realistic answers they stay about 1 degree off the calibration with every view's depth
    about 1 % long, so a cloud on them is 3-4 times less accurate than the calibrated fast
    path's (docs/backends.md); the cloud is the fast path's.
    """

    name = "mast3r"
    cloud_on_calibration = True


class Pow3RReconstructor(PairwiseReconstructor):
    """Pow3R: pairs with calibration priors, then dense alignment."""

    name = "pow3r"
