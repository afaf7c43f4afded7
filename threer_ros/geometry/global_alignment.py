"""Global alignment of pairwise pointmaps into one frame (the DUSt3R / MASt3R recipe, our code).

A pair network run on the directed pair ``e = (i, j)`` predicts both views' pointmaps in camera
i's frame, in an unknown unit per pair. Alignment finds, for every view, a camera-to-world pose,
a focal length and a depth map, and for every pair a Sim(3) ``S_e``, such that ``S_e`` maps the
pair's pointmaps onto the views' back-projected depth maps.

* :func:`spanning_tree_init` chains pairwise Sim(3) fits along the maximum-confidence spanning
  tree of the pair graph, then reads every view's pose, depth and focal off its own-frame
  pointmap. With a perfect network it is already exact.
* :func:`refine_dense` minimises the confidence-weighted distance between every pair's
  pointmaps (mapped by ``S_e``) and the views' back-projected depths over all pixels (Adam,
  cosine learning-rate decay), as DUSt3R's global aligner does.
* :func:`threer_ros.geometry.sparse_alignment.sparse_global_alignment` is MASt3R's own
  alignment on pixel correspondences (its descriptor matches), with its own parametrisation.
* :func:`calibrated_points` is the calibrated fast path: poses and intrinsics fixed, the
  networks' depths along the calibrated rays, one closed-form scale per pair.

Conventions: OpenCV optical frames, camera-to-world 4x4 poses, principal point at the image
centre unless intrinsics are given; all tensors on one device, float32 optimisation with
float64 fits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from threer_ros.geometry.cameras import depths_to_rig, rays_of_views
from threer_ros.geometry.optimisation import compiled_if, minimise
from threer_ros.geometry.registration import (estimate_focal, fit_similarity_batched,
                                              focal_stretch, pixel_grid, ray_consistent_scale)


@dataclass(frozen=True)
class PairPredictions:
    """Network outputs for a batch of E directed pairs ``(first[e], second[e])``.

    Attributes:
        first, second: ``(E,)`` int64 view indices.
        points1: ``(E, H, W, 3)`` view ``first`` in its own camera frame.
        points2: ``(E, H, W, 3)`` view ``second`` in camera ``first``'s frame.
        conf1, conf2: ``(E, H, W)`` confidences (>= 1 for the DUSt3R family).
    """

    first: torch.Tensor
    second: torch.Tensor
    points1: torch.Tensor
    points2: torch.Tensor
    conf1: torch.Tensor
    conf2: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.points1.shape[1:3])


#: Final learning rate of the dense alignment's cosine decay (the official aligner's).
DENSE_LR_MIN = 1e-6
#: Learning-rate factor of the dense alignment's log focal: upstream optimises ``20 log f``.
FOCAL_RATE = 1 / 20


@dataclass(frozen=True)
class AlignmentSettings:
    """Optimisation settings (defaults as the upstream demos: 300 steps at lr 0.01).

    Attributes:
        iterations: Adam steps of the dense refinement.
        lr: Initial learning rate (cosine decay to ``lr / 100``; the dense alignment's to
            :data:`DENSE_LR_MIN`).
        compile: ``torch.compile`` the losses (forward and backward fused into a few kernels
            per step; each new problem shape compiles once per process, tens of seconds).
        shared_focal: One focal length for every view (rigs of identical cameras and
            lenses), starting at the geometric mean of the initial ones.
    """

    iterations: int = 300
    lr: float = 0.01
    compile: bool = False
    shared_focal: bool = False


@dataclass
class ViewEstimate:
    """Every view's camera and depth (N views, H x W pixels).

    Attributes:
        cam_to_world: ``(N, 4, 4)`` float64 poses.
        focal: ``(N,)`` focal lengths in pixels.
        depth: ``(N, H, W)`` depth along the optical axis.
        confidence: ``(N, H, W)`` best confidence each pixel received from any pair.
        principal_point: ``(N, 2)`` pixels.
    """

    cam_to_world: torch.Tensor
    focal: torch.Tensor
    depth: torch.Tensor
    confidence: torch.Tensor
    principal_point: torch.Tensor

    def intrinsics(self) -> torch.Tensor:
        """``(N, 3, 3)`` float64 pinhole matrices."""
        K = torch.zeros(len(self.focal), 3, 3, dtype=torch.float64, device=self.focal.device)
        K[:, 0, 0] = K[:, 1, 1] = self.focal.double()
        K[:, :2, 2] = self.principal_point.double()
        K[:, 2, 2] = 1
        return K

    def points(self) -> torch.Tensor:
        """``(N, H, W, 3)`` world points of every pixel."""
        return world_points(self.depth, self.focal, self.principal_point, self.cam_to_world)


def rotate(rotation: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``(B, 3, 3)`` rotations (or any 3x3 matrices) applied to ``(B, ..., 3)`` points.

    Written as broadcast multiply-adds rather than a batched matrix product: the product's
    backward for the matrices is a GEMM with inner size ``...`` and outer size 3, which GPUs
    run slowly (it was most of the dense alignment's time).
    """
    r = rotation.reshape((len(rotation),) + (1,) * (points.dim() - 2) + (3, 3))
    return (points[..., 0:1] * r[..., 0] + points[..., 1:2] * r[..., 1]
            + points[..., 2:3] * r[..., 2])


