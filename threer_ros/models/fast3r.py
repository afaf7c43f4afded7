"""Fast3R: all views in one forward, pointmaps of every view in view 0's camera frame.

Architecture: a CroCo ViT encoder (2D RoPE) applied to every view, then a "fusion" transformer
over the tokens of all views at once (global self-attention, no RoPE; each view's tokens get a
1-D sin/cos image-index embedding), then two DPT heads: a global one (points in view 0's frame)
and a local one (points in each view's own frame).

Contract (as the official ``Fast3R.forward``): ``model(views) -> list of dicts``, one per view,
with ``pts3d_in_other_view`` (B, H, W, 3), ``conf`` (B, H, W), ``pts3d_local`` and
``conf_local``. A view is a dict with ``img`` (B, 3, H, W) in [-1, 1] and ``true_shape``
(B, 2). ``image_ids`` (B, N) may fix the rows of the image-index table used per view; by
default view 0 uses row 0 and the others rows drawn exactly like upstream (a fresh generator
seeded from the global one, a ``randperm(999)`` per sample).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from threer_ros.models.blocks import Block, LayerNorm6, PatchEmbed, make_rope
from threer_ros.models.heads import PointsDPTHead, apply_head
from threer_ros.models.spec import DPTWidths, ModelSpec, SpecError

IMAGE_INDEX_ROWS = 1000
ENCODER_KEYS = {"encoder_type", "img_size", "patch_size", "patch_embed_cls", "embed_dim",
                "num_heads", "depth", "mlp_ratio", "pos_embed", "attn_implementation"}
DECODER_KEYS = {"decoder_type", "random_image_idx_embedding", "enc_embed_dim", "embed_dim",
                "num_heads", "depth", "mlp_ratio", "qkv_bias", "drop", "attn_drop",
                "attn_implementation", "attn_bias_for_inference_enabled"}
HEAD_KEYS = {"head_type", "output_mode", "depth_mode", "conf_mode", "patch_size",
             "landscape_only", "with_local_head", "skip_load_pretrained_head"}


def image_index_table(dim: int, rows: int = IMAGE_INDEX_ROWS) -> torch.Tensor:
    """The (rows, dim) 1-D sin/cos table: sines of ``pos * 10000^(-2i/dim)`` then cosines."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.outer(np.arange(rows, dtype=np.float64), omega)
    return torch.from_numpy(np.concatenate([np.sin(angles), np.cos(angles)], axis=1)).float()


def draw_image_ids(batch: int, views: int, rows: int = IMAGE_INDEX_ROWS) -> torch.Tensor:
    """Image-index rows as the official forward draws them (consumes one global random draw)."""
    seed = int(torch.randint(0, 2 ** 32, (1,)).item())
    generator = torch.Generator().manual_seed(seed)
    ids = torch.zeros(batch, views, dtype=torch.long)
    for b in range(batch):
        ids[b, 1:] = torch.randperm(rows - 1, generator=generator)[:views - 1] + 1
    return ids


class CroCoEncoder(nn.Module):
    """Per-view ViT encoder (``patch_embed``, ``enc_blocks``, ``enc_norm``)."""

    def __init__(self, args: Mapping[str, Any]) -> None:
        super().__init__()
        if args.get("encoder_type", "croco") != "croco":
            raise SpecError(f"encoder_type {args['encoder_type']!r} is not supported (only the "
                            "released 'croco' encoder)")
        if args.get("patch_embed_cls", "PatchEmbedDust3R") not in ("PatchEmbedDust3R",
                                                                   "ManyAR_PatchEmbed"):
            raise SpecError(f"unknown patch_embed_cls {args['patch_embed_cls']!r}")
        dim = args["embed_dim"]
        rope = make_rope(args.get("pos_embed", "RoPE100"))
        self.patch_embed = PatchEmbed(dim, args.get("patch_size", 16))
        self.enc_blocks = nn.ModuleList([
            Block(dim, args["num_heads"], args.get("mlp_ratio", 4), rope)
            for _ in range(args["depth"])])
        self.enc_norm = LayerNorm6(dim)

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, pos = self.patch_embed(img)
        for blk in self.enc_blocks:
            x = blk(x, pos)
        return self.enc_norm(x), pos


