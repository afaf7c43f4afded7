"""Pow3R: DUSt3R-style pair network that also consumes priors (intrinsics, depth, relative pose).

Architecture (as declared by a ``Pow3R(mode=..., head_type=...)`` definition):

* the CroCo encoder/decoder pair of DUSt3R; priors enter through extra patch embeddings of the
  known rays (3 channels) and known depth (normalised depth + mask) and an MLP embedding of the
  relative pose (3x4, 12 values);
* ``mode='inject[<fractions>]'`` names the blocks (as fractions of the depth, e.g. ``[0, 0.5]``)
  that add the prior embeddings through their own small MLPs; ``'_cls'`` adds a learned CLS
  token per decoder whose attention terms are not rotated by RoPE, and which alone receives the
  pose embedding;
* linear heads with tag lists, e.g. ``'linear_pts3d+conf;linear_pts3d+conf+pts3d2+conf2'``
  (points are raw, confidences ``1 + exp(x)``).

Contract: ``model(view1, view2) -> (res1, res2)``; views as DUSt3R plus optional
``known_rays`` (B, 3, H, W), ``known_depth`` (B, 2, H, W) and ``known_pose`` (B, 4, 4);
``res1``: ``pts3d``, ``conf``; ``res2``: ``pts3d_in_other_view``, ``conf``, ``pts3d2`` (view 2 in
its own frame), ``conf2``. :func:`encode_priors` turns K, depth maps and camera poses into those
inputs exactly like the official ``inference_with_info``.
"""

from __future__ import annotations

import ast
import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from threer_ros.models.blocks import (Attention, CrossAttention, LayerNorm6, Mlp, PatchEmbed,
                                      RoPE2D, attend, make_rope, merge_heads, split_heads)
from threer_ros.models.dust3r import BACKBONE_DEFAULTS, decode_in_chunks, merged_arguments
from threer_ros.models.heads import regress_confidence, tokens_to_map
from threer_ros.models.orientation import (head_per_group, orientation_groups, per_group,
                                           true_shape_of)
from threer_ros.models.spec import ModelSpec, SpecError

POW3R_DEFAULTS: dict[str, Any] = dict(mode="inject[]", head_type="linear",
                                      patch_embed_cls="PatchEmbedDust3R", freeze="none",
                                      landscape_only=True)


# --- attention with unrotated CLS tokens ----------------------------------------------------
def _cls_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, qpos: torch.Tensor,
                   kpos: torch.Tensor, rope: RoPE2D | None, num_cls: int,
                   compute_dtype: torch.dtype | None) -> torch.Tensor:
    """Attention where only token-token scores use RoPE; scores involving the ``num_cls``
    leading CLS tokens use the unrotated queries and keys (Pow3R's formulation).

    Token queries take one SDPA call on vectors of twice the head width: a query is
    [rot q, q], a token key [rot k, 0] and a CLS key [0, k], so each dot product picks the
    right pair. The CLS queries see every key unrotated: a second, one-query-long SDPA call.
    The kernels run in ``compute_dtype`` (:func:`~threer_ros.models.blocks.attend`).
    """
    scale = q.shape[-1] ** -0.5
    if rope is None:
        return attend(q, k, v, scale, compute_dtype)
    if num_cls == 0:
        return attend(rope(q, qpos), rope(k, kpos), v, scale, compute_dtype)
    qt, kc, kt = q[:, :, num_cls:], k[:, :, :num_cls], k[:, :, num_cls:]
    q_wide = torch.cat((rope(qt, qpos[:, num_cls:]), qt), -1)
    k_wide = torch.cat((torch.cat((torch.zeros_like(kc), kc), -1),
                        torch.cat((rope(kt, kpos[:, num_cls:]), torch.zeros_like(kt)), -1)),
                       dim=2)
    tokens = attend(q_wide, k_wide, v, scale, compute_dtype)
    cls = attend(q[:, :, :num_cls], k, v, scale, compute_dtype)
    return torch.cat((cls, tokens), dim=2)


