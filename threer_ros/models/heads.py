"""Prediction heads of the DUSt3R family and Fast3R, and their output post-processing.

A head consumes the list of token maps a decoder produced (``tokens[0]`` = encoder output,
``tokens[i]`` = output of decoder block ``i``, the last one normalised), each (B, S, C) with
``S = (H/16) * (W/16)``, and returns per-pixel maps for an image of ``H x W`` pixels.

Module names equal the official checkpoints' (``dpt.scratch.layer1_rn``, ``refinenet4``,
``resConfUnit1``, ``act_postprocess``, ``head_local_features`` ...), so released state dicts load
strictly. Widths come from :class:`~threer_ros.models.spec.DPTWidths`.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from threer_ros.models.blocks import Mlp
from threer_ros.models.spec import DPTWidths

Mode = Sequence  # ('exp', vmin, vmax) as written in the checkpoints


def regress_points(xyz: torch.Tensor, mode: Mode) -> torch.Tensor:
    """Map raw (..., 3) outputs to 3D points: direction times ``expm1(norm)`` for ``'exp'``."""
    kind, vmin, vmax = mode
    if kind == "linear":
        return xyz if (vmin, vmax) == (-float("inf"), float("inf")) else xyz.clip(vmin, vmax)
    norm = xyz.norm(dim=-1, keepdim=True)
    direction = xyz / norm.clip(min=1e-8)
    if kind == "square":
        return direction * norm.square()
    if kind == "exp":
        return direction * torch.expm1(norm)
    raise ValueError(f"unknown depth_mode {kind!r}")


def regress_confidence(x: torch.Tensor, mode: Mode) -> torch.Tensor:
    """Map raw outputs to confidences in ``[vmin, vmax]`` (``'exp'``: ``vmin + exp(x)``)."""
    kind, vmin, vmax = mode
    if kind == "exp":
        return vmin + x.exp().clip(max=vmax - vmin)
    if kind == "sigmoid":
        return (vmax - vmin) * torch.sigmoid(x) + vmin
    raise ValueError(f"unknown conf_mode {kind!r}")


def points_and_confidence(fmap: torch.Tensor, depth_mode: Mode, conf_mode: Mode | None
                          ) -> dict[str, torch.Tensor]:
    """``pts3d`` (B,H,W,3) and ``conf`` (B,H,W) from a (B,C,H,W) map (channels 0-2, then 3)."""
    fmap = fmap.permute(0, 2, 3, 1)
    out = {"pts3d": regress_points(fmap[..., 0:3], depth_mode)}
    if conf_mode is not None:
        out["conf"] = regress_confidence(fmap[..., 3], conf_mode)
    return out


def apply_head(head: nn.Module, tokens: Sequence[torch.Tensor], height: int, width: int,
               **options) -> dict[str, torch.Tensor]:
    """Run ``head`` (with keyword ``options``) outside autocast in its parameters' dtype:
    float32 heads stay float32 under autocast (as upstream), a model cast to bfloat16 keeps
    bfloat16 heads."""
    dtype = next(head.parameters()).dtype
    with torch.autocast(tokens[0].device.type, enabled=False):
        return head([t.to(dtype) for t in tokens], height, width, **options)


def tokens_to_map(tokens: torch.Tensor, height: int, width: int, patch: int) -> torch.Tensor:
    """(B, S, C*patch^2) per-patch outputs -> (B, C, height, width) via pixel shuffle."""
    b, _, c = tokens.shape
    grid = tokens.transpose(1, 2).reshape(b, c, height // patch, width // patch)
    return F.pixel_shuffle(grid, patch)


class _ResidualConv(nn.Module):
    """ReLU-conv-ReLU-conv with a skip connection (``conv1``, ``conv2``)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class _Fusion(nn.Module):
    """One refinement stage: add the skip level, refine, upsample x2, project (``out_conv``)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = _ResidualConv(features)
        self.resConfUnit2 = _ResidualConv(features)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class _Upsample(nn.Module):
    """x2 bilinear upsampling (align_corners=True) as a module, to keep the ``head`` indices."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class DPT(nn.Module):
    """Dense prediction transformer decoder: four token levels -> a full-resolution map.

    Args:
        in_dims: Channels of the four hooked token maps.
        hooks: Indices into the decoder's token list of the four levels.
        out_channels: Channels of the output map (e.g. 3 points + 1 confidence).
        widths: Feature widths (read from a checkpoint's tensor shapes).
        patch: Patch size in pixels.
    """

    def __init__(self, in_dims: Sequence[int], hooks: Sequence[int], out_channels: int,
                 widths: DPTWidths, patch: int = 16) -> None:
        super().__init__()
        self.hooks = list(hooks)
        self.patch = patch
        dims, feat = widths.layer_dims, widths.feature_dim
        self.act_postprocess = nn.ModuleList([
            nn.Sequential(nn.Conv2d(in_dims[0], dims[0], 1),
                          nn.ConvTranspose2d(dims[0], dims[0], 4, stride=4)),
            nn.Sequential(nn.Conv2d(in_dims[1], dims[1], 1),
                          nn.ConvTranspose2d(dims[1], dims[1], 2, stride=2)),
            nn.Sequential(nn.Conv2d(in_dims[2], dims[2], 1)),
            nn.Sequential(nn.Conv2d(in_dims[3], dims[3], 1),
                          nn.Conv2d(dims[3], dims[3], 3, stride=2, padding=1)),
        ])
        scratch = nn.Module()
        for i, d in enumerate(dims):
            setattr(scratch, f"layer{i + 1}_rn", nn.Conv2d(d, feat, 3, padding=1, bias=False))
        scratch.layer_rn = nn.ModuleList([getattr(scratch, f"layer{i + 1}_rn") for i in range(4)])
        for i in range(4):
            setattr(scratch, f"refinenet{i + 1}", _Fusion(feat))
        self.scratch = scratch
        self.head = nn.Sequential(
            nn.Conv2d(feat, feat // 2, 3, padding=1), _Upsample(),
            nn.Conv2d(feat // 2, widths.last_dim, 3, padding=1), nn.ReLU(True),
            nn.Conv2d(widths.last_dim, out_channels, 1))

    def forward(self, tokens: Sequence[torch.Tensor], height: int, width: int) -> torch.Tensor:
        """``tokens``: the decoder's token list; returns (B, out_channels, height, width)."""
        rows, cols = height // self.patch, width // self.patch
        levels = []
        for i, hook in enumerate(self.hooks):
            t = tokens[hook]
            grid = t.transpose(1, 2).reshape(t.shape[0], t.shape[2], rows, cols)
            levels.append(self.scratch.layer_rn[i](self.act_postprocess[i](grid)))
        s = self.scratch
        x = s.refinenet4(levels[3])[:, :, :levels[2].shape[2], :levels[2].shape[3]]
        x = s.refinenet3(x, levels[2])
        x = s.refinenet2(x, levels[1])
        x = s.refinenet1(x, levels[0])
        return self.head(x)


def dpt_hooks(dec_depth: int) -> list[int]:
    """Token levels the DUSt3R-family DPT heads read: encoder, 1/2, 3/4 and last decoder block."""
    return [0, dec_depth * 2 // 4, dec_depth * 3 // 4, dec_depth]


class PointsDPTHead(nn.Module):
    """DPT head regressing 3D points and a confidence per pixel (``dpt.*`` keys)."""

    def __init__(self, enc_dim: int, dec_dim: int, dec_depth: int, widths: DPTWidths,
                 depth_mode: Mode, conf_mode: Mode | None, patch: int = 16) -> None:
        super().__init__()
        self.depth_mode, self.conf_mode = depth_mode, conf_mode
        self.dpt = DPT([enc_dim, dec_dim, dec_dim, dec_dim], dpt_hooks(dec_depth),
                       3 + int(conf_mode is not None), widths, patch)

    def forward(self, tokens: Sequence[torch.Tensor], height: int, width: int
                ) -> dict[str, torch.Tensor]:
        fmap = self.dpt(tokens, height, width)
        return points_and_confidence(fmap, self.depth_mode, self.conf_mode)


class PointsLinearHead(nn.Module):
    """Linear head: each last-layer token predicts its 16x16 pixels (``proj``)."""

    def __init__(self, dec_dim: int, depth_mode: Mode, conf_mode: Mode | None,
                 patch: int = 16) -> None:
        super().__init__()
        self.depth_mode, self.conf_mode, self.patch = depth_mode, conf_mode, patch
        self.proj = nn.Linear(dec_dim, (3 + int(conf_mode is not None)) * patch ** 2)

    def forward(self, tokens: Sequence[torch.Tensor], height: int, width: int
                ) -> dict[str, torch.Tensor]:
        fmap = tokens_to_map(self.proj(tokens[-1]), height, width, self.patch)
        return points_and_confidence(fmap, self.depth_mode, self.conf_mode)


class PointsAndDescriptorsHead(PointsDPTHead):
    """MASt3R ``catmlp+dpt``: DPT points + an MLP on [encoder, decoder] tokens for descriptors.

    Outputs ``pts3d``, ``conf``, ``desc`` (unit vectors of ``desc_dim``) and ``desc_conf``
    (its own channel when ``two_confs``, else a copy of ``conf``); with ``descriptors=False``
    only ``pts3d`` and ``conf``, without running the descriptor MLP.
    """

    def __init__(self, enc_dim: int, dec_dim: int, dec_depth: int, widths: DPTWidths,
                 depth_mode: Mode, conf_mode: Mode | None, desc_dim: int, two_confs: bool,
                 desc_conf_mode: Mode | None, patch: int = 16) -> None:
        super().__init__(enc_dim, dec_dim, dec_depth, widths, depth_mode, conf_mode, patch)
        self.desc_dim, self.two_confs, self.patch = desc_dim, two_confs, patch
        self.desc_conf_mode = desc_conf_mode if desc_conf_mode is not None else conf_mode
        in_dim = enc_dim + dec_dim
        self.head_local_features = Mlp(in_dim, 4 * in_dim,
                                       (desc_dim + int(two_confs)) * patch ** 2)

    def forward(self, tokens: Sequence[torch.Tensor], height: int, width: int,
                descriptors: bool = True) -> dict[str, torch.Tensor]:
        out = super().forward(tokens, height, width)
        if not descriptors:
            return out
        local = self.head_local_features(torch.cat([tokens[0], tokens[-1]], dim=-1))
        fmap = tokens_to_map(local, height, width, self.patch).permute(0, 2, 3, 1)
        desc = fmap[..., :self.desc_dim]
        out["desc"] = desc / desc.norm(dim=-1, keepdim=True)
        if self.two_confs:
            out["desc_conf"] = regress_confidence(fmap[..., self.desc_dim], self.desc_conf_mode)
        else:
            out["desc_conf"] = out["conf"].clone()
        return out
