"""MASt3R-style sparse global alignment: cameras and coarse depth corrections from pixel
correspondences between the views of a pair graph (our code, after Leroy et al. 2024).

Conventions as :mod:`threer_ros.geometry.global_alignment`; correspondences index pixels of
the network images row-major (``row * W + column``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from threer_ros.geometry.global_alignment import (AlignmentSettings, CameraParameters,
                                                  CameraState, PairPredictions, ViewEstimate,
                                                  quaternion_to_rotation, rotate)
from threer_ros.geometry.cameras import pixel_to_grid_matrix
from threer_ros.geometry.optimisation import compiled_if, minimise
from threer_ros.geometry.registration import pixel_grid


@dataclass(frozen=True)
class Correspondences:
    """Pixel matches of pair ``e`` between views ``first[e]`` and ``second[e]``.

    Attributes:
        pair: ``(M,)`` index of each match's pair.
        pixel1, pixel2: ``(M,)`` flat pixel indices (row * W + column) in each view.
        weight: ``(M,)`` non-negative weights.
    """

    pair: torch.Tensor
    pixel1: torch.Tensor
    pixel2: torch.Tensor
    weight: torch.Tensor


class _MatchedPixels(NamedTuple):
    """Matches laid out per pair side, as the sparse losses read them.

    Group ``g < U`` holds the first ends of the matches of pair ``g`` (in view ``view[g]``),
    group ``U + g`` their second ends, each padded to the ``K`` matches of the largest pair
    (padding repeats a real match with weight 0). Per-view parameters are then gathered once
    per group, not once per match: scattering the gradients of 10^5 matches onto 16 views
    was most of the alignment's GPU time.

    ``view``, ``other``: ``(2U,)`` the group's view and the view of its matches' other ends;
    ``uv``: ``(2U, K, 2)`` pixels; ``grid_xy``: ``(2U, K, 1, 2)`` the same pixels in
    ``grid_sample`` coordinates; ``target``: ``(2U, K, 2)`` the other ends' pixels; ``depth``:
    ``(2U, K)`` initial depths; ``weight``: ``(U, K)`` match weights summing to 1.
    """

    view: torch.Tensor
    other: torch.Tensor
    uv: torch.Tensor
    grid_xy: torch.Tensor
    target: torch.Tensor
    depth: torch.Tensor
    weight: torch.Tensor


def _matched_pixels(pred: PairPredictions, matches: Correspondences, depth: torch.Tensor
                    ) -> _MatchedPixels:
    """Group the matches by pair and pad them (see :class:`_MatchedPixels`)."""
    _, H, W = depth.shape
    order = torch.argsort(matches.pair, stable=True)
    pairs, counts = torch.unique_consecutive(matches.pair[order], return_counts=True)
    U, K = len(pairs), int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    group = torch.repeat_interleave(torch.arange(U, device=counts.device), counts)
    slot = torch.arange(len(order), device=counts.device) - starts[group]
    index = order[starts].repeat_interleave(K).reshape(U, K)      # padding: the first match
    index[group, slot] = order
    weight = torch.zeros(U, K, device=depth.device)
    weight[group, slot] = matches.weight[order].float()
    view = torch.cat([pred.first[pairs], pred.second[pairs]])
    pixels = torch.cat([matches.pixel1[index], matches.pixel2[index]])       # (2U, K)
    uv = pixel_grid(H, W, depth).reshape(-1, 2)[pixels]
    # sampling the coarse grid at these coordinates reads what F.interpolate(...,
    # align_corners=True) to full resolution gives at the pixels (the final depth maps)
    to_grid = pixel_to_grid_matrix(H, W, uv)
    grid_xy = uv @ to_grid[:2, :2].T + to_grid[:2, 2]
    return _MatchedPixels(view, view.roll(U), uv, grid_xy[:, :, None],
                          uv.roll(U, 0), depth.flatten(1)[view[:, None], pixels],
                          weight / weight.sum().clamp(min=1e-12))


def _match_points(cams: CameraState, ends: _MatchedPixels) -> torch.Tensor:
    """``(2U, K, 3)`` world points of the match ends under the current cameras."""
    correction = F.grid_sample(cams.log_depth[ends.view], ends.grid_xy, mode="bilinear",
                               align_corners=True)[:, 0, :, 0]
    focal = cams.log_focal.exp()[ends.view, None, None]
    ray = torch.cat([(ends.uv - cams.principal_point[ends.view, None]) / focal,
                     torch.ones_like(ends.depth)[..., None]], -1)
    rotation = quaternion_to_rotation(cams.quat)[ends.view]
    return rotate(rotation, ray * (ends.depth * correction.exp())[..., None]) \
        + cams.trans[ends.view, None]


def _sparse_loss_3d(cams: CameraState, ends: _MatchedPixels, scene_scale: torch.Tensor
                    ) -> torch.Tensor:
    """Weighted distance between the two ends of every match, in units of the scene depth."""
    first, second = _match_points(cams, ends).chunk(2)
    return (ends.weight * (first - second).norm(dim=-1)).sum() / scene_scale


def _sparse_loss_2d(cams: CameraState, ends: _MatchedPixels) -> torch.Tensor:
    """Weighted reprojection error (pixels) of every match end in the other view."""
    rotation = quaternion_to_rotation(cams.quat)[ends.other]
    cam = rotate(rotation.transpose(-1, -2),
                 _match_points(cams, ends) - cams.trans[ends.other, None])
    focal = cams.log_focal.exp()[ends.other, None, None]
    uv = cam[..., :2] / cam[..., 2:].clamp(min=1e-6) * focal \
        + cams.principal_point[ends.other, None]
    first, second = (uv - ends.target).norm(dim=-1).chunk(2)
    return (ends.weight * (first + second)).sum() / 2


def refine_sparse(pred: PairPredictions, matches: Correspondences, init: ViewEstimate,
                  settings: AlignmentSettings, optimise_focal: bool = True
                  ) -> tuple[ViewEstimate, float]:
    """MASt3R-style sparse alignment on correspondences: a 3D stage (matched pixels of two
    views meet in space), then a 2D stage (each matched point reprojects onto its match).

    Unknowns per view: pose, log focal, log depth scale, and a coarse log-depth correction
    grid (every ``settings.grid`` pixels, bilinearly interpolated) that lets the depth maps
    bend where matches ask for it. The losses only evaluate the matched pixels.
    """
    if len(matches.pair) == 0:
        raise ValueError("no correspondences between any pair: sparse alignment impossible")
    n, H, W = init.depth.shape
    gh, gw = max(2, math.ceil(H / settings.grid) + 1), max(2, math.ceil(W / settings.grid) + 1)
    cams = CameraParameters(init, optimise_focal,
                            torch.zeros(n, 1, gh, gw, device=init.depth.device))
    base_depth = init.depth.float()
    ends = _matched_pixels(pred, matches, base_depth)
    scene_scale = init.depth.median().float()
    loss_3d = compiled_if(settings.compile, _sparse_loss_3d, dynamic=True)
    loss_2d = compiled_if(settings.compile, _sparse_loss_2d, dynamic=True)
    # focal and depth corrections move slower: a step of lr in a log is lr of the value
    groups = [([cams.quat, cams.trans], 1.0), ([cams.log_focal, cams.log_depth], 0.1)]
    minimise(groups, lambda: loss_3d(cams.state(), ends, scene_scale), settings.iterations,
             settings.lr)
    final = minimise(groups, lambda: loss_2d(cams.state(), ends), settings.iterations,
                     settings.lr)
    correction = F.interpolate(cams.log_depth.detach(), size=(H, W), mode="bilinear",
                               align_corners=True)[:, 0]
    return cams.estimate(base_depth * correction.exp(), init.confidence), final