def _back_project(depth: torch.Tensor, focal: torch.Tensor, principal_point: torch.Tensor,
                  rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """``(N, H, W)`` depths to ``(N, H, W, 3)`` world points, given each camera's focal
    ``(N,)``, principal point ``(N, 2)`` and camera-to-world rotation ``(N, 3, 3)`` and
    translation ``(N, 3)``."""
    N, H, W = depth.shape
    uv = pixel_grid(H, W, depth)[None] - principal_point.to(depth.dtype)[:, None, None]
    cam = torch.cat([uv / focal.to(depth.dtype)[:, None, None, None],
                     torch.ones_like(depth)[..., None]], -1) * depth[..., None]
    return rotate(rotation.to(depth.dtype), cam) + translation.to(depth.dtype)[:, None, None]


def world_points(depth: torch.Tensor, focal: torch.Tensor, principal_point: torch.Tensor,
                 cam_to_world: torch.Tensor) -> torch.Tensor:
    """Back-project ``(N, H, W)`` depth maps to world points ``(N, H, W, 3)`` (pixels of
    focal ``(N,)``, principal point ``(N, 2)``; camera-to-world poses ``(N, 4, 4)``)."""
    return _back_project(depth, focal, principal_point, cam_to_world[:, :3, :3],
                         cam_to_world[:, :3, 3])


def _apply(scale: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor,
           points: torch.Tensor) -> torch.Tensor:
    """Apply a batch of Sim(3) ``(E,), (E, 3, 3), (E, 3)`` to ``(E, ..., 3)`` points."""
    extra = (1,) * (points.dim() - 2)
    return scale.reshape((-1,) + extra + (1,)) * rotate(rotation, points.to(rotation.dtype)) \
        + translation.reshape((len(translation),) + extra + (3,))


def _max_per_view(view: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    """``(n, H, W)`` maximum of the ``(E, H, W)`` ``values`` over the pairs of each view
    (0 where a view has none)."""
    out = values.new_zeros((n,) + values.shape[1:], dtype=torch.float32)
    for v in range(n):
        mine = values[view == v]
        if len(mine):
            out[v] = mine.amax(0)
    return out


def _spanning_tree(n: int, edges: list[tuple[int, int]], scores: list[float]
                   ) -> list[tuple[int, int]]:
    """Maximum spanning tree by Prim, as (placed view, new view) in visiting order, starting
    from the best edge's first view. Raises ``ValueError`` when the graph is disconnected."""
    best = max(range(len(edges)), key=scores.__getitem__)
    placed = {edges[best][0]}
    order = []
    while len(placed) < n:
        candidates = [(s, a, b) for (a, b), s in zip(edges, scores)
                      if (a in placed) != (b in placed)]
        if not candidates:
            missing = sorted(set(range(n)) - placed)
            raise ValueError(f"the pair graph does not connect views {missing} to the others")
        _, a, b = max(candidates)
        old, new = (a, b) if a in placed else (b, a)
        placed.add(new)
        order.append((old, new))
    return order


def spanning_tree_init(pred: PairPredictions, n: int,
                       focal: torch.Tensor | None = None,
                       principal_point: torch.Tensor | None = None) -> ViewEstimate:
    """Initial cameras and depths from pairwise Sim(3) fits along the spanning tree.

    Args:
        pred: Predictions of a symmetric pair graph (every view is ``first`` of some pair).
        n: Number of views.
        focal: ``(N,)`` known focal lengths in pixels (else estimated from the pointmaps).
        principal_point: ``(N, 2)`` known principal points (else the image centres).
    """
    H, W = pred.shape
    dev = pred.points1.device
    score = (pred.conf1.flatten(1).mean(1) * pred.conf2.flatten(1).mean(1)).tolist()
    first, second = pred.first.tolist(), pred.second.tolist()
    own_best = {}
    for e, (i, s) in enumerate(zip(first, score)):
        if i not in own_best or s > score[own_best[i]]:
            own_best[i] = e
    if len(own_best) < n:
        raise ValueError(f"views {sorted(set(range(n)) - set(own_best))} are never the first "
                         "view of a pair: use a symmetric pair graph")
    by_pair = {(i, j): e for e, (i, j) in enumerate(zip(first, second))}
    root = first[max(range(len(score)), key=score.__getitem__)]
    placed = {root: pred.points1[own_best[root]].double()}
    for old, new in _spanning_tree(n, list(zip(first, second)), score):
        e = by_pair.get((old, new))
        if e is not None:          # old is the pair's frame: align its own pointmap
            src, weight, moved = pred.points1[e], pred.conf1[e], pred.points2[e]
        else:
            e = by_pair[(new, old)]
            src, weight, moved = pred.points2[e], pred.conf2[e], pred.points1[e]
        s, R, t = fit_similarity_batched(src.reshape(1, -1, 3), placed[old].reshape(1, -1, 3),
                                         weight.reshape(1, -1))
        placed[new] = _apply(s, R, t, moved[None])[0]
    own = torch.stack([pred.points1[own_best[v]] for v in range(n)]).double()   # (N, H, W, 3)
    own_conf = torch.stack([pred.conf1[own_best[v]] for v in range(n)])
    target = torch.stack([placed[v] for v in range(n)])
    s, R, t = fit_similarity_batched(own.reshape(n, -1, 3), target.reshape(n, -1, 3),
                                     own_conf.reshape(n, -1))
    poses = torch.eye(4, dtype=torch.float64, device=dev).repeat(n, 1, 1)
    poses[:, :3, :3], poses[:, :3, 3] = R, t
    if principal_point is None:
        principal_point = torch.tensor([(W - 1) / 2, (H - 1) / 2], dtype=torch.float64,
                                       device=dev).expand(n, 2)
    if focal is None:
        focal = estimate_focal(own, principal_point,
                               mask=own_conf >= own_conf.flatten(1).median(1).values[:, None,
                                                                                     None])
    confidence = torch.maximum(_max_per_view(pred.first, pred.conf1, n),
                               _max_per_view(pred.second, pred.conf2, n))
    degenerate = ~torch.isfinite(focal) | (focal <= 0) | ~torch.isfinite(s) | (s <= 0)
    if degenerate.any():
        raise ValueError(f"views {degenerate.nonzero()[:, 0].tolist()}: the network's pointmaps "
                         "give no valid camera (points behind the camera or not finite); "
                         "check the weights and that the images overlap")
    return ViewEstimate(poses, focal.double(), (s[:, None, None] * own[..., 2]).clamp(min=1e-9),
                        confidence, principal_point.double())


def quaternion_to_rotation(q: torch.Tensor) -> torch.Tensor:
    """``(..., 4)`` quaternions (x, y, z, w; any norm) to ``(..., 3, 3)`` rotations."""
    x, y, z, w = F.normalize(q, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1
    ).reshape(q.shape[:-1] + (3, 3))


def rotation_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """``(N, 3, 3)`` rotations to ``(N, 4)`` unit quaternions (x, y, z, w)."""
    m = R.double()
    w = torch.sqrt((1 + m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]).clamp(min=0)) / 2
    x = torch.sqrt((1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2]).clamp(min=0)) / 2
    y = torch.sqrt((1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2]).clamp(min=0)) / 2
    z = torch.sqrt((1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]).clamp(min=0)) / 2
    x = torch.copysign(x, m[:, 2, 1] - m[:, 1, 2])
    y = torch.copysign(y, m[:, 0, 2] - m[:, 2, 0])
    z = torch.copysign(z, m[:, 1, 0] - m[:, 0, 1])
    return torch.stack([x, y, z, w], -1)


