"""DUSt3R (``AsymmetricCroCo3DStereo``): a pair of images in, two pointmaps in view 1's frame out.

Architecture: one ViT encoder shared by both images (2D RoPE, no absolute positions), then two
decoders that update each view's tokens with self-attention and cross-attention to the other
view (``dec_blocks`` for view 1, ``dec_blocks2`` for view 2), then one head per view.

Contract (as the official class): ``model(view1, view2) -> (res1, res2)``; a view is a dict
with ``img`` (B, 3, H, W) normalised to [-1, 1] and ``true_shape`` (B, 2) = (H, W); ``res1``
holds ``pts3d`` (B, H, W, 3) and ``conf`` (B, H, W) of view 1 in its own camera frame,
``res2`` holds ``pts3d_in_other_view`` (view 2's points in view 1's frame) and ``conf``.
Heads run in float32 even under autocast, like upstream.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
from torch import nn

from threer_ros.models.blocks import Block, DecoderBlock, LayerNorm6, PatchEmbed, make_rope
from threer_ros.models.heads import PointsAndDescriptorsHead, PointsDPTHead, PointsLinearHead
from threer_ros.models.orientation import (head_per_group, orientation_groups, per_group,
                                           true_shape_of)
from threer_ros.models.spec import DPTWidths, ModelSpec, SpecError

#: Constructor arguments of the CroCo backbone and their official defaults.
BACKBONE_DEFAULTS: dict[str, Any] = dict(
    img_size=224, patch_size=16, mask_ratio=0.9, enc_embed_dim=768, enc_depth=12,
    enc_num_heads=12, dec_embed_dim=512, dec_depth=8, dec_num_heads=16, mlp_ratio=4,
    norm_im2_in_dec=True, pos_embed="cosine")
#: Arguments of the DUSt3R head configuration and their official defaults.
DUST3R_DEFAULTS: dict[str, Any] = dict(
    output_mode="pts3d", head_type="linear", depth_mode=("exp", -float("inf"), float("inf")),
    conf_mode=("exp", 1, float("inf")), freeze="none", landscape_only=True,
    patch_embed_cls="PatchEmbedDust3R")


def merged_arguments(spec: ModelSpec, *defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The spec's keyword arguments over the defaults; unknown names raise :class:`SpecError`."""
    merged: dict[str, Any] = {}
    for d in defaults:
        merged.update(d)
    unknown = sorted(set(spec.kwargs) - set(merged))
    if unknown:
        raise SpecError(f"{spec.name} does not take {', '.join(unknown)}")
    merged.update(spec.kwargs)
    return merged


