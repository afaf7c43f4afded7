"""MASt3R's sparse global alignment as published (Leroy et al. 2024; the official
``sparse_global_alignment`` with its demo's defaults), our code.

Input: the predictions of a symmetric pair graph (every pair decoded both ways) and the
pairs' correspondences (:func:`threer_ros.geometry.matching.four_way_matches`).

1. **Canonical views.** A view's own-frame pointmaps (one per pair it leads) are averaged with
   weights ``conf - 0.999``. Its depth is then carried by *anchors*, one per ``subsample``
   block of pixels (at the block's pixel ``(s // 2, s // 2)``; officially 8 px at any size;
   ours with known focal lengths: the same fraction of the image as 8 px of the official
   512 px, :func:`scaled_subsample`; with one unknown focal shared by all views: every
   pixel, ``SparseSettings.anchor_block``); every other pixel keeps a fixed depth ratio to its
   block's anchor, from the confidence-weighted mean over the pairs of the angle between the
   pixel's and the anchor's points ("avg-angle"). The focal length is the
   Weiszfeld estimate from the canonical pointmap (the official code clamps it to 0.5-3.5
   times the focal of a 60 degree field of view; ``SparseSettings.focal_range``).
2. **Cameras.** Poses are a kinematic chain (:mod:`threer_ros.geometry.kinematic_chain`), each
   view's pose relative to its parent, all starting at the identity. A view's translation
   places the point of its image centre at its median anchor depth, so that a focal change
   moves the camera along its axis and keeps the scene's size; each view has a log scale, and
   the world takes the smallest view's scale.
3. **Coarse stage** (lr 0.07, 300 steps): poses and scales; loss: the confidence-weighted
   gamma-1.5 loss of the 3D distance between the two points of every correspondence.
4. **Fine stage** (lr 0.01, 300 steps, the demo's ``refine+depth``): also focal lengths,
   anchor depths and (officially; ``SparseSettings.optimise_principal_point``) principal
   points; loss: the gamma-0.5 loss of each correspondence's
   reprojection error (pixels) in both views.

Both stages: Adam (betas 0.9, 0.9) with the learning rate decaying to 0 (cosine), quaternions
renormalised after each step. Pairs whose matches are missing or never more confident than
``matching_confidence`` leave the match losses and enter at weight 0.01 with a gamma-1.1 loss
between the view's anchor points and the pair's own prediction of them placed by the other
camera (DUSt3R's regression, sparsified).

Conventions as :mod:`threer_ros.geometry.global_alignment`: OpenCV camera frames,
camera-to-world poses, pixel ``(u, v)`` = (column, row) with integer pixel centres; the world
is in the network's unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from threer_ros.geometry.global_alignment import (PairPredictions, ViewEstimate,
                                                  quaternion_to_rotation, rotate)
from threer_ros.geometry.kinematic_chain import kinematic_chain
from threer_ros.geometry.matching import Correspondences
from threer_ros.geometry.optimisation import compiled_if, minimise
from threer_ros.geometry.registration import estimate_focal, pixel_grid


#: The official demo's anchor block size and matching seed stride (pixels) and the network
#: image size (long side, pixels) it is used at.
OFFICIAL_SUBSAMPLE, OFFICIAL_SIZE = 8, 512


def scaled_subsample(height: int, width: int) -> int:
    """Anchor block size (pixels) covering the fraction of an ``height`` x ``width`` image
    that the official 8 px cover of its 512 px images: the power of two nearest (in ratio)
    to ``8 * max(height, width) / 512``, from 1 to 16 (powers of two up to 16 divide the
    networks' image sizes, multiples of 16). 96 and 128 px: 2; 256 px: 4; 512 px: 8."""
    exact = OFFICIAL_SUBSAMPLE * max(height, width) / OFFICIAL_SIZE
    return 2 ** min(4, max(0, round(math.log2(exact))))


@dataclass(frozen=True)
class SparseSettings:
    """Settings of the sparse alignment (defaults: the official demo's).

    Attributes:
        subsample: Matching seed stride (pixels), and the anchor block size unless
            ``anchor_block`` is set (officially both are ``subsample``); None (the default):
            with known or shared focal lengths :func:`scaled_subsample` of the network images
            (ours), with a focal per view 8 (official, at any size; docs/backends.md).
        anchor_block: Anchor block size (pixels); None: 1 with ``shared_focal`` and unknown
            focal lengths (every pixel's depth its own unknown; only matched pixels move),
            else as ``subsample`` (docs/backends.md).
        coarse_lr, coarse_iterations, coarse_gamma: The 3D stage.
        fine_lr, fine_iterations, fine_gamma: The 2D stage.
        fallback_gamma, fallback_weight: The regression loss of pairs without usable matches.
        matching_confidence: A pair's matches are used when the best of them is more confident
            than this (the demo's 0: any match).
        kinematic: Kinematic chain, ``hclust-ward`` or ``mst``.
        focal_range: The initial focal estimate is clamped to this range, in units of the
            focal of a 60 degree field of view over the long side. Official: (0.5, 3.5);
            ours: no upper bound, as capture rigs use longer lenses (docs/backends.md).
        optimise_principal_point: Free in the fine stage (official: True; ours: False,
            docs/backends.md).
        optimise_depth: Anchor depths free in the fine stage (the demo's ``refine+depth``).
        match_tolerance: A match is kept when its pair's own pointmaps put its two points within
            this fraction of the pair's median depth of each other (official: no such filter,
            0; ours: 0.02, docs/backends.md).
        shared_focal: One focal length for every view (the official ``shared_intrinsics``,
            for rigs of identical cameras and lenses), starting at the canonical focals'
            mean weighted by the views' mean confidence.
        compile: ``torch.compile`` the losses.
    """

    subsample: int | None = None
    anchor_block: int | None = None
    coarse_lr: float = 0.07
    coarse_iterations: int = 300
    coarse_gamma: float = 1.5
    fine_lr: float = 0.01
    fine_iterations: int = 300
    fine_gamma: float = 0.5
    fallback_gamma: float = 1.1
    fallback_weight: float = 0.01
    matching_confidence: float = 0.0
    kinematic: str = "hclust-ward"
    focal_range: tuple[float, float] = (0.5, math.inf)
    optimise_principal_point: bool = False
    optimise_depth: bool = True
    match_tolerance: float = 0.02
    shared_focal: bool = False
    compile: bool = False

    def block(self, height: int, width: int, focal_known: bool) -> int:
        """The matching seed stride (pixels) for ``height`` x ``width`` network images, with
        known, shared or per-view focal lengths (finer seeds and anchors remove the anchor
        model's depth errors from the poses, but with a free focal per view they also let
        the focals drift: docs/backends.md)."""
        if self.subsample is not None:
            return self.subsample
        if focal_known or self.shared_focal:
            return scaled_subsample(height, width)
        return OFFICIAL_SUBSAMPLE

    def anchors(self, height: int, width: int, focal_known: bool) -> int:
        """The anchor block size (pixels) for ``height`` x ``width`` network images."""
        if self.anchor_block is not None:
            return self.anchor_block
        if self.shared_focal and not focal_known:
            return 1
        return self.block(height, width, focal_known)


class Gamma(NamedTuple):
    """A gamma loss as the losses take it (tensors, so that a compiled loss is reused for
    every gamma): the power and the offset ``o`` that gives the loss slope 1 at 0."""

    power: torch.Tensor
    offset: torch.Tensor

    @classmethod
    def of(cls, gamma: float, device: torch.device | str = "cpu") -> "Gamma":
        """The loss of power ``gamma`` (offset 0 for ``gamma == 1``: the distance itself)."""
        offset = 0.0 if gamma == 1 else (1 / gamma) ** (1 / (gamma - 1))
        return cls(torch.tensor(float(gamma), device=device),
                   torch.tensor(offset, device=device))


def gamma_loss(distance: torch.Tensor, gamma: Gamma) -> torch.Tensor:
    """MASt3R's robust loss of non-negative distances: ``(d + o)^gamma - o^gamma``."""
    return (distance + gamma.offset) ** gamma.power - gamma.offset ** gamma.power


class CanonicalViews(NamedTuple):
    """Each view's canonical geometry (N views, H x W pixels, anchors every ``s`` pixels).

    Attributes:
        points: ``(N, H, W, 3)`` averaged own-frame pointmaps (network unit).
        ratio: ``(N, H, W)`` each pixel's depth over its block anchor's (1 at anchors).
        confidence: ``(N, H, W)`` ``sum(c^2) / sum(c)`` of ``c = conf - 0.999``.
        focal: ``(N,)`` focal lengths (pixels) estimated from ``points``.
    """

    points: torch.Tensor
    ratio: torch.Tensor
    confidence: torch.Tensor
    focal: torch.Tensor


def _at_anchor(x: torch.Tensor, s: int) -> torch.Tensor:
    """``(B, H, W, ...)`` -> the value at each pixel's block anchor, same shape."""
    return x[:, s // 2::s, s // 2::s].repeat_interleave(s, 1).repeat_interleave(s, 2)


def canonical_views(pred: PairPredictions, n: int, subsample: int,
                    principal_point: torch.Tensor,
                    focal_range: tuple[float, float] = (0.5, math.inf)) -> CanonicalViews:
    """Canonical pointmaps, anchor depth ratios, confidences and focals (module docstring).

    Args:
        pred: Predictions of a symmetric pair graph, images divisible by ``subsample``.
        n: Number of views.
        subsample: Anchor block size (pixels).
        principal_point: ``(N, 2)`` pixels, for the focal estimate.
        focal_range: Clamp of the focal estimate, in focals of a 60 degree field of view.
    """
    E, H, W, _ = pred.points1.shape
    if H % subsample or W % subsample:
        raise ValueError(f"sparse alignment needs images divisible by subsample={subsample}, "
                         f"got {W}x{H}")
    dev = pred.points1.device
    points = pred.points1.float()
    weight = pred.conf1.float() - 0.999
    count = torch.zeros(n, device=dev).index_add_(0, pred.first, torch.ones(E, device=dev))
    if (count == 0).any():
        raise ValueError(f"views {(count == 0).nonzero()[:, 0].tolist()} are never the first "
                         "view of a pair: use a symmetric pair graph")

    def per_view(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros((n,) + x.shape[1:], device=dev).index_add_(0, pred.first, x)

    total = per_view(weight)
    canon = per_view(weight[..., None] * points) / total[..., None]
    # anchors at or behind their camera (an untrained network) are moved just in front of
    # it, rather than stopping the alignment (the official code asserts)
    floor = 1e-3 * canon[..., 2].abs().median().clamp(min=1e-12)
    canon[..., 2] = canon[..., 2].clamp(min=floor)
    depth = points[..., 2]
    radius = (points[..., :2] - _at_anchor(points[..., :2], subsample)).norm(dim=-1)
    radius = radius.clamp(min=1e-8)
    anchor_depth = _at_anchor(depth, subsample).clamp(min=torch.finfo(depth.dtype).eps)
    angle = torch.atan((depth - anchor_depth) / radius)
    mean_angle = per_view(weight * angle) / total
    mean_radius = per_view(radius) / count[:, None, None]
    ratio = 1 + mean_radius * torch.tan(mean_angle) / _at_anchor(canon[..., 2], subsample)
    confidence = per_view(weight * weight) / total
    base = max(H, W) / (2 * math.tan(math.radians(30)))
    focal = estimate_focal(canon.double(), principal_point.double()).clamp(
        focal_range[0] * base, focal_range[1] * base)
    return CanonicalViews(canon, ratio, confidence, focal)


class _Ends(NamedTuple):
    """Correspondences of the U usable pairs laid out per pair side, as the losses read them.

    Group ``g < U`` holds the first ends of pair ``g``'s matches, group ``U + g`` their
    second ends, each padded to the K matches of the largest pair (padding repeats a real
    match with weight 0), so per-view parameters are gathered per group, not per match.

    ``view``, ``other``: ``(2U,)`` the group's view and its matches' other view; ``uv``:
    ``(2U, K, 2)`` pixels; ``target``: ``(2U, K, 2)`` the other ends' pixels; ``anchor``:
    ``(2U, K)`` index of each pixel's anchor in the flattened ``(N, A)`` anchors; ``ratio``:
    ``(2U, K)`` its canonical depth ratio; ``weight``: ``(U, K)`` confidences summing to 1.
    """

    view: torch.Tensor
    other: torch.Tensor
    uv: torch.Tensor
    target: torch.Tensor
    anchor: torch.Tensor
    ratio: torch.Tensor
    weight: torch.Tensor


class _Fallback(NamedTuple):
    """Decodings ``e = (frame, moving)`` of the pairs without usable matches: ``points``
    ``(F, A, 3)`` the pair's prediction of view ``moving`` at its anchors in view ``frame``'s
    camera frame, ``weight`` ``(F, A)`` its confidences, summing to 1."""

    frame: torch.Tensor
    moving: torch.Tensor
    points: torch.Tensor
    weight: torch.Tensor


class _Fixed(NamedTuple):
    """What the cameras are built from besides the optimised tensors: ``base_focal``,
    ``median`` ``(N,)``; ``image_size`` ``(2,)`` (W, H); ``centre`` ``(2,)`` the image centre
    pixel; ``anchor_uv`` ``(A, 2)`` the anchor pixels; ``focal_clamp`` ``(2,)`` the focal
    range (0.25 to 10 image diagonals); ``levels``: the kinematic chain's ``(parents,
    children)`` per depth."""

    base_focal: torch.Tensor
    median: torch.Tensor
    image_size: torch.Tensor
    centre: torch.Tensor
    anchor_uv: torch.Tensor
    focal_clamp: torch.Tensor
    levels: list[tuple[torch.Tensor, torch.Tensor]]


class _Unknowns(NamedTuple):
    """The optimised tensors: relative ``quat`` ``(N, 4)`` (x, y, z, w) and ``trans``
    ``(N, 3)`` of the chain, ``log_size`` ``(N,)``, ``log_focal`` ``(N,)`` (``(1,)`` when
    shared), ``principal`` ``(N, 2)`` as a fraction of the image size, ``depth`` ``(N, A)``
    anchor depths over the view's median."""

    quat: torch.Tensor
    trans: torch.Tensor
    log_size: torch.Tensor
    log_focal: torch.Tensor
    principal: torch.Tensor
    depth: torch.Tensor


class _Cameras(NamedTuple):
    """Cameras in the world: ``rotation`` ``(N, 3, 3)`` and ``centre`` ``(N, 3)``
    (camera-to-world), ``focal`` ``(N,)`` and ``principal`` ``(N, 2)`` pixels, ``depth``
    ``(N, A)`` anchor depths."""

    rotation: torch.Tensor
    centre: torch.Tensor
    focal: torch.Tensor
    principal: torch.Tensor
    depth: torch.Tensor


def _cameras(x: _Unknowns, fixed: _Fixed) -> _Cameras:
    """World cameras from the chain parameters (module docstring, step 2)."""
    focal = x.log_focal.exp().clamp(fixed.focal_clamp[0], fixed.focal_clamp[1])
    size = x.log_size.exp()
    focal = focal.expand_as(size)               # a shared focal length is one value
    scale = 1 / size.min()
    plane = size * fixed.median * focal / fixed.base_focal     # depth of the median plane
    rotation, trans = quaternion_to_rotation(x.quat), x.trans
    for parents, children in fixed.levels:
        trans = trans.index_copy(0, children, rotate(rotation[parents], trans[children])
                                 + trans[parents])
        rotation = rotation.index_copy(0, children, rotation[parents] @ rotation[children])
    principal = x.principal * fixed.image_size
    to_centre = torch.cat([(fixed.centre - principal) / focal[:, None],
                           torch.ones_like(focal)[:, None]], -1) * plane[:, None]
    centre = scale * (trans - rotate(rotation, to_centre))
    depth = scale * (plane[:, None] + (x.depth - 1) * (fixed.median * size)[:, None])
    return _Cameras(rotation, centre, focal, principal, depth)


def _end_points(cams: _Cameras, fixed: _Fixed, ends: _Ends) -> torch.Tensor:
    """``(2U, K, 3)`` world points of the match ends."""
    focal = cams.focal[ends.view, None]
    ratio = 1 + (ends.ratio - 1) * (fixed.base_focal[ends.view, None] / focal)
    depth = cams.depth.flatten()[ends.anchor] * ratio
    ray = torch.cat([(ends.uv - cams.principal[ends.view, None]) / focal[..., None],
                     torch.ones_like(depth)[..., None]], -1)
    return rotate(cams.rotation[ends.view], ray * depth[..., None]) + cams.centre[ends.view, None]


def _fallback_loss(cams: _Cameras, fixed: _Fixed, fallback: _Fallback, gamma: Gamma
                   ) -> torch.Tensor:
    """Weighted gamma loss between the moving views' anchor points and the pairs' predictions
    of them placed by the frame views' cameras."""
    moving = fallback.moving
    ray = torch.cat([(fixed.anchor_uv - cams.principal[moving, None])
                     / cams.focal[moving, None, None],
                     torch.ones_like(cams.depth[moving])[..., None]], -1)
    own = rotate(cams.rotation[moving], ray * cams.depth[moving, :, None]) \
        + cams.centre[moving, None]
    predicted = rotate(cams.rotation[fallback.frame], fallback.points) \
        + cams.centre[fallback.frame, None]
    return (fallback.weight * gamma_loss((own - predicted).norm(dim=-1), gamma)).sum()


def _coarse_loss(x: _Unknowns, fixed: _Fixed, ends: _Ends, fallback: _Fallback | None,
                 gamma: Gamma, fallback_gamma: Gamma, fallback_weight: torch.Tensor
                 ) -> torch.Tensor:
    """Stage 1: gamma loss of the 3D distance between the two points of every match."""
    cams = _cameras(x, fixed)
    loss = torch.zeros((), device=x.quat.device)
    if len(ends.view):
        first, second = _end_points(cams, fixed, ends).chunk(2)
        loss = (ends.weight * gamma_loss((first - second).norm(dim=-1), gamma)).sum()
    if fallback is not None:
        loss = loss + fallback_weight * _fallback_loss(cams, fixed, fallback, fallback_gamma)
    return loss


def _fine_loss(x: _Unknowns, fixed: _Fixed, ends: _Ends, fallback: _Fallback | None,
               gamma: Gamma, fallback_gamma: Gamma, fallback_weight: torch.Tensor
               ) -> torch.Tensor:
    """Stage 2: gamma loss of the reprojection error (pixels) of every match end's point in
    the other view."""
    cams = _cameras(x, fixed)
    loss = torch.zeros((), device=x.quat.device)
    if len(ends.view):
        cam = rotate(cams.rotation[ends.other].transpose(-1, -2),
                     _end_points(cams, fixed, ends) - cams.centre[ends.other, None])
        uv = cam[..., :2] / cam[..., 2:].clamp(min=1e-3) * cams.focal[ends.other, None, None] \
            + cams.principal[ends.other, None]
        error = gamma_loss((uv.clamp(-1000, 2000) - ends.target).norm(dim=-1), gamma)
        first, second = error.chunk(2)
        loss = (ends.weight * (first + second)).sum() / 2
    if fallback is not None:
        loss = loss + fallback_weight * _fallback_loss(cams, fixed, fallback, fallback_gamma)
    return loss


def _ends(pred: PairPredictions, matches: Correspondences, canon: CanonicalViews,
          subsample: int) -> _Ends:
    """Group the matches by pair and pad them (see :class:`_Ends`)."""
    n, H, W = canon.ratio.shape
    dev = canon.ratio.device
    grid_w, anchors = W // subsample, (H // subsample) * (W // subsample)
    order = torch.argsort(matches.pair, stable=True)
    pairs, counts = torch.unique_consecutive(matches.pair[order], return_counts=True)
    U, K = len(pairs), int(counts.max()) if len(counts) else 0
    starts = torch.cumsum(counts, 0) - counts
    group = torch.repeat_interleave(torch.arange(U, device=dev), counts)
    slot = torch.arange(len(order), device=dev) - starts[group]
    index = order[starts].repeat_interleave(K).reshape(U, K)      # padding: the first match
    index[group, slot] = order
    weight = torch.zeros(U, K, device=dev)
    weight[group, slot] = matches.weight[order].float()
    view = torch.cat([pred.first[pairs], pred.second[pairs]])
    pixels = torch.cat([matches.pixel1[index], matches.pixel2[index]])       # (2U, K)
    uv = pixel_grid(H, W, canon.ratio).reshape(-1, 2)[pixels]
    block = (pixels // W // subsample) * grid_w + pixels % W // subsample
    return _Ends(view, view.roll(U), uv, uv.roll(U, 0), view[:, None] * anchors + block,
                 canon.ratio.flatten(1)[view[:, None], pixels],
                 weight / weight.sum().clamp(min=1e-12))


def _usable_pairs(pred: PairPredictions, matches: Correspondences, threshold: float
                  ) -> torch.Tensor:
    """``(E,)`` bool: the pair of decoding e (either direction) has a match more confident
    than ``threshold``."""
    n = int(torch.maximum(pred.first.max(), pred.second.max())) + 1
    best = torch.full((n * n,), -math.inf, device=pred.first.device)
    key = pred.first[matches.pair] * n + pred.second[matches.pair]
    best = best.scatter_reduce(0, key, matches.weight.float(), reduce="amax")
    best = torch.maximum(best, best.reshape(n, n).T.flatten())
    return best[pred.first * n + pred.second] > threshold


def _fallback(pred: PairPredictions, usable: torch.Tensor, subsample: int
              ) -> _Fallback | None:
    """The fallback terms of the decodings of unusable pairs (None when every pair has
    usable matches)."""
    if usable.all():
        return None
    s = subsample
    bad = (~usable).nonzero()[:, 0]
    points = pred.points2[bad][:, s // 2::s, s // 2::s].float().flatten(1, 2)
    weight = pred.conf2[bad][:, s // 2::s, s // 2::s].float().flatten(1)
    return _Fallback(pred.first[bad], pred.second[bad], points,
                     weight / weight.sum().clamp(min=1e-12))


def consistent_matches(pred: PairPredictions, matches: Correspondences, tolerance: float
                       ) -> Correspondences:
    """The matches whose two points, as their pair's decoding predicts them, lie within
    ``tolerance`` times that decoding's median depth of each other (all when 0)."""
    if tolerance <= 0:
        return matches
    first = pred.points1.flatten(1, 2)[matches.pair, matches.pixel1]
    second = pred.points2.flatten(1, 2)[matches.pair, matches.pixel2]
    depth = pred.points1[..., 2].flatten(1).median(dim=1).values.abs()
    near = (first - second).norm(dim=-1) <= tolerance * depth[matches.pair]
    return Correspondences(*(c[near] for c in (matches.pair, matches.pixel1, matches.pixel2,
                                               matches.weight)))


def _pair_scores(pred: PairPredictions, matches: Correspondences, n: int) -> np.ndarray:
    """``(N, N)`` symmetric match counts of the pairs."""
    counts = torch.bincount(matches.pair, minlength=len(pred.first)).cpu().numpy()
    scores = np.zeros((n, n))
    for e, (i, j) in enumerate(zip(pred.first.tolist(), pred.second.tolist())):
        scores[i, j] = scores[j, i] = max(scores[i, j], counts[e])
    return scores


def sparse_global_alignment(pred: PairPredictions, matches: Correspondences, n: int,
                            settings: SparseSettings = SparseSettings(),
                            focal: torch.Tensor | None = None,
                            principal_point: torch.Tensor | None = None
                            ) -> tuple[ViewEstimate, float]:
    """Cameras and depth maps of ``n`` views by MASt3R's sparse alignment (module docstring),
    in view 0's camera frame and the network's unit.

    Args:
        pred: Predictions of a symmetric pair graph.
        matches: Correspondences; ``pair`` indexes ``pred``'s decodings, ``pixel1`` is in view
            ``pred.first[pair]``.
        n: Number of views.
        settings: Stages, losses and chain.
        focal: ``(N,)`` known focal lengths (pixels): used and kept fixed.
        principal_point: ``(N, 2)`` known principal points (pixels), likewise; without them
            the image centres, optimised in the fine stage.

    Returns:
        The views (dense depth maps from the anchors and canonical ratios; confidences the
        canonical ones) and the final loss.
    """
    _, H, W, _ = pred.points1.shape
    known = focal is not None
    s = settings.anchors(H, W, known)
    dev = pred.points1.device
    matches = consistent_matches(pred, matches, settings.match_tolerance)
    centre = torch.tensor([(W - 1) / 2, (H - 1) / 2], device=dev)
    if principal_point is None:
        principal_point = centre.expand(n, 2)
    canon = canonical_views(pred, n, s, principal_point, settings.focal_range)
    base_focal = (focal if known else canon.focal).float()
    core = canon.points[:, s // 2::s, s // 2::s, 2].flatten(1)                 # (N, A)
    median = core.median(dim=1).values
    chain = kinematic_chain(_pair_scores(pred, matches, n),
                            np.full(n, (H // s) * (W // s)), settings.kinematic)
    levels = [(torch.tensor(p, device=dev), torch.tensor(c, device=dev))
              for p, c in chain.levels()]
    size = torch.tensor([W, H], dtype=torch.float32, device=dev)
    diagonal = float(size.norm())
    anchor_uv = pixel_grid(H, W, size)[s // 2::s, s // 2::s].reshape(-1, 2)
    fixed = _Fixed(base_focal, median, size, centre, anchor_uv,
                   torch.tensor([0.25 * diagonal, 10 * diagonal], device=dev), levels)
    usable = _usable_pairs(pred, matches, settings.matching_confidence)
    kept = usable[matches.pair]
    ends = _ends(pred, Correspondences(*(c[kept] for c in (matches.pair, matches.pixel1,
                                                           matches.pixel2, matches.weight))),
                 canon, s)
    fallback = _fallback(pred, usable, s)

    quat = torch.nn.Parameter(torch.tensor([0.0, 0, 0, 1], device=dev).repeat(n, 1))
    trans = torch.nn.Parameter(torch.zeros(n, 3, device=dev))
    log_size = torch.nn.Parameter(torch.zeros(n, device=dev))
    start = base_focal
    if settings.shared_focal and not known:
        weight = canon.confidence.flatten(1).mean(1)
        start = (weight @ base_focal / weight.sum()).reshape(1)
    log_focal = torch.nn.Parameter(start.log(), requires_grad=False)
    principal = torch.nn.Parameter((principal_point.float() / size).clone(),
                                   requires_grad=False)
    depth = torch.nn.Parameter(core / median[:, None], requires_grad=False)
    unknowns = _Unknowns(quat, trans, log_size, log_focal, principal, depth)

    def renormalise() -> None:
        quat.div_(quat.norm(dim=-1, keepdim=True))

    fallback_gamma = Gamma.of(settings.fallback_gamma, dev)
    fallback_weight = torch.tensor(settings.fallback_weight, device=dev)

    def run(loss, lr: float, iterations: int, gamma: float) -> float:
        fn = compiled_if(settings.compile, loss, dynamic=True)
        power = Gamma.of(gamma, dev)
        return minimise([(list(unknowns), 1.0)],
                        lambda: fn(unknowns, fixed, ends, fallback, power, fallback_gamma,
                                   fallback_weight),
                        iterations, lr, lr_min=0.0, after_step=renormalise)

    final = run(_coarse_loss, settings.coarse_lr, settings.coarse_iterations,
                settings.coarse_gamma)
    if settings.fine_iterations:
        log_focal.requires_grad_(not known)
        principal.requires_grad_(settings.optimise_principal_point and not known)
        depth.requires_grad_(settings.optimise_depth)
        final = run(_fine_loss, settings.fine_lr, settings.fine_iterations, settings.fine_gamma)
    cams = _cameras(_Unknowns(*(t.detach() for t in unknowns)), fixed)
    return _estimate(cams, base_focal, canon, s), final


def _estimate(cams: _Cameras, base_focal: torch.Tensor, canon: CanonicalViews, subsample: int
              ) -> ViewEstimate:
    """Dense views: every pixel's depth from its block anchor and canonical ratio (with the
    focal compensation of the anchored points), poses in view 0's camera frame (the loss
    leaves the world's rotation and origin free, and Adam lets them drift)."""
    n, H, W = canon.ratio.shape
    s = subsample
    anchor = cams.depth.reshape(n, H // s, W // s).repeat_interleave(s, 1).repeat_interleave(s, 2)
    ratio = 1 + (canon.ratio - 1) * (base_focal / cams.focal)[:, None, None]
    poses = torch.eye(4, dtype=torch.float64, device=anchor.device).repeat(n, 1, 1)
    poses[:, :3, :3], poses[:, :3, 3] = cams.rotation.double(), cams.centre.double()
    poses = torch.linalg.inv(poses[0]) @ poses
    return ViewEstimate(poses, cams.focal.double(), anchor * ratio, canon.confidence,
                        cams.principal.double())
