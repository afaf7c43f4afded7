"""``mvs``: weight-free calibrated multi-view plane-sweep stereo in PyTorch (CPU or GPU).

For every camera (the reference) and its nearest neighbours (by camera centre):

1. sweep ``planes`` fronto-parallel planes, uniform in inverse depth over the range where the
   rig's optical axes converge, warping each neighbour onto the reference through each plane;
2. score each plane by the zero-mean normalised cross-correlation (ZNCC of grey levels over
   ``window`` x ``window`` pixels) and keep the mean of the ``best_neighbours`` best
   neighbours (robust to occlusion);
3. take the best plane per pixel and refine it to sub-plane precision with a parabola fit.

Depths are then filtered photometrically (ZNCC and texture thresholds) and geometrically (a
depth must agree with the depth maps of at least ``min_consistent`` other cameras), and the
surviving pixels are fused into one coloured cloud in the rig frame with the ZNCC score as
confidence. Needs intrinsics and camera-to-rig poses for every frame.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from threer_ros.geometry.cameras import backproject, pixel_rays, pixel_to_grid_matrix, project
from threer_ros.geometry.fusion import voxel_downsample
from threer_ros.pipeline.frames import resize_frames
from threer_ros.pipeline.types import FrameSet, Reconstruction


@dataclass(frozen=True)
class PlaneSweepSettings:
    """Parameters of :class:`PlaneSweepReconstructor` (distances in metres).

    Attributes:
        planes: Depth hypotheses per reference camera.
        neighbours: Source cameras per reference camera (nearest camera centres).
        best_neighbours: How many of the best-scoring neighbours are averaged per plane.
        window: Side of the ZNCC window in pixels (odd).
        depth_margin: Half-width of the swept depth range, as a fraction of the distance from
            the camera to the point where the rig's optical axes converge.
        min_zncc: Pixels whose best score is below this are discarded.
        min_texture: Pixels whose window has a smaller grey-level standard deviation (0..255)
            are discarded (blank background, saturated areas).
        consistency: Largest relative depth difference with another camera's depth map for
            the two to agree.
        min_consistent: Other cameras that must agree with a depth for it to be kept.
        voxel_size: Voxel edge of the fused cloud's down-sampling (0 = off).
        device: Torch device.
        working_width: Images are first shrunk to this width (pixels; 0 or wider: kept).
    """

    planes: int = 64
    neighbours: int = 4
    best_neighbours: int = 2
    window: int = 7
    depth_margin: float = 0.2
    min_zncc: float = 0.6
    min_texture: float = 3.0
    consistency: float = 0.01
    min_consistent: int = 2
    voxel_size: float = 0.002
    device: str = "cpu"
    working_width: int = 320


def _convergence_point(centres: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """Least-squares point closest to every camera's optical axis (rig frame)."""
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for c, a in zip(centres, axes):
        P = np.eye(3) - np.outer(a, a)
        A += P
        b += P @ c
    return np.linalg.lstsq(A, b, rcond=None)[0]


def _box_sum(x: torch.Tensor, window: int) -> torch.Tensor:
    """Sum over the ``window x window`` neighbourhood of every pixel of ``(..., H, W)``, with
    zeros beyond the border (separable shifted adds: cheaper than pooling on CPU)."""
    r = window // 2
    H, W = x.shape[-2:]
    padded = F.pad(x, (r, r))
    rows = padded[..., 0:W].clone()
    for shift in range(1, window):
        rows += padded[..., shift:shift + W]
    padded = F.pad(rows, (0, 0, r, r))
    out = padded[..., 0:H, :].clone()
    for shift in range(1, window):
        out += padded[..., shift:shift + H, :]
    return out


