"""Pinhole camera maths in torch: pixel rays, back-projection, projection, sampling grids.

Conventions: images are ``H x W``; pixel ``(u, v)`` is column ``u``, row ``v`` and integer
coordinates are pixel centres. Camera frames are OpenCV optical frames (x right, y down,
z forward). ``K`` is the 3x3 intrinsic matrix in pixels, ``cam_to_rig`` the 4x4 pose that maps
camera points to the rig frame (metres). Depth is the distance along the optical z axis
(metres). Every function works on the device and in the floating dtype of its tensor inputs.
"""

from __future__ import annotations

import torch


def pixel_rays(K: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Rays ``K^-1 [u, v, 1]`` of every pixel, row-major, as an ``(H * W, 3)`` tensor.

    Each ray has z = 1, so ``ray * depth`` is the pixel's point in the camera frame (metres).
    """
    v, u = torch.meshgrid(torch.arange(height, dtype=K.dtype, device=K.device),
                          torch.arange(width, dtype=K.dtype, device=K.device), indexing="ij")
    pixels = torch.stack([u.reshape(-1), v.reshape(-1), torch.ones_like(u).reshape(-1)], 1)
    return pixels @ torch.linalg.inv(K).T


def rays_of_views(K: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(N, H, W, 3)`` rays ``K^-1 [u, v, 1]`` (z = 1) of every pixel of N cameras with
    intrinsics ``(N, 3, 3)``."""
    v, u = torch.meshgrid(torch.arange(height, dtype=K.dtype, device=K.device),
                          torch.arange(width, dtype=K.dtype, device=K.device), indexing="ij")
    pixels = torch.stack([u, v, torch.ones_like(u)], -1)
    return torch.einsum("nij,hwj->nhwi", torch.linalg.inv(K), pixels)


def depths_to_rig(depth: torch.Tensor, K: torch.Tensor, cam_to_rig: torch.Tensor
                  ) -> torch.Tensor:
    """Rig-frame points ``(N, H, W, 3)`` of N depth maps ``(N, H, W)`` (metres along each
    camera's optical axis) back-projected along their calibrated rays (``K`` ``(N, 3, 3)``,
    ``cam_to_rig`` ``(N, 4, 4)``)."""
    cam = rays_of_views(K.to(depth.dtype), *depth.shape[1:]) * depth[..., None]
    pose = cam_to_rig.to(depth.dtype)
    return torch.einsum("nij,nhwj->nhwi", pose[:, :3, :3], cam) + pose[:, None, None, :3, 3]


def backproject(depth: torch.Tensor, K: torch.Tensor, cam_to_rig: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """Rig-frame points (metres) of the pixels of an ``H x W`` depth map.

    Args:
        depth: ``(H, W)`` depth along the optical axis, metres.
        K: ``(3, 3)`` intrinsics of the depth map's image.
        cam_to_rig: ``(4, 4)`` camera-to-rig pose.
        mask: Optional ``(H, W)`` bool; when given only those pixels are returned, in row-major
            order, else all ``H * W`` pixels (invalid depths give meaningless points).

    Returns:
        ``(P, 3)`` points in the rig frame.
    """
    rays = pixel_rays(K, *depth.shape)
    z = depth.reshape(-1)
    if mask is not None:
        keep = mask.reshape(-1)
        rays, z = rays[keep], z[keep]
    return (rays * z[:, None]) @ cam_to_rig[:3, :3].T + cam_to_rig[:3, 3]


def project(points: torch.Tensor, K: torch.Tensor, cam_to_rig: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates and depth of rig-frame points seen by one or several cameras.

    Args:
        points: ``(P, 3)`` points in the rig frame, metres.
        K: ``(3, 3)`` or ``(C, 3, 3)`` intrinsics.
        cam_to_rig: ``(4, 4)`` or ``(C, 4, 4)`` camera-to-rig poses (C cameras).

    Returns:
        ``uv`` ``([C,] P, 2)`` pixel coordinates and ``z`` ``([C,] P)`` depth along each
        camera's optical axis in metres; points with ``z <= 0`` are behind the camera and
        their ``uv`` is meaningless.
    """
    rotation = cam_to_rig[..., :3, :3]
    # p_cam = R^T (p_rig - c), written for row vectors and an optional camera batch
    cam = (points - cam_to_rig[..., None, :3, 3]) @ rotation
    z = cam[..., 2]
    uv = (cam @ K.transpose(-1, -2))[..., :2] / z.clamp(min=1e-12)[..., None]
    return uv, z


def pixel_to_grid_matrix(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """3x3 matrix taking homogeneous pixel coordinates to ``grid_sample`` coordinates.

    With ``align_corners=True``: pixel centre 0 maps to -1 and pixel centre ``W - 1``
    (``H - 1``) to +1, so a point is inside the image when both coordinates are within
    [-1, 1]. ``pixel_to_grid_matrix(H, W, K) @ K`` thus projects straight to sampling
    coordinates. Dtype and device follow ``like``.
    """
    sx, sy = 2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)
    return like.new_tensor([[sx, 0.0, -1.0], [0.0, sy, -1.0], [0.0, 0.0, 1.0]])
