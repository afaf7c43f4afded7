"""Render a point cloud to a PNG preview from a pinhole viewpoint (numpy z-buffer splats)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def render_points(points: np.ndarray, colors: np.ndarray, cam_to_world: np.ndarray,
                  K: np.ndarray, size: tuple[int, int], splat: int = 2,
                  background: tuple[int, int, int] = (40, 40, 40)) -> np.ndarray:
    """Render ``points`` (P, 3, world frame) through the pinhole ``K`` at ``cam_to_world``.

    Each point is a ``splat`` x ``splat`` pixel square; nearer points hide farther ones.
    Returns an (H, W, 3) uint8 image of ``size`` = (H, W).
    """
    height, width = size
    image = np.empty((height, width, 3), np.uint8)
    image[:] = background
    world_to_cam = np.linalg.inv(cam_to_world)
    cam = points @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]
    front = cam[:, 2] > 1e-6
    cam, colors = cam[front], colors[front]
    if len(cam) == 0:
        return image
    pix = cam @ np.asarray(K, np.float64).T
    u = np.round(pix[:, 0] / pix[:, 2] - (splat - 1) / 2).astype(np.int64)
    v = np.round(pix[:, 1] / pix[:, 2] - (splat - 1) / 2).astype(np.int64)
    order = np.argsort(-cam[:, 2])  # far to near: nearer points are written last
    u, v, colors = u[order], v[order], colors[order]
    for du in range(splat):
        for dv in range(splat):
            uu, vv = u + du, v + dv
            ok = (uu >= 0) & (uu < width) & (vv >= 0) & (vv < height)
            image[vv[ok], uu[ok]] = colors[ok]
    return image


def save_preview(path: str | Path, panels: list[np.ndarray], palette: int = 0) -> None:
    """Save images side by side (scaled to the tallest panel's height) as one PNG; with
    ``palette > 0`` in that many colours (a smaller file, e.g. for documentation)."""
    height = max(p.shape[0] for p in panels)
    scaled = []
    for panel in panels:
        h, w = panel.shape[:2]
        img = Image.fromarray(panel)
        if h != height:
            img = img.resize((round(w * height / h), height), Image.LANCZOS)
        scaled.append(np.asarray(img))
    image = Image.fromarray(np.concatenate(scaled, axis=1))
    if palette > 0:
        image = image.quantize(palette)
    image.save(path, optimize=True)