class PlaneSweepReconstructor:
    """The ``mvs`` backend (see the module docstring)."""

    name = "mvs"

    def __init__(self, settings: PlaneSweepSettings = PlaneSweepSettings()) -> None:
        if settings.window % 2 != 1:
            raise ValueError(f"window must be odd, got {settings.window}")
        self.settings = settings
        self.device = torch.device(settings.device)

    @classmethod
    def from_options(cls, options) -> "PlaneSweepReconstructor":
        """Build from the node's :class:`~threer_ros.pipeline.backends.BackendOptions`."""
        return cls(replace(PlaneSweepSettings(), device=options.device,
                           voxel_size=options.voxel_size, working_width=options.working_width))

    def reconstruct(self, frames: FrameSet) -> Reconstruction:
        s = self.settings
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        uncalibrated = [f.camera for f in frames.frames
                        if f.calibration is None or f.calibration.cam_to_rig is None]
        if uncalibrated:
            raise ValueError(f"the mvs backend needs intrinsics and extrinsics for every camera; "
                             f"missing for {', '.join(uncalibrated)} (publish CameraInfo and "
                             "set rig_calibration)")
        frames = resize_frames(frames, s.working_width)
        if len(frames.frames) < 1 + s.min_consistent:
            raise ValueError(f"mvs needs at least {1 + s.min_consistent} cameras, "
                             f"got {len(frames.frames)}")
        shapes = {f.image.shape for f in frames.frames}
        if len(shapes) != 1:
            raise ValueError(f"all images of a set must have one size, got {sorted(shapes)}")
        dev = self.device
        images = torch.stack([torch.from_numpy(f.image) for f in frames.frames]).to(dev)
        images = images.permute(0, 3, 1, 2).float() / 255.0                 # (N, 3, H, W)
        K = torch.tensor(np.stack([f.calibration.K for f in frames.frames]), dtype=torch.float64)
        poses = np.stack([f.calibration.cam_to_rig for f in frames.frames])
        T = torch.tensor(poses, dtype=torch.float64)
        timings["prepare"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        centres, axes = poses[:, :3, 3], poses[:, :3, 2]
        target = _convergence_point(centres, axes)
        distances = ((target - centres) * axes).sum(axis=1)
        grey = images.mean(1)                                                 # (N, H, W)
        depths, scores = [], []
        for r in range(len(images)):
            order = np.argsort(np.linalg.norm(centres - centres[r], axis=1))[1:1 + s.neighbours]
            near, far = distances[r] * (1 - s.depth_margin), distances[r] * (1 + s.depth_margin)
            depth, score = self._sweep(r, list(order), grey, K, T, near, far)
            depths.append(depth)
            scores.append(score)
        depth = torch.stack(depths)                                           # (N, H, W)
        score = torch.stack(scores)
        timings["depth"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        count = _box_sum(torch.ones_like(grey[0]), s.window)
        variance = (count * _box_sum(grey ** 2, s.window) - _box_sum(grey, s.window) ** 2)
        texture = variance.clamp(min=0).sqrt() / count * 255                  # std, grey levels
        valid = (score >= s.min_zncc) & (texture >= s.min_texture) & torch.isfinite(depth)
        depth = torch.where(valid, depth, torch.zeros_like(depth))
        keep = valid & (self._consistent_views(depth, K, T) >= s.min_consistent)
        timings["filter"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        points, colors, confidence = [], [], []
        for i in range(len(images)):
            points.append(backproject(depth[i].double(), K[i].to(dev), T[i].to(dev), keep[i])
                          .float())
            colors.append(torch.from_numpy(frames.frames[i].image).to(dev)[keep[i]])
            confidence.append(score[i][keep[i]].float())
        fused = [t.cpu().numpy() for t in voxel_downsample(
            torch.cat(points), torch.cat(colors), torch.cat(confidence), s.voxel_size)]
        timings["fusion"] = time.perf_counter() - t0
        return Reconstruction(points=fused[0], colors=fused[1], confidence=fused[2],
                              cameras=frames.cameras, cam_to_rig=poses,
                              intrinsics=K.numpy(), stamp_ns=frames.stamp_ns,
                              poses_from_calibration=True, timings_s=timings,
                              info={"mvs_valid_fraction": float(keep.float().mean())})

    def _sweep(self, ref: int, sources: list[int], grey: torch.Tensor, K: torch.Tensor,
               T: torch.Tensor, near: float, far: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Best depth (metres, NaN where undecided) and its ZNCC score per pixel of camera
        ``ref`` (H, W each), from the grey images (N, H, W) in [0, 1] and the float64
        intrinsics K (N, 3, 3) and camera-to-rig poses T (N, 4, 4)."""
        s = self.settings
        dev = grey.device
        _, H, W = grey.shape
        inv_depths = torch.linspace(1.0 / far, 1.0 / near, s.planes, dtype=torch.float64)
        inv_planes = inv_depths.float().to(dev)[:, None]                     # (D, 1)
        rays = pixel_rays(K[ref], H, W)                                       # (HW, 3), z = 1
        to_grid = pixel_to_grid_matrix(H, W, K)
        ref_img = grey[ref]
        count = _box_sum(torch.ones_like(ref_img), s.window)
        sum_r = _box_sum(ref_img, s.window)
        var_r = (count * _box_sum(ref_img ** 2, s.window) - sum_r ** 2).clamp(min=0)
        eps = 1e-8 * count ** 4           # 1e-8 on the product of the two window variances
        k = min(s.best_neighbours, len(sources))
        best = [torch.full((s.planes, H, W), -1.0, device=dev) for _ in range(k)]
        for src in sources:
            # a ref pixel at depth 1/q lies at X = R ray / q + t in the source camera; scaled
            # by q its homogeneous grid coordinates are G (R ray + q t), G = to_grid @ K_src
            rel = torch.linalg.inv(T[src]) @ T[ref]                            # ref -> src
            G = to_grid @ K[src]
            a = (rays @ (G @ rel[:3, :3]).T).float().to(dev)                  # (HW, 3)
            b = (G @ rel[:3, 3]).float().to(dev)
            hz = a[:, 2] + b[2] * inv_planes                                  # (D, HW)
            ahead = hz > 0
            hz = torch.where(ahead, hz, torch.ones_like(hz))
            gx = (a[:, 0] + b[0] * inv_planes) / hz
            gy = (a[:, 1] + b[1] * inv_planes) / hz
            inside = (ahead & (gx.abs() <= 1) & (gy.abs() <= 1)).reshape(s.planes, H, W)
            grid = torch.stack([gx, gy], -1).reshape(s.planes, H, W, 2)
            warped = F.grid_sample(grey[src].expand(s.planes, 1, H, W), grid, mode="bilinear",
                                   padding_mode="zeros", align_corners=True)[:, 0]
            sums = _box_sum(torch.stack([warped, warped * warped, warped * ref_img], 1),
                            s.window)                                         # (D, 3, H, W)
            sum_w, sum_ww, sum_wr = sums.unbind(1)
            var_w = (count * sum_ww - sum_w ** 2).clamp(min=0)
            zncc = (count * sum_wr - sum_w * sum_r) / (var_w * var_r + eps).sqrt()
            zncc = torch.where(inside, zncc, -1.0)
            for i in range(k):                     # insert into the k best, kept sorted
                higher = torch.maximum(best[i], zncc)
                zncc = torch.minimum(best[i], zncc)
                best[i] = higher
        cost = torch.stack(best).mean(0)                                        # (D, H, W)
        best_plane = cost.argmax(0)                                             # (H, W)
        score = cost.gather(0, best_plane[None])[0]
        lo = cost.gather(0, (best_plane - 1).clamp(min=0)[None])[0]
        hi = cost.gather(0, (best_plane + 1).clamp(max=s.planes - 1)[None])[0]
        curvature = lo - 2 * score + hi
        offset = torch.where(curvature < 0, 0.5 * (lo - hi) / curvature.clamp(max=-1e-9),
                             torch.zeros_like(score)).clamp(-0.5, 0.5)
        interior = (best_plane > 0) & (best_plane < s.planes - 1)
        step = float(inv_depths[1] - inv_depths[0])
        inv = inv_planes[best_plane, 0] + offset * step
        depth = torch.where(interior, 1.0 / inv, torch.full_like(inv, float("nan")))
        return depth, torch.where(interior, score, torch.full_like(score, -1.0))

    def _consistent_views(self, depth: torch.Tensor, K: torch.Tensor, T: torch.Tensor
                          ) -> torch.Tensor:
        """For each pixel, how many other cameras' depth maps agree with its depth (metres,
        0 = none) within the relative ``consistency`` threshold."""
        s = self.settings
        n, H, W = depth.shape
        dev = depth.device
        K32, T32 = K.float().to(dev), T.float().to(dev)
        to_grid = pixel_to_grid_matrix(H, W, K32)
        counts = torch.zeros(n, H, W, dtype=torch.int32, device=dev)
        for i in range(n):
            points = backproject(depth[i], K32[i], T32[i])                    # (HW, 3)
            others = [j for j in range(n) if j != i]
            grid, z = project(points, to_grid @ K32[others], T32[others])     # (n-1, HW, ...)
            sampled = F.grid_sample(depth[others][:, None], grid.reshape(n - 1, H, W, 2),
                                    mode="nearest", align_corners=True)[:, 0]
            z = z.reshape(n - 1, H, W)
            agree = (sampled > 0) & ((sampled - z).abs() <= s.consistency * z)
            counts[i] = agree.sum(0, dtype=torch.int32)
        return torch.where(depth > 0, counts, torch.zeros_like(counts))