class ClsSelfAttention(Attention):
    """Self-attention with CLS-aware RoPE (parameters as :class:`Attention`)."""

    def forward(self, x: torch.Tensor, pos: torch.Tensor, num_cls: int = 0) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads) \
            .permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(merge_heads(_cls_attention(q, k, v, pos, pos, self.rope, num_cls,
                                                    self.compute_dtype)))


class ClsCrossAttention(CrossAttention):
    """Cross-attention with CLS-aware RoPE (parameters as :class:`CrossAttention`)."""

    def forward(self, x: torch.Tensor, memory: torch.Tensor, xpos: torch.Tensor,
                mpos: torch.Tensor, num_cls: int = 0) -> torch.Tensor:
        q = split_heads(self.projq(x), self.num_heads)
        k = split_heads(self.projk(memory), self.num_heads)
        v = split_heads(self.projv(memory), self.num_heads)
        return self.proj(merge_heads(_cls_attention(q, k, v, xpos, mpos, self.rope, num_cls,
                                                    self.compute_dtype)))


class EncoderBlock(nn.Module):
    """ViT block; when ``inject`` it adds MLP embeddings of the ray and depth priors."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, rope: RoPE2D, inject: bool) -> None:
        super().__init__()
        self.norm1 = LayerNorm6(dim)
        self.attn = ClsSelfAttention(dim, heads, rope=rope)
        self.norm2 = LayerNorm6(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.inject = inject
        if inject:
            self.rays_embed = Mlp(dim, dim)
            self.depth_embed = Mlp(dim, dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, rays: torch.Tensor | None,
                depth: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), pos)
        if self.inject and rays is not None:
            x = x + self.rays_embed(rays)
        if self.inject and depth is not None:
            x = x + self.depth_embed(depth)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """CroCo decoder block; when ``inject`` it adds an MLP of the pose embedding (to the CLS
    token only, when there is one)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, rope: RoPE2D, inject: bool) -> None:
        super().__init__()
        self.norm1 = LayerNorm6(dim)
        self.attn = ClsSelfAttention(dim, heads, rope=rope)
        self.cross_attn = ClsCrossAttention(dim, heads, rope=rope)
        self.norm2 = LayerNorm6(dim)
        self.norm3 = LayerNorm6(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y = LayerNorm6(dim)
        self.inject = inject
        if inject:
            self.pose_embed = Mlp(dim, dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor, xpos: torch.Tensor, ypos: torch.Tensor,
                num_cls: int, pose: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), xpos, num_cls)
        y = self.norm_y(y)
        x = x + self.cross_attn(self.norm2(x), y, xpos, ypos, num_cls)
        if self.inject and pose is not None:
            if num_cls > 0:
                x = torch.cat((x[:, :num_cls] + self.pose_embed(pose), x[:, num_cls:]), dim=1)
            else:
                x = x + self.pose_embed(pose)
        return x + self.mlp(self.norm3(x))