class CroCoStereo(nn.Module):
    """Shared encoder and the two cross-attending decoders of the DUSt3R family.

    Args:
        args: Merged constructor arguments (see :data:`BACKBONE_DEFAULTS`).
    """

    def __init__(self, args: Mapping[str, Any]) -> None:
        super().__init__()
        if args["patch_embed_cls"] not in ("PatchEmbedDust3R", "ManyAR_PatchEmbed"):
            raise SpecError(f"unknown patch_embed_cls {args['patch_embed_cls']!r}")
        if not args["norm_im2_in_dec"]:
            raise SpecError("norm_im2_in_dec=False is not used by any released checkpoint")
        self.landscape_only = bool(args["landscape_only"]) and \
            args["patch_embed_cls"] == "ManyAR_PatchEmbed"
        enc, dec = args["enc_embed_dim"], args["dec_embed_dim"]
        self.enc_embed_dim, self.dec_embed_dim, self.dec_depth = enc, dec, args["dec_depth"]
        self.patch_size = args["patch_size"]
        rope = make_rope(args["pos_embed"])
        self.patch_embed = PatchEmbed(enc, self.patch_size)
        self.enc_blocks = nn.ModuleList([Block(enc, args["enc_num_heads"], args["mlp_ratio"], rope)
                                         for _ in range(args["enc_depth"])])
        self.enc_norm = LayerNorm6(enc)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec))  # CroCo pre-training leftover
        self.decoder_embed = nn.Linear(enc, dec)
        self.dec_blocks = nn.ModuleList([
            DecoderBlock(dec, args["dec_num_heads"], args["mlp_ratio"], rope)
            for _ in range(args["dec_depth"])])
        self.dec_norm = LayerNorm6(dec)
        self.dec_blocks2 = nn.ModuleList([
            DecoderBlock(dec, args["dec_num_heads"], args["mlp_ratio"], rope)
            for _ in range(args["dec_depth"])])

    def encode(self, img: torch.Tensor, true_shape: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder tokens (B, S, enc_dim) and patch positions of a batch of images (portrait
        images given transposed with ``landscape_only``: see :mod:`.orientation`)."""
        groups = orientation_groups(true_shape, self.landscape_only)
        x, pos = per_group(self.patch_embed, img, groups, self.landscape_only)
        for blk in self.enc_blocks:
            x = blk(x, pos)
        return self.enc_norm(x), pos

    def encode_pair(self, view1: Mapping[str, torch.Tensor], view2: Mapping[str, torch.Tensor]):
        """Encode both views (in one batch when their sizes agree)."""
        img1, img2 = view1["img"], view2["img"]
        uniform = not self.landscape_only
        shape1, shape2 = true_shape_of(view1, uniform), true_shape_of(view2, uniform)
        if img1.shape[-2:] == img2.shape[-2:]:
            x, pos = self.encode(torch.cat((img1, img2)), torch.cat((shape1, shape2)))
            (f1, f2), (p1, p2) = x.chunk(2), pos.chunk(2)
        else:
            f1, p1 = self.encode(img1, shape1)
            f2, p2 = self.encode(img2, shape2)
        return (f1, f2), (p1, p2), (shape1, shape2)

    def decode(self, f1: torch.Tensor, p1: torch.Tensor, f2: torch.Tensor, p2: torch.Tensor
               ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Token lists per view: [encoder output, block 1, ..., block N (normalised)]."""
        out1, out2 = [f1], [f2]
        x1, x2 = self.decoder_embed(f1), self.decoder_embed(f2)
        for blk1, blk2 in zip(self.dec_blocks, self.dec_blocks2):
            x1, x2 = blk1(x1, x2, p1, p2), blk2(x2, x1, p2, p1)
            out1.append(x1)
            out2.append(x2)
        out1[-1], out2[-1] = self.dec_norm(out1[-1]), self.dec_norm(out2[-1])
        return out1, out2

    def run_head(self, head: nn.Module, tokens: list[torch.Tensor], true_shape: torch.Tensor,
                 **options) -> dict[str, torch.Tensor]:
        """Apply ``head`` (with keyword ``options``) at the images' resolution, outputs in the
        input tensors' layout."""
        return head_per_group(head, tokens, true_shape,
                              orientation_groups(true_shape, self.landscape_only), **options)


def pointmap_head(args: Mapping[str, Any], backbone: CroCoStereo, widths: DPTWidths) -> nn.Module:
    """The DUSt3R point head named by ``head_type`` (``dpt`` or ``linear``)."""
    if args["output_mode"] != "pts3d":
        raise SpecError(f"output_mode {args['output_mode']!r} is not a DUSt3R output")
    conf_mode = args["conf_mode"] or None
    if args["head_type"] == "dpt":
        return PointsDPTHead(backbone.enc_embed_dim, backbone.dec_embed_dim, backbone.dec_depth,
                             widths, args["depth_mode"], conf_mode, backbone.patch_size)
    if args["head_type"] == "linear":
        return PointsLinearHead(backbone.dec_embed_dim, args["depth_mode"], conf_mode,
                                backbone.patch_size)
    raise SpecError(f"unknown head_type {args['head_type']!r}")


class AsymmetricStereo(CroCoStereo):
    """Backbone plus one head per view; the official pair contract (module docstring)."""

    def __init__(self, args: Mapping[str, Any],
                 make_head: Callable[["AsymmetricStereo"], nn.Module]) -> None:
        super().__init__(args)
        self.downstream_head1 = make_head(self)
        self.downstream_head2 = make_head(self)

    def forward(self, view1: Mapping[str, torch.Tensor], view2: Mapping[str, torch.Tensor]
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        (f1, f2), (p1, p2), (shape1, shape2) = self.encode_pair(view1, view2)
        dec1, dec2 = self.decode(f1, p1, f2, p2)
        res1 = self.run_head(self.downstream_head1, dec1, shape1)
        res2 = self.run_head(self.downstream_head2, dec2, shape2)
        res2["pts3d_in_other_view"] = res2.pop("pts3d")
        return res1, res2

    def forward_pairs(self, view: Mapping[str, torch.Tensor], first: torch.Tensor,
                      second: torch.Tensor, pair_batch: int = 0, descriptors: bool = True
                      ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Encode each image of ``view`` (a batch of N images) once, then decode the pairs
        ``(first[k], second[k])`` in chunks of ``pair_batch`` (0 = all at once): the same
        outputs as ``forward`` on the gathered pairs. ``descriptors=False`` leaves out
        MASt3R's descriptors (``desc``, ``desc_conf``) and the work of computing them."""
        skip = not descriptors and isinstance(self.downstream_head1, PointsAndDescriptorsHead)
        options = {"descriptors": False} if skip else {}
        shape = true_shape_of(view, not self.landscape_only)
        shape1, shape2 = shape[first.cpu()], shape[second.cpu()]   # before queueing GPU work
        f, p = self.encode(view["img"], shape)

        def decode(a: torch.Tensor, b: torch.Tensor, shape_a: torch.Tensor,
                   shape_b: torch.Tensor):
            dec1, dec2 = self.decode(f[a], p[a], f[b], p[b])
            res1 = self.run_head(self.downstream_head1, dec1, shape_a, **options)
            res2 = self.run_head(self.downstream_head2, dec2, shape_b, **options)
            res2["pts3d_in_other_view"] = res2.pop("pts3d")
            return res1, res2

        return decode_in_chunks(decode, first, second, pair_batch, shape1, shape2)


def decode_in_chunks(decode: Callable, first: torch.Tensor, second: torch.Tensor,
                     pair_batch: int, *extra: torch.Tensor | None
                     ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Run ``decode(first[c], second[c], *extra[c]) -> (res1, res2)`` on chunks ``c`` of at
    most ``pair_batch`` pairs (0 = one chunk), as few as possible and of equal size give or
    take one (68 pairs at 16: 14, 14, 14, 13, 13, not a last batch of 4), and concatenate the
    results."""
    count = len(first)
    chunks = max(1, math.ceil(count / pair_batch)) if pair_batch > 0 else 1
    bounds = [count * c // chunks for c in range(chunks + 1)]
    parts = [decode(first[a:b], second[a:b], *(None if x is None else x[a:b] for x in extra))
             for a, b in zip(bounds, bounds[1:])]
    if len(parts) == 1:
        return parts[0]
    return tuple({key: torch.cat([part[side][key] for part in parts])
                  for key in parts[0][side]} for side in (0, 1))


def build(spec: ModelSpec) -> AsymmetricStereo:
    """DUSt3R from a checkpoint spec (``AsymmetricCroCo3DStereo(...)``)."""
    args = merged_arguments(spec, BACKBONE_DEFAULTS, DUST3R_DEFAULTS)
    return AsymmetricStereo(args, lambda net: pointmap_head(args, net, spec.dpt))
