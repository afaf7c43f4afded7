"""Images to network inputs, with the geometry of the official ``load_images``.

For ``size`` 512 (any size but 224): the long side is resized to ``size`` (Lanczos when
shrinking, bicubic otherwise; sizes rounded), then the image is centre-cropped to multiples of
the patch size; a square image is cropped to 4:3 unless ``square_ok``. For ``size`` 224 the
short side becomes 224 and a centred square is kept. Pixels are normalised to [-1, 1] as
``(u8 / 255 - 0.5) / 0.5``.

:func:`prepare_images` (PIL, on the CPU) reproduces ``load_images`` exactly on the parity
fixtures. :func:`prepare_images_torch` does the same geometry for a batch on any device (the
capture node's path); its resampling is torch's antialiased bicubic, which differs from PIL's
Lanczos by 0.12-0.18 grey levels on average and at most 13 at isolated edge pixels on the
parity images (measured in ``test/test_preprocess.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


@dataclass(frozen=True)
class CropGeometry:
    """Resize to (``width``, ``height``), then crop ``box`` = (left, top, right, bottom) pixels."""

    width: int
    height: int
    box: tuple[float, float, float, float]

    @property
    def out_size(self) -> tuple[int, int]:
        """(height, width) after the crop (PIL rounds the box half to even)."""
        left, top, right, bottom = (round(v) for v in self.box)
        return bottom - top, right - left


def crop_geometry(width: int, height: int, size: int, patch: int = 16,
                  square_ok: bool = False) -> CropGeometry:
    """The resize and crop ``load_images`` applies to a ``width x height`` image."""
    long_edge = round(size * max(width / height, height / width)) if size == 224 else size
    scale = long_edge / max(width, height)
    new_w, new_h = int(round(width * scale)), int(round(height * scale))
    cx, cy = new_w // 2, new_h // 2
    if size == 224:
        half = min(cx, cy)
        box = (cx - half, cy - half, cx + half, cy + half)
    else:
        half_w = ((2 * cx) // patch) * patch / 2
        half_h = ((2 * cy) // patch) * patch / 2
        if not square_ok and new_w == new_h:
            half_h = 3 * half_w / 4
        box = (cx - half_w, cy - half_h, cx + half_w, cy + half_h)
    return CropGeometry(new_w, new_h, tuple(float(v) for v in box))


def network_intrinsics(K: np.ndarray, width: int, height: int, size: int,
                       square_ok: bool = False, patch: int = 16) -> np.ndarray:
    """Intrinsics of the network image that :func:`prepare_images` makes from a camera image.

    Args:
        K: (3, 3) or (N, 3, 3) pinhole intrinsics in pixels of the ``width x height`` camera
            image (integer pixel coordinates at pixel centres).
        width, height: Size of that camera image, pixels.
        size, square_ok, patch: As given to :func:`prepare_images`.

    Returns:
        float64 intrinsics of the same shape, in pixels of the resized and cropped network
        image (``true_shape``): what Pow3R's ``encode_priors`` takes as ``K1``/``K2``.
    """
    geo = crop_geometry(width, height, size, patch, square_ok)
    sx, sy = geo.width / width, geo.height / height
    out = np.array(K, dtype=np.float64)
    if out.shape[-2:] != (3, 3):
        raise ValueError(f"K must be (3, 3) or (N, 3, 3) intrinsics, got shape {out.shape}")
    out[..., 0, :] *= sx
    out[..., 1, :] *= sy
    # pixel centres: x' + 0.5 = s (x + 0.5); then the crop moves the origin to the box corner
    out[..., 0, 2] += 0.5 * (sx - 1.0) - round(geo.box[0])
    out[..., 1, 2] += 0.5 * (sy - 1.0) - round(geo.box[1])
    return out


def _normalise(chw_uint8: torch.Tensor) -> torch.Tensor:
    return (chw_uint8.float() / 255.0 - 0.5) / 0.5


def prepare_images(images: Sequence[np.ndarray], size: int, square_ok: bool = False,
                   patch: int = 16) -> list[dict]:
    """H x W x 3 uint8 RGB arrays -> official view dicts (``img``, ``true_shape``, ``idx``,
    ``instance``), one per image, each with batch size 1."""
    views = []
    for idx, array in enumerate(images):
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
            raise ValueError(f"image {idx}: expected H x W x 3 uint8 RGB, got {array.shape} "
                             f"{array.dtype}")
        img = Image.fromarray(array)
        geo = crop_geometry(img.width, img.height, size, patch, square_ok)
        shrink = max(img.width, img.height) > max(geo.width, geo.height)
        img = img.resize((geo.width, geo.height),
                         Image.LANCZOS if shrink else Image.BICUBIC).crop(geo.box)
        chw = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
        views.append({"img": _normalise(chw)[None],
                      "true_shape": torch.tensor([[img.height, img.width]], dtype=torch.int32),
                      "idx": idx, "instance": str(idx)})
    return views


def prepare_images_torch(images: torch.Tensor, size: int, square_ok: bool = False,
                         patch: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched preprocessing on the images' device.

    Args:
        images: (N, H, W, 3) uint8 RGB, all of one size.

    Returns:
        ``img`` (N, 3, h, w) float32 in [-1, 1] and ``true_shape`` (N, 2) int32 (CPU).
    """
    n, height, width, _ = images.shape
    geo = crop_geometry(width, height, size, patch, square_ok)
    x = images.permute(0, 3, 1, 2).float()
    if (geo.width, geo.height) != (width, height):
        x = F.interpolate(x, size=(geo.height, geo.width), mode="bicubic", antialias=True,
                          align_corners=False).round().clamp(0, 255)
    out_h, out_w = geo.out_size
    left, top = round(geo.box[0]), round(geo.box[1])
    x = x[:, :, top:top + out_h, left:left + out_w]
    shape = torch.tensor([[out_h, out_w]] * n, dtype=torch.int32)
    return (x / 255.0 - 0.5) / 0.5, shape


def stack_views(views: Sequence[dict]) -> dict:
    """Collate single-image views of one size into one batched view dict."""
    shapes = {tuple(v["img"].shape[-2:]) for v in views}
    if len(shapes) != 1:
        raise ValueError(f"views of different sizes cannot be batched: {sorted(shapes)}")
    return {"img": torch.cat([v["img"] for v in views]),
            "true_shape": torch.cat([v["true_shape"] for v in views]),
            "idx": [v["idx"] for v in views], "instance": [v["instance"] for v in views]}
