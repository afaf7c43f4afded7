"""Portrait images in networks declared with ``ManyAR_PatchEmbed`` and ``landscape_only=True``.

Such a network takes landscape tensors only: a portrait image (``true_shape`` H > W) arrives as
its transpose, is embedded upright, and its per-pixel outputs are transposed back to the
layout of the input tensor. A batch may mix both orientations. Without ``landscape_only``
every image of a batch shares one ``true_shape`` and nothing is transposed.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from threer_ros.models.heads import apply_head

#: (batch mask, whether those images are portrait images given transposed)
Group = tuple[torch.Tensor, bool]


def true_shape_of(view: Mapping[str, torch.Tensor], uniform: bool = True) -> torch.Tensor:
    """(B, 2) ``true_shape`` of a view (the tensor's size when absent); with ``uniform`` every
    image of the batch must share it."""
    img = view["img"]
    shape = view.get("true_shape")
    if shape is None:
        return torch.tensor(img.shape[-2:])[None].repeat(img.shape[0], 1)
    shape = torch.as_tensor(shape)
    if uniform and not (shape == shape[0:1]).all():
        raise ValueError("all images of a batch must share one true_shape; split the batch")
    return shape


def orientation_groups(true_shape: torch.Tensor, landscape_only: bool) -> list[Group]:
    """Landscape and portrait parts of a batch (one group without ``landscape_only``)."""
    if not landscape_only:
        return [(torch.ones(len(true_shape), dtype=torch.bool), False)]
    portrait = (true_shape[:, 0] > true_shape[:, 1]).cpu()
    return [(mask, flip) for mask, flip in ((~portrait, False), (portrait, True)) if mask.any()]


def per_group(fn: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], x: torch.Tensor,
              groups: Sequence[Group], landscape_only: bool) -> tuple[torch.Tensor, ...]:
    """Apply ``fn`` (tensor -> tuple of batch-first tensors) to ``x`` (B, C, H, W) per group,
    portrait images upright, and reassemble the batch."""
    if landscape_only and x.shape[-2] > x.shape[-1]:
        raise ValueError("this network (ManyAR_PatchEmbed, landscape_only) takes landscape "
                         "tensors: give a portrait image (and its priors) transposed, with its "
                         "portrait true_shape")
    if len(groups) == 1:
        return fn(x.transpose(-1, -2) if groups[0][1] else x)
    merged: list[torch.Tensor] = []
    for mask, flip in groups:
        parts = fn(x[mask].transpose(-1, -2) if flip else x[mask])
        if not merged:
            merged = [p.new_empty((len(x),) + p.shape[1:]) for p in parts]
        for full, part in zip(merged, parts):
            full[mask] = part
    return tuple(merged)


def head_per_group(head: nn.Module, tokens: Sequence[torch.Tensor], true_shape: torch.Tensor,
                   groups: Sequence[Group], **options) -> dict[str, torch.Tensor]:
    """Run a per-pixel head (with keyword ``options``) for each group and return outputs in
    the input tensors' layout."""
    if len(groups) == 1 and not groups[0][1]:
        return apply_head(head, tokens, *(int(v) for v in true_shape[0]), **options)
    short, long = int(true_shape.min()), int(true_shape.max())
    out: dict[str, torch.Tensor] = {}
    for mask, flip in groups:
        part = apply_head(head, tokens if len(groups) == 1 else [t[mask] for t in tokens],
                          *((long, short) if flip else (short, long)), **options)
        for key, value in part.items():
            value = value.transpose(1, 2) if flip else value
            if len(groups) == 1:
                out[key] = value
                continue
            if key not in out:
                out[key] = value.new_empty((len(true_shape),) + value.shape[1:])
            out[key][mask] = value
    return out