class PriorPatchEmbed(nn.Module):
    """Patch embedding of a dense prior: pixel-unshuffle 16x16 patches, then an MLP
    (``proj.2.fc1``, ``proj.2.fc2``; positions 0, 1, 3 of ``proj`` hold no parameters)."""

    def __init__(self, in_chans: int, dim: int, patch: int = 16) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.ModuleList([nn.Identity(), nn.Identity(),
                                   Mlp(in_chans * patch ** 2, 4 * dim, dim), nn.Identity()])

    def forward(self, prior: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, H/16 * W/16, dim), patches in row-major order."""
        patches = F.pixel_unshuffle(prior, self.patch).permute(0, 2, 3, 1)   # (B, h, w, C*256)
        return self.proj[2](patches).flatten(1, 2)


def _injected_fractions(mode: str) -> set[float] | None:
    """Depth fractions of the blocks that inject priors, from ``'inject[0, 0.5]'`` (the mode
    without ``_cls``); ``None`` for ``'inject[]'`` (every block)."""
    if not mode.startswith("inject[") or not mode.endswith("]"):
        raise SpecError(f"unsupported Pow3R mode {mode!r}: the official class builds "
                        "'inject[<fractions>]' modes (optionally with '_cls')")
    return set(float(f) for f in ast.literal_eval(mode[len("inject"):])) or None


class LinearTagHead(nn.Module):
    """Pow3R's linear head: ``tags`` such as ``pts3d``, ``conf``, ``pts3d2``, ``conf2`` (each
    confidence tag may carry its mode, ``conf2(exp,1,inf)``)."""

    def __init__(self, head_type: str, dec_dim: int, patch: int = 16) -> None:
        super().__init__()
        kind, _, tags = head_type.partition("_")
        if kind != "linear" or not tags:
            raise SpecError(f"unsupported Pow3R head {head_type!r}: only 'linear_<tags>'")
        self.layout: list[tuple[str, int, Sequence | None]] = []
        for tag in tags.split("+"):
            name, _, mode = tag.partition("(")
            if name.startswith("pts3d"):
                self.layout.append((name, 3, None))
            elif name.startswith("conf"):
                parsed = ("exp", 1, math.inf)
                if mode:
                    parts = [p.strip() for p in mode.rstrip(")").split(",")]
                    parsed = (parts[0], float(parts[1]), float(parts[2]))
                self.layout.append((name, 1, parsed))
            else:
                raise SpecError(f"unknown Pow3R head tag {tag!r}")
        self.patch = patch
        self.proj = nn.Linear(dec_dim, sum(c for _, c, _ in self.layout) * patch ** 2)

    def forward(self, tokens: Sequence[torch.Tensor], height: int, width: int
                ) -> dict[str, torch.Tensor]:
        fmap = tokens_to_map(self.proj(tokens[-1]), height, width, self.patch).permute(0, 2, 3, 1)
        out, start = {}, 0
        for name, channels, mode in self.layout:
            chunk = fmap[..., start:start + channels]
            out[name] = chunk if mode is None else regress_confidence(chunk[..., 0], mode)
            start += channels
        return out


class Pow3R(nn.Module):
    """Pow3R network (see the module docstring)."""

    def __init__(self, args: Mapping[str, Any]) -> None:
        super().__init__()
        mode = args["mode"]
        if "_ln" in mode:
            raise SpecError("Pow3R modes with '_ln' are not used by any released checkpoint")
        if args["patch_embed_cls"] not in ("PatchEmbedDust3R", "ManyAR_PatchEmbed"):
            raise SpecError(f"unknown patch_embed_cls {args['patch_embed_cls']!r}")
        self.num_cls = 1 if "_cls" in mode else 0
        fractions = _injected_fractions(mode.replace("_cls", ""))
        self.landscape_only = bool(args["landscape_only"]) and \
            args["patch_embed_cls"] == "ManyAR_PatchEmbed"
        enc, dec = args["enc_embed_dim"], args["dec_embed_dim"]
        n_enc, n_dec, ratio = args["enc_depth"], args["dec_depth"], args["mlp_ratio"]
        self.patch_size = args["patch_size"]
        if fractions is None:  # 'inject[]': every block of either depth's grid
            fractions = {i / n for i in range(n_enc) for n in (n_enc, n_dec)}
        rope = make_rope(args["pos_embed"])
        self.patch_embed = PatchEmbed(enc, self.patch_size)
        self.patch_embed_rays = PriorPatchEmbed(3, enc, self.patch_size)
        self.patch_embed_depth = PriorPatchEmbed(2, enc, self.patch_size)
        self.pose_embed = Mlp(12, 4 * dec, dec)
        if self.num_cls:
            self.cls_token1 = nn.Parameter(torch.zeros(dec))
            self.cls_token2 = nn.Parameter(torch.zeros(dec))
        self.enc_blocks = nn.ModuleList([
            EncoderBlock(enc, args["enc_num_heads"], ratio, rope, i / n_enc in fractions)
            for i in range(n_enc)])
        self.enc_norm = LayerNorm6(enc)
        self.decoder_embed = nn.Linear(enc, dec)
        for name in ("dec_blocks", "dec_blocks2"):
            setattr(self, name, nn.ModuleList([
                DecoderBlock(dec, args["dec_num_heads"], ratio, rope, i / n_dec in fractions)
                for i in range(n_dec)]))
        self.dec_norm = LayerNorm6(dec)
        heads = args["head_type"].split(";")
        if len(heads) not in (1, 2):
            raise SpecError(f"head_type {args['head_type']!r} must name one or two heads")
        head1, head2 = (heads + heads)[:2]
        self.downstream_head1 = LinearTagHead(head1, dec, self.patch_size)
        self.downstream_head2 = LinearTagHead(head2, dec, self.patch_size)

    # --- encoder --------------------------------------------------------------------------
    def encode(self, view: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        groups = orientation_groups(true_shape_of(view, uniform=not self.landscape_only),
                                    self.landscape_only)
        x, pos = per_group(self.patch_embed, view["img"], groups, self.landscape_only)
        priors = []
        for key, embed in (("known_rays", self.patch_embed_rays),
                           ("known_depth", self.patch_embed_depth)):
            prior = view.get(key)
            priors.append(None if prior is None else
                          per_group(lambda t, e=embed: (e(t),), prior.to(x.dtype), groups,
                                    self.landscape_only)[0])
        for blk in self.enc_blocks:
            x = blk(x, pos, *priors)
        return self.enc_norm(x), pos

    # --- decoder --------------------------------------------------------------------------
    def decode(self, f1: torch.Tensor, p1: torch.Tensor, f2: torch.Tensor, p2: torch.Tensor,
               pose1: torch.Tensor | None, pose2: torch.Tensor | None):
        out1, out2 = [f1], [f2]
        x1, x2 = self.decoder_embed(f1), self.decoder_embed(f2)
        emb1, emb2 = (None if pose is None else
                      self.pose_embed(pose[:, :3].flatten(1).to(x1.dtype))[:, None]
                      for pose in (pose1, pose2))
        if self.num_cls:
            x1 = torch.cat((self.cls_token1.expand(len(x1), 1, -1), x1), 1)
            x2 = torch.cat((self.cls_token2.expand(len(x2), 1, -1), x2), 1)
            cls_pos = -torch.ones(len(p1), 1, 2, dtype=p1.dtype, device=p1.device)
            p1, p2 = torch.cat((cls_pos, p1), 1), torch.cat((cls_pos, p2), 1)
        for blk1, blk2 in zip(self.dec_blocks, self.dec_blocks2):
            x1, x2 = (blk1(x1, x2, p1, p2, self.num_cls, emb1),
                      blk2(x2, x1, p2, p1, self.num_cls, emb2))
            out1.append(x1[:, self.num_cls:])
            out2.append(x2[:, self.num_cls:])
        out1[-1], out2[-1] = self.dec_norm(out1[-1]), self.dec_norm(out2[-1])
        return out1, out2

    def forward(self, view1: Mapping[str, torch.Tensor], view2: Mapping[str, torch.Tensor]
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        f1, p1 = self.encode(view1)
        f2, p2 = self.encode(view2)
        dec1, dec2 = self.decode(f1, p1, f2, p2, view1.get("known_pose"), view2.get("known_pose"))
        return self._heads(dec1, dec2, true_shape_of(view1, not self.landscape_only),
                           true_shape_of(view2, not self.landscape_only))

    def forward_pairs(self, view: Mapping[str, torch.Tensor], first: torch.Tensor,
                      second: torch.Tensor, known_pose: torch.Tensor | None = None,
                      pair_batch: int = 0
                      ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Encode each image of ``view`` (N images with their ray/depth priors) once, then
        decode the pairs ``(first[k], second[k])`` in chunks of ``pair_batch`` (0 = all), each
        with its relative pose prior ``known_pose[k]`` (given to both views, as upstream): the
        outputs of ``forward`` on the gathered pairs."""
        shape = true_shape_of(view, not self.landscape_only)
        shape1, shape2 = shape[first.cpu()], shape[second.cpu()]   # before queueing GPU work
        f, p = self.encode(view)

        def decode(a: torch.Tensor, b: torch.Tensor, pose: torch.Tensor | None,
                   shape_a: torch.Tensor, shape_b: torch.Tensor):
            dec1, dec2 = self.decode(f[a], p[a], f[b], p[b], pose, pose)
            return self._heads(dec1, dec2, shape_a, shape_b)

        return decode_in_chunks(decode, first, second, pair_batch, known_pose, shape1, shape2)

    def _heads(self, dec1: list[torch.Tensor], dec2: list[torch.Tensor], shape1: torch.Tensor,
               shape2: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        res1, res2 = (
            head_per_group(head, tokens, shape, orientation_groups(shape, self.landscape_only))
            for head, tokens, shape in ((self.downstream_head1, dec1, shape1),
                                        (self.downstream_head2, dec2, shape2)))
        res2["pts3d_in_other_view"] = res2.pop("pts3d")
        return res1, res2


def build(spec: ModelSpec) -> Pow3R:
    """Pow3R from its ``definition`` string."""
    return Pow3R(merged_arguments(spec, BACKBONE_DEFAULTS, POW3R_DEFAULTS))


# --- priors ---------------------------------------------------------------------------------
def rays_from_intrinsics(K: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 3, H, W) camera rays ``K^-1 [x, y, 1]`` at integer pixel coordinates."""
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32),
                            torch.arange(width, dtype=torch.float32), indexing="ij")
    pix = torch.stack([xs, ys, torch.ones_like(xs)], -1).to(K.device)            # (H, W, 3)
    K_inv = torch.linalg.inv(K.double()).float()
    return torch.einsum("bij,hwj->bihw", K_inv, pix)


def normalised_depth(depth: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W): depth divided by its mean over valid (> 0) pixels, and the validity mask."""
    depth = torch.nan_to_num(depth.float())
    mask = (depth > 0).float()
    count = mask.flatten(1).sum(1).clamp(min=1)
    mean = (depth * mask).flatten(1).sum(1) / count
    scaled = torch.where(mask > 0, depth / mean.clamp(min=1e-12)[:, None, None], 0.0)
    return torch.stack([scaled, mask], dim=1)


def relative_pose(cam1: torch.Tensor | None, cam2: torch.Tensor) -> torch.Tensor:
    """(B, 4, 4) pose of camera 2 in camera 1's frame, translation scaled to unit length."""
    cam2 = cam2.double()
    cam1 = torch.eye(4, dtype=cam2.dtype, device=cam2.device).expand_as(cam2) if cam1 is None \
        else cam1.double()
    rel = torch.linalg.inv(cam1) @ cam2
    t = rel[:, :3, 3]
    rel[:, :3, 3] = t / t.norm(dim=-1, keepdim=True).clamp(min=1e-5)
    return rel.float()


def encode_priors(view1: Mapping[str, torch.Tensor], view2: Mapping[str, torch.Tensor],
                  K1: torch.Tensor | None = None, K2: torch.Tensor | None = None,
                  D1: torch.Tensor | None = None, D2: torch.Tensor | None = None,
                  cam1: torch.Tensor | None = None, cam2: torch.Tensor | None = None
                  ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Add the official prior inputs to copies of ``view1``/``view2``.

    Args:
        K1, K2: (B, 3, 3) intrinsics in pixels of the view's image.
        D1, D2: (B, H, W) depth maps, 0 (or NaN) = unknown; dense or sparse.
        cam1, cam2: (B, 4, 4) camera-to-world poses; the relative pose needs ``cam2`` (``cam1``
            defaults to the identity) and is given to both views, as upstream does.
    """
    views = (dict(view1), dict(view2))
    for view, K, D in ((views[0], K1, D1), (views[1], K2, D2)):
        height, width = (int(v) for v in true_shape_of(view)[0])
        if K is not None:
            view["known_rays"] = rays_from_intrinsics(torch.as_tensor(K), height, width)
        if D is not None:
            D = torch.as_tensor(D)
            if tuple(D.shape[-2:]) != tuple(view["img"].shape[-2:]):
                raise ValueError(f"depth map of size {tuple(D.shape[-2:])} does not match the "
                                 f"image {tuple(view['img'].shape[-2:])}")
            view["known_depth"] = normalised_depth(D)
    if cam2 is not None:
        pose = relative_pose(None if cam1 is None else torch.as_tensor(cam1), torch.as_tensor(cam2))
        views[0]["known_pose"] = views[1]["known_pose"] = pose
    return views
