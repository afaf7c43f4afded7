"""Multi-view stereo primitives in torch: window sums, image pyramids, the zero-mean
normalised cross-correlation (ZNCC, grey or colour) of a reference image with source images
warped through per-pixel depth hypotheses, and the geometric check of depth maps against each
other.

Conventions as in :mod:`threer_ros.geometry.cameras`: pixel centres at integer coordinates,
``K`` in pixels of its image, camera-to-rig poses in metres; hypotheses are inverse depths
(1/metres along the reference camera's optical axis).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from threer_ros.geometry.cameras import backproject, pixel_rays, pixel_to_grid_matrix, project


def box_sum(x: torch.Tensor, window: int) -> torch.Tensor:
    """Sum over the ``window x window`` neighbourhood of every pixel of ``(..., H, W)``, with
    zeros beyond the border (differences of running sums along each axis: four operations
    whatever the window, few kernel launches on a GPU)."""
    r = window // 2
    H, W = x.shape[-2:]
    running = F.pad(x, (r + 1, r)).cumsum(-1)
    rows = running[..., window:] - running[..., :W]
    running = F.pad(rows, (0, 0, r + 1, r)).cumsum(-2)
    return running[..., window:, :] - running[..., :H, :]


def window_std(grey: torch.Tensor, window: int) -> torch.Tensor:
    """Standard deviation of ``grey`` ``(..., H, W)`` over each pixel's window (in the unit
    of ``grey``; the part of the window inside the image)."""
    count = box_sum(torch.ones_like(grey), window)
    variance = count * box_sum(grey ** 2, window) - box_sum(grey, window) ** 2
    return variance.clamp(min=0).sqrt() / count


def half_resolution(images: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, C, H, W)`` averaged over 2 x 2 pixels (``H // 2 x W // 2``), and the
    intrinsics ``(N, 3, 3)`` of the result (pixel ``u`` of the half image is the centre
    ``2 u + 0.5`` of the full one)."""
    scale = K.new_tensor([[0.5, 0.0, -0.25], [0.0, 0.5, -0.25], [0.0, 0.0, 1.0]])
    return F.avg_pool2d(images, 2), scale @ K


def zncc_cost(images: torch.Tensor, ref: int, sources: list[int], K: torch.Tensor,
              T: torch.Tensor, inv_depth: torch.Tensor, window: int, best: int) -> torch.Tensor:
    """Matching score of every depth hypothesis of every pixel of camera ``ref``.

    Each source image is warped onto the reference through the hypothesis of each pixel and
    compared with the reference by ZNCC over a square window around the pixel (-1 where the
    hypothesis projects outside the source image or behind it); the score is the mean of the
    ``best`` highest source scores (robust to occlusion).

    With several channels (colour), each channel's window is centred on its own mean and the
    channels are correlated as one vector: ``sum_c cov_c / sqrt(sum_c var_c(ref) sum_c
    var_c(src))``. A change of exposure (one gain for all channels) and per-channel offsets
    (white balance) leave the score unchanged; colour variation counts as texture, which
    grey levels lose (skin: chroma varies where brightness hardly does).

    Args:
        images: ``(N, C, H, W)`` images in [0, 1] (C = 1: grey, 3: colour).
        ref: Index of the reference camera.
        sources: Indices of the source cameras.
        K: ``(N, 3, 3)`` float64 intrinsics of ``images``' resolution.
        T: ``(N, 4, 4)`` float64 camera-to-rig poses.
        inv_depth: ``(D, H * W)`` hypotheses (1/metres) per pixel, row-major, on ``images``'
            device.
        window: Odd window side in pixels.
        best: Sources averaged per hypothesis.

    Returns:
        ``(D, H, W)`` scores in [-1, 1].
    """
    dev = images.device
    _, C, H, W = images.shape
    D = inv_depth.shape[0]
    rays = pixel_rays(K[ref], H, W)                                       # (HW, 3), z = 1
    to_grid = pixel_to_grid_matrix(H, W, K)
    ref_img = images[ref]                                                 # (C, H, W)
    count = box_sum(torch.ones_like(ref_img[0]), window)
    sum_r = box_sum(ref_img, window)
    var_r = (count * box_sum(ref_img ** 2, window) - sum_r ** 2).clamp(min=0).sum(0)
    eps = 1e-8 * count ** 4           # 1e-8 on the product of the two window variances
    k = min(best, len(sources))
    ranked = [torch.full((D, H, W), -1.0, device=dev) for _ in range(k)]
    for src in sources:
        # a ref pixel at depth 1/q lies at X = R ray / q + t in the source camera; scaled
        # by q its homogeneous grid coordinates are G (R ray + q t), G = to_grid @ K_src
        rel = torch.linalg.inv(T[src]) @ T[ref]                            # ref -> src
        G = to_grid @ K[src]
        a = (rays @ (G @ rel[:3, :3]).T).float().to(dev)                  # (HW, 3)
        b = (G @ rel[:3, 3]).float().to(dev)
        hz = a[:, 2] + b[2] * inv_depth                                   # (D, HW)
        ahead = hz > 0
        hz = torch.where(ahead, hz, torch.ones_like(hz))
        gx = (a[:, 0] + b[0] * inv_depth) / hz
        gy = (a[:, 1] + b[1] * inv_depth) / hz
        inside = (ahead & (gx.abs() <= 1) & (gy.abs() <= 1)).reshape(D, H, W)
        grid = torch.stack([gx, gy], -1).reshape(D, H, W, 2)
        warped = F.grid_sample(images[src].expand(D, C, H, W), grid, mode="bilinear",
                               padding_mode="zeros", align_corners=True)  # (D, C, H, W)
        # per channel sums of w; channel totals of w^2 and w r (the box sum is linear)
        sums = box_sum(torch.cat([warped, (warped * warped).sum(1, keepdim=True),
                                  (warped * ref_img).sum(1, keepdim=True)], 1), window)
        sum_w, sum_ww, sum_wr = sums[:, :C], sums[:, C], sums[:, C + 1]
        var_w = count * sum_ww - (sum_w ** 2).sum(1)
        zncc = (count * sum_wr - (sum_w * sum_r).sum(1)) / (var_w.clamp(min=0) * var_r
                                                              + eps).sqrt()
        zncc = torch.where(inside, zncc, -1.0)
        for i in range(k):                     # insert into the k best, kept sorted
            higher = torch.maximum(ranked[i], zncc)
            zncc = torch.minimum(ranked[i], zncc)
            ranked[i] = higher
    return torch.stack(ranked).mean(0)