class CameraState(NamedTuple):
    """Optimised camera tensors (see :class:`CameraParameters`), as the losses take them:
    losses are functions of tensors only, so that a compiled loss is reused across sets."""

    quat: torch.Tensor
    trans: torch.Tensor
    log_focal: torch.Tensor
    log_depth: torch.Tensor
    principal_point: torch.Tensor


class CameraParameters(torch.nn.Module):
    """Optimisable poses (quaternion, translation), log focal (one per view, or one shared
    by all: ``(1,)``) and per-pixel log depth of N views."""

    def __init__(self, init: ViewEstimate, optimise_focal: bool, log_depth: torch.Tensor,
                 shared_focal: bool = False) -> None:
        super().__init__()
        self.quat = torch.nn.Parameter(rotation_to_quaternion(init.cam_to_world[:, :3, :3])
                                       .float())
        self.trans = torch.nn.Parameter(init.cam_to_world[:, :3, 3].float())
        log_focal = init.focal.float().log()
        if shared_focal:
            log_focal = log_focal.mean().reshape(1)
        self.log_focal = torch.nn.Parameter(log_focal, requires_grad=optimise_focal)
        self.log_depth = torch.nn.Parameter(log_depth)
        self.principal_point = init.principal_point.float()

    def state(self) -> CameraState:
        """The tensors the losses read."""
        return CameraState(self.quat, self.trans, self.log_focal, self.log_depth,
                            self.principal_point)

    def estimate(self, depth: torch.Tensor, confidence: torch.Tensor) -> ViewEstimate:
        """The current views with the given ``(N, H, W)`` depth maps."""
        poses = torch.eye(4, dtype=torch.float64, device=depth.device).repeat(len(depth), 1, 1)
        poses[:, :3, :3] = quaternion_to_rotation(self.quat.detach()).double()
        poses[:, :3, 3] = self.trans.detach().double()
        focal = self.log_focal.detach().exp().double().expand(len(depth)).clone()
        return ViewEstimate(poses, focal, depth.detach(),
                            confidence, self.principal_point.double())