class FusionDecoder(nn.Module):
    """Global transformer over the tokens of all views (``decoder_embed``, ``dec_blocks``)."""

    def __init__(self, args: Mapping[str, Any]) -> None:
        super().__init__()
        if args.get("decoder_type", "fast3r") != "fast3r":
            raise SpecError(f"decoder_type {args['decoder_type']!r} is not supported (only the "
                            "released 'fast3r' decoder)")
        dim, heads = args["embed_dim"], args["num_heads"]
        scale = None
        if args.get("attn_bias_for_inference_enabled", True):
            # upstream lengthens attention for inference: log(137) / log(20) sequence ratio
            scale = (dim // heads) ** -0.5 * math.sqrt(math.log(137) / math.log(20))
        self.random_image_idx_embedding = bool(args["random_image_idx_embedding"])
        self.decoder_embed = nn.Linear(args["enc_embed_dim"], dim)
        self.dec_blocks = nn.ModuleList([
            Block(dim, heads, args.get("mlp_ratio", 4.0), None, args.get("qkv_bias", True),
                  nn.LayerNorm, attn_scale=scale)
            for _ in range(args["depth"])])
        self.dec_norm = LayerNorm6(dim)
        self._table: torch.Tensor | None = None

    def index_embedding(self, ids: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` (B, N) of the image-index table, on ``like``'s device and dtype."""
        if self._table is None or self._table.device != like.device:
            self._table = image_index_table(self.decoder_embed.out_features).to(like.device)
        return self._table[ids.to(like.device)].to(like.dtype)

    def forward(self, tokens: Sequence[torch.Tensor], image_ids: torch.Tensor
                ) -> list[torch.Tensor]:
        """Token lists: [encoder tokens of all views, block 1, ..., last block (normalised)]."""
        counts = [t.shape[1] for t in tokens]
        x = torch.cat(list(tokens), dim=1)
        out = [x]
        emb = self.index_embedding(image_ids, x)                          # (B, N, D)
        y = self.decoder_embed(x) + torch.repeat_interleave(
            emb, torch.tensor(counts, device=emb.device), dim=1)
        for blk in self.dec_blocks:
            y = blk(y, None)
            out.append(y)
        out[-1] = self.dec_norm(y)
        return out


class Fast3R(nn.Module):
    """Fast3R network (see the module docstring for the contract)."""

    def __init__(self, encoder_args: Mapping[str, Any], decoder_args: Mapping[str, Any],
                 head_args: Mapping[str, Any], widths: DPTWidths) -> None:
        super().__init__()
        for name, args, known in (("encoder_args", encoder_args, ENCODER_KEYS),
                                  ("decoder_args", decoder_args, DECODER_KEYS),
                                  ("head_args", head_args, HEAD_KEYS)):
            unknown = sorted(set(args) - known)
            if unknown:
                raise SpecError(f"Fast3R {name} has unknown entries {unknown}")
        if (head_args.get("head_type"), head_args.get("output_mode")) != ("dpt", "pts3d"):
            raise SpecError("Fast3R heads other than head_type='dpt', output_mode='pts3d' are "
                            "not supported")
        self.encoder = CroCoEncoder(encoder_args)
        self.decoder = FusionDecoder(decoder_args)
        self.landscape_only = bool(head_args.get("landscape_only", False))
        self.patch = int(head_args.get("patch_size", 16))

        def head() -> PointsDPTHead:
            return PointsDPTHead(encoder_args["embed_dim"], decoder_args["embed_dim"],
                                 decoder_args["depth"], widths, head_args["depth_mode"],
                                 head_args["conf_mode"] or None, self.patch)

        self.downstream_head = head()
        self.downstream_head_local = head() if head_args.get("with_local_head") else None

    def forward(self, views: Sequence[Mapping[str, torch.Tensor]],
                image_ids: torch.Tensor | None = None) -> list[dict[str, torch.Tensor]]:
        batch, n = views[0]["img"].shape[0], len(views)
        sizes = [tuple(v["img"].shape[-2:]) for v in views]
        if self.landscape_only and any(h > w for h, w in sizes):
            raise ValueError("this Fast3R configuration (landscape_only=True) needs landscape "
                             "images")
        if len(set(sizes)) == 1:
            x, _ = self.encoder(torch.cat([v["img"] for v in views]))
            tokens = list(x.split(batch))
        else:
            tokens = [self.encoder(v["img"])[0] for v in views]
        if image_ids is None:
            image_ids = (draw_image_ids(batch, n) if self.decoder.random_image_idx_embedding
                         else torch.arange(n).expand(batch, n))
        elif tuple(image_ids.shape) != (batch, n):
            raise ValueError(f"image_ids must be (batch, views) = ({batch}, {n}), "
                             f"got {tuple(image_ids.shape)}")
        layers = self.decoder(tokens, image_ids)
        return self._heads(layers, [t.shape[1] for t in tokens], sizes, batch)

    def _heads(self, layers: list[torch.Tensor], counts: list[int],
               sizes: list[tuple[int, int]], batch: int) -> list[dict[str, torch.Tensor]]:
        """Run the heads (see :func:`apply_head`), batching all views when they share one size."""
        results: list[dict[str, torch.Tensor]] = [{} for _ in sizes]
        if len(set(sizes)) == 1:    # (batch, views * S, C) -> (views * batch, S, C), view-major
            groups = [(list(range(len(sizes))),
                       [layer.unflatten(1, (len(counts), counts[0])).transpose(0, 1).flatten(0, 1)
                        for layer in layers])]
        else:
            per_view = [layer.split(counts, dim=1) for layer in layers]
            groups = [([i], [level[i] for level in per_view]) for i in range(len(sizes))]
        for members, group_tokens in groups:
            h, w = sizes[members[0]]
            for head, suffix in ((self.downstream_head, ""),
                                 (self.downstream_head_local, "_local")):
                if head is None:
                    continue
                out = apply_head(head, group_tokens, h, w)
                for j, view in enumerate(members):
                    part = {k: v[j * batch:(j + 1) * batch] for k, v in out.items()}
                    results[view]["pts3d_local" if suffix else "pts3d_in_other_view"] = \
                        part["pts3d"]
                    if "conf" in part:
                        results[view]["conf" + suffix] = part["conf"]
        return results


def build(spec: ModelSpec) -> Fast3R:
    """Fast3R from its ``config.json`` (``encoder_args``, ``decoder_args``, ``head_args``)."""
    config = dict(spec.kwargs)
    unknown = sorted(set(config) - {"encoder_args", "decoder_args", "head_args", "freeze"})
    if unknown:
        raise SpecError(f"Fast3R config has unknown entries {unknown}")
    return Fast3R(config["encoder_args"], config["decoder_args"], config["head_args"], spec.dpt)
