"""Transformer building blocks shared by the CroCo/DUSt3R family and Fast3R.

Module and parameter names follow the official checkpoints (``qkv``, ``proj``, ``projq``,
``norm_y``, ``fc1`` ...) so released state dicts load with ``strict=True``. Attention runs
through :func:`torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient
kernels on GPU) instead of an explicit softmax; :func:`set_attention_dtype` lets float32 models
run their attention kernels in bfloat16 (the ``tf32`` precision on CUDA).

Token layout: ``(B, N, C)``; patch positions ``(B, N, 2)`` integer ``(row, column)`` patch
coordinates, the order the 2D RoPE expects.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

#: LayerNorm used by CroCo, DUSt3R, MASt3R and Pow3R (eps 1e-6).
LayerNorm6 = partial(nn.LayerNorm, eps=1e-6)


#: Patch rows/columns the RoPE tables cover: images up to 16384 pixels at patch size 16.
MAX_PATCH_POSITIONS = 1024


class RoPE2D(nn.Module):
    """2D rotary position embedding (rotate-half convention, no parameters).

    The first half of each head's channels rotates with the patch row, the second half with the
    patch column. Frequencies are ``base ** (-arange(0, D, 2) / D)`` with ``D = head_dim / 2``.
    The cos/sin tables cover :data:`MAX_PATCH_POSITIONS` positions, so no forward waits for the
    device to report the largest position.
    """

    def __init__(self, base: float = 100.0) -> None:
        super().__init__()
        self.base = base
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _cos_sin(self, dim: int, device: torch.device,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (dim, device, dtype)
        if key not in self._cache:
            inv_freq = 1.0 / (self.base ** (torch.arange(0, dim, 2, device=device).float() / dim))
            angles = torch.outer(torch.arange(MAX_PATCH_POSITIONS, device=device,
                                              dtype=inv_freq.dtype), inv_freq)
            angles = torch.cat((angles, angles), dim=-1)
            self._cache[key] = (angles.cos().to(dtype), angles.sin().to(dtype))
        return self._cache[key]

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotate ``tokens`` (B, heads, N, head_dim) by ``positions`` (B, N, 2) = (row, col)."""
        cos, sin = self._cos_sin(tokens.shape[-1] // 2, tokens.device, tokens.dtype)
        rows, cols = positions[..., 0], positions[..., 1]
        c = torch.cat((cos[rows], cos[cols]), dim=-1)[:, None]      # (B, 1, N, head_dim)
        s = torch.cat((sin[rows], sin[cols]), dim=-1)[:, None]
        # rotate-half within each (row, column) half: (a, b) -> (-b, a) per quarter pair
        quarters = tokens.unflatten(-1, (2, 2, tokens.shape[-1] // 4))
        rotated = torch.stack((-quarters[..., 1, :], quarters[..., 0, :]), dim=-2).flatten(-3)
        return tokens * c + rotated * s


def make_rope(pos_embed: str) -> RoPE2D:
    """Build the RoPE named in a checkpoint (``'RoPE100'`` -> base 100)."""
    if not pos_embed.startswith("RoPE"):
        raise ValueError(f"unsupported pos_embed {pos_embed!r}: only 'RoPE<base>' exists in the "
                         "released checkpoints")
    return RoPE2D(float(pos_embed[len("RoPE"):]))


def patch_positions(batch: int, rows: int, cols: int, device: torch.device) -> torch.Tensor:
    """Integer (row, col) coordinates of a ``rows x cols`` patch grid: (batch, rows*cols, 2)."""
    r = torch.arange(rows, device=device)
    c = torch.arange(cols, device=device)
    grid = torch.cartesian_prod(r, c)
    return grid[None].expand(batch, -1, -1)


class Mlp(nn.Module):
    """Two-layer perceptron with GELU (``fc1``, ``fc2``)."""

    def __init__(self, dim: int, hidden: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_dim or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, N, C) -> (B, heads, N, C / heads)."""
    b, n, c = x.shape
    return x.view(b, n, num_heads, c // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, D) -> (B, N, heads * D)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
           compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Scaled dot-product attention of ``(B, heads, N, D)`` queries, keys and values; with
    ``compute_dtype`` (e.g. bfloat16 for float32 tokens) the kernel runs in that dtype and the
    result comes back in the queries' dtype."""
    if compute_dtype is None or compute_dtype == q.dtype:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    out = F.scaled_dot_product_attention(q.to(compute_dtype), k.to(compute_dtype),
                                         v.to(compute_dtype), scale=scale)
    return out.to(q.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with optional 2D RoPE on queries and keys.

    ``scale`` overrides the softmax scale (default ``head_dim ** -0.5``); ``compute_dtype``
    (:func:`set_attention_dtype`) is the dtype the attention kernel runs in (None: the tokens').
    """

    compute_dtype: torch.dtype | None = None

    def __init__(self, dim: int, num_heads: int, rope: RoPE2D | None = None,
                 qkv_bias: bool = True, scale: float | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = scale
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.rope is not None:
            q = self.rope(q, pos)
            k = self.rope(k, pos)
        return self.proj(merge_heads(attend(q, k, v, self.scale, self.compute_dtype)))


class CrossAttention(nn.Module):
    """Multi-head cross-attention (queries from ``x``, keys/values from ``memory``);
    ``compute_dtype`` as :class:`Attention`'s."""

    compute_dtype: torch.dtype | None = None

    def __init__(self, dim: int, num_heads: int, rope: RoPE2D | None = None,
                 qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.projq = nn.Linear(dim, dim, bias=qkv_bias)
        self.projk = nn.Linear(dim, dim, bias=qkv_bias)
        self.projv = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def forward(self, x: torch.Tensor, memory: torch.Tensor, xpos: torch.Tensor | None,
                mpos: torch.Tensor | None) -> torch.Tensor:
        q = split_heads(self.projq(x), self.num_heads)
        k = split_heads(self.projk(memory), self.num_heads)
        v = split_heads(self.projv(memory), self.num_heads)
        if self.rope is not None:
            q = self.rope(q, xpos)
            k = self.rope(k, mpos)
        return self.proj(merge_heads(attend(q, k, v, compute_dtype=self.compute_dtype)))


def set_attention_dtype(model: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    """Run every attention kernel of ``model`` in ``dtype`` (None: in the tokens' dtype), in
    place; the projections around it keep the parameters' dtype."""
    for module in model.modules():
        if isinstance(module, (Attention, CrossAttention)):
            module.compute_dtype = dtype
    return model


class Block(nn.Module):
    """Pre-norm ViT block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0,
                 rope: RoPE2D | None = None, qkv_bias: bool = True,
                 norm_layer=LayerNorm6, attn_scale: float | None = None) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, rope=rope, qkv_bias=qkv_bias, scale=attn_scale)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), pos)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """CroCo decoder block: self-attention, cross-attention to the other view, MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0,
                 rope: RoPE2D | None = None, qkv_bias: bool = True,
                 norm_layer=LayerNorm6) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, rope=rope, qkv_bias=qkv_bias)
        self.cross_attn = CrossAttention(dim, num_heads, rope=rope, qkv_bias=qkv_bias)
        self.norm2 = norm_layer(dim)
        self.norm3 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y = norm_layer(dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor, xpos: torch.Tensor,
                ypos: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), xpos)
        y = self.norm_y(y)
        x = x + self.cross_attn(self.norm2(x), y, xpos, ypos)
        return x + self.mlp(self.norm3(x))


class PatchEmbed(nn.Module):
    """16x16 patch embedding (``proj`` convolution) returning tokens and patch positions.

    Accepts any image whose height and width are multiples of the patch size, landscape or
    portrait (what the official ``PatchEmbedDust3R`` does).
    """

    def __init__(self, embed_dim: int, patch_size: int = 16, in_chans: int = 3) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``img`` (B, 3, H, W) -> tokens (B, H/16*W/16, C), positions (B, N, 2)."""
        b, _, h, w = img.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}: "
                             "preprocess with threer_ros.models.prepare_images")
        x = self.proj(img)
        pos = patch_positions(b, h // p, w // p, img.device)
        return x.flatten(2).transpose(1, 2), pos