def cross_check(depth: torch.Tensor, score: torch.Tensor, K: torch.Tensor, T: torch.Tensor,
                relative: float, pixels: float
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check every camera's depth map against every other camera's, both ways.

    A pixel ``p`` of camera ``i`` (depth > 0) agrees with camera ``j`` when its point
    projects into ``j`` at ``q`` with depth ``z``, the nearest pixel ``q'`` of ``q`` holds a
    depth within ``relative * z`` of ``z``, and that pixel's point projects back into ``i``
    within ``pixels`` of ``p`` and within ``relative`` of ``p``'s depth.

    Args:
        depth: ``(N, H, W)`` depths (metres, 0 = none) along each optical axis.
        score: ``(N, H, W)`` matching score of each depth (ZNCC).
        K: ``(N, 3, 3)`` intrinsics; T: ``(N, 4, 4)`` camera-to-rig poses (metres).
        relative: Largest relative depth difference.
        pixels: Largest reprojection distance back into ``i`` (pixels).

    Returns:
        ``count`` ``(N, H, W)`` int32: cameras that agree; ``agreement`` ``(N, H, W)``: mean
        score of the pixel and of its agreeing pixels (photometric agreement across the
        consistent views); ``points`` ``(N, H, W, 3)``: mean rig-frame point of the same.
        Pixels without a depth are not checked: 0 in all three.
    """
    n, H, W = depth.shape
    dev = depth.device
    K32, T32 = K.float().to(dev), T.float().to(dev)
    count = torch.zeros(n, H * W, dtype=torch.int32, device=dev)
    agreement = torch.zeros(n, H * W, device=dev)
    points = torch.zeros(n, H * W, 3, device=dev)
    for i in range(n):
        mine = depth[i].reshape(-1)
        has = (mine > 0).nonzero()[:, 0]              # only pixels with a depth are checked
        mine = mine[has]
        own = backproject(depth[i], K32[i], T32[i])[has]                   # (P, 3)
        others = [j for j in range(n) if j != i]
        uv, z = project(own, K32[others], T32[others])                     # (n-1, P, ...)
        u = uv[..., 0].round().long()
        v = uv[..., 1].round().long()
        inside = (z > 0) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
        flat = (v.clamp(0, H - 1) * W + u.clamp(0, W - 1))                 # (n-1, P)
        theirs = depth[others].reshape(n - 1, -1).gather(1, flat)
        forward = inside & (theirs > 0) & ((theirs - z).abs() <= relative * z)
        rays = torch.stack([u, v, torch.ones_like(u)], -1).float() @ \
            torch.linalg.inv(K32[others]).transpose(-1, -2)                # (n-1, P, 3)
        back = (rays * theirs[..., None]) @ T32[others, :3, :3].transpose(-1, -2) + \
            T32[others, None, :3, 3]                                       # rig frame
        uv_i, z_i = project(back.reshape(-1, 3), K32[i], T32[i])
        uv_i, z_i = uv_i.reshape(n - 1, -1, 2), z_i.reshape(n - 1, -1)
        p = torch.stack([has % W, has // W], -1).float()                  # (P, 2): u, v
        agree = forward & ((uv_i - p).norm(dim=-1) <= pixels) & \
            ((z_i - mine).abs() <= relative * mine)
        weight = agree.float()
        their_score = score[others].reshape(n - 1, -1).gather(1, flat)
        total = 1 + weight.sum(0)
        count[i, has] = weight.sum(0).int()
        agreement[i, has] = (score[i].reshape(-1)[has] + (weight * their_score).sum(0)) / total
        points[i, has] = (own + (weight[..., None] * back).sum(0)) / total[:, None]
    return count.reshape(n, H, W), agreement.reshape(n, H, W), points.reshape(n, H, W, 3)