class _DenseTargets(NamedTuple):
    """What the dense loss compares: the pairs' pointmaps and their ``log(conf)`` weights."""

    first: torch.Tensor
    second: torch.Tensor
    points1: torch.Tensor
    points2: torch.Tensor
    weight1: torch.Tensor
    weight2: torch.Tensor
    norm: torch.Tensor


def _dense_loss(cams: CameraState, pair_quat: torch.Tensor, pair_trans: torch.Tensor,
                pair_log_scale: torch.Tensor, targets: _DenseTargets) -> torch.Tensor:
    """Weighted distance between ``S_e`` applied to the pairs' pointmaps and the views'
    back-projected depths, summed over all pairs and divided by their total pixel count, as
    the official aligner normalises it (pair log scales centred)."""
    focal = cams.log_focal.exp().expand(len(cams.log_depth))
    world = _back_project(cams.log_depth.exp(), focal, cams.principal_point,
                          quaternion_to_rotation(cams.quat), cams.trans)
    scale = (pair_log_scale - pair_log_scale.mean()).exp()
    rot = quaternion_to_rotation(pair_quat)
    d1 = (_apply(scale, rot, pair_trans, targets.points1) - world[targets.first]).norm(dim=-1)
    d2 = (_apply(scale, rot, pair_trans, targets.points2) - world[targets.second]).norm(dim=-1)
    return ((targets.weight1 * d1).sum() + (targets.weight2 * d2).sum()) / targets.norm


def refine_dense(pred: PairPredictions, init: ViewEstimate, settings: AlignmentSettings,
                 optimise_focal: bool = True) -> tuple[ViewEstimate, float]:
    """DUSt3R-style dense global alignment from ``init``; returns the views and final loss.

    The loss is the ``log(conf)``-weighted Euclidean distance between ``S_e`` applied to the
    pairs' pointmaps and the views' back-projected depths over all pixels of all pairs,
    divided by their number; the pairs' log scales are centred (geometric mean 1) to fix the
    gauge. As upstream, the learning rate decays (cosine) to 1e-6, and the focal length moves
    as ``20 log f`` would (its learning rate a twentieth of the others').
    """
    targets = init.points()
    s, R, t = fit_similarity_batched(
        torch.cat([pred.points1, pred.points2], 1).reshape(len(pred.first), -1, 3),
        torch.cat([targets[pred.first], targets[pred.second]], 1).reshape(len(pred.first), -1,
                                                                          3),
        torch.cat([pred.conf1, pred.conf2], 1).reshape(len(pred.first), -1))
    # gauge: pair scales have geometric mean 1, so the world is shrunk by theirs
    gauge = s.log().mean().exp()
    init = ViewEstimate(torch.cat([init.cam_to_world[:, :3], init.cam_to_world[:, 3:]], 1),
                        init.focal, init.depth / gauge, init.confidence, init.principal_point)
    init.cam_to_world[:, :3, 3] /= gauge
    cams = CameraParameters(init, optimise_focal, init.depth.float().log(),
                            settings.shared_focal and optimise_focal)
    pair_quat = torch.nn.Parameter(rotation_to_quaternion(R).float())
    pair_trans = torch.nn.Parameter((t / gauge).float())
    pair_log_scale = torch.nn.Parameter((s / gauge).float().log())
    w1, w2 = pred.conf1.float().log(), pred.conf2.float().log()
    dense = _DenseTargets(pred.first, pred.second, pred.points1.float(), pred.points2.float(),
                          w1, w2, torch.tensor(float(w1.numel()), device=w1.device))
    loss = compiled_if(settings.compile, _dense_loss)
    final = minimise([([cams.quat, cams.trans, cams.log_depth, pair_quat, pair_trans,
                        pair_log_scale], 1.0), ([cams.log_focal], FOCAL_RATE)],
                     lambda: loss(cams.state(), pair_quat, pair_trans, pair_log_scale, dense),
                     settings.iterations, settings.lr, lr_min=DENSE_LR_MIN)
    return cams.estimate(cams.log_depth.detach().exp(), init.confidence), final


def unstretched(pred: PairPredictions, intrinsics: torch.Tensor) -> PairPredictions:
    """The pairs' answers with the stretch of each pair's first camera's focal
    error undone, given the calibrated ``(N, 3, 3)`` intrinsics: both pointmaps of a pair are
    in its first camera's frame, where a network that misjudges that camera's focal by a
    factor ``r`` divides x and y by ``r``
    (:func:`~threer_ros.geometry.registration.focal_stretch`)."""
    trusted = pred.conf1 >= pred.conf1.flatten(1).median(1).values[:, None, None]
    ratio = focal_stretch(pred.points1, intrinsics[pred.first], trusted)[:, None, None, None]

    def undo(points: torch.Tensor) -> torch.Tensor:
        return torch.cat([points[..., :2] * ratio.to(points.dtype), points[..., 2:]], -1)

    return PairPredictions(pred.first, pred.second, undo(pred.points1), undo(pred.points2),
                           pred.conf1, pred.conf2)


def calibrated_points(pred: PairPredictions, intrinsics: torch.Tensor,
                      cam_to_rig: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Calibrated fast path: rig-frame points ``(N, H, W, 3)`` and confidence ``(N, H, W)``.

    As the official known-pose mode does, only the networks' depths are kept: each view's
    points are its depth map along its calibrated rays, placed by its calibrated pose (a
    network's own x and y carry its focal error and would fan the views out sideways). Each
    pair's unit is the closed-form, re-weighted scale that puts its second view's points on the
    calibrated rays of that camera, after undoing the stretch of the pair's answers by the
    focal error of its first view (:func:`unstretched`); each view's depth is the
    confidence-weighted mean of the scaled depths of the pairs it leads. Pixels no pair puts
    in front of the camera are NaN.
    """
    E = len(pred.first)
    H, W = pred.shape
    dev = pred.points1.device
    rays = rays_of_views(intrinsics.double(), H, W).reshape(len(intrinsics), -1, 3)
    pose_i, pose_j = cam_to_rig[pred.first].double(), cam_to_rig[pred.second].double()
    directions = torch.einsum("eij,epj->epi", pose_j[:, :3, :3], rays[pred.second])
    pred = unstretched(pred, intrinsics)
    scale = ray_consistent_scale(pred.points2.reshape(E, -1, 3), pose_i,
                                 pose_j[:, None, :3, 3].expand_as(directions), directions,
                                 pred.conf2.reshape(E, -1))
    depth = scale[:, None, None] * pred.points1[..., 2].double()
    n = len(cam_to_rig)
    weight = torch.where(depth > 0, pred.conf1.double(), 0.0)
    sums = torch.zeros(n, H, W, dtype=torch.float64, device=dev).index_add_(
        0, pred.first, torch.where(depth > 0, depth, 0.0) * weight)
    total = torch.zeros(n, H, W, dtype=torch.float64, device=dev).index_add_(0, pred.first,
                                                                              weight)
    mean_depth = torch.where(total > 0, sums / total.clamp(min=1e-300), float("nan"))
    confidence = _max_per_view(pred.first, pred.conf1, n)
    return depths_to_rig(mean_depth, intrinsics.double(), cam_to_rig.double()), confidence
