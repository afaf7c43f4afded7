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

from threer_ros.geometry.fusion import voxel_downsample
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


def _convergence_point(centres: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """Least-squares point closest to every camera's optical axis (rig frame)."""
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for c, a in zip(centres, axes):
        P = np.eye(3) - np.outer(a, a)
        A += P
        b += P @ c
    return np.linalg.lstsq(A, b, rcond=None)[0]


def _window_mean(x: torch.Tensor, window: int) -> torch.Tensor:
    return F.avg_pool2d(x, window, stride=1, padding=window // 2, count_include_pad=False)


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
                           voxel_size=options.voxel_size))

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
        grey = images.mean(1, keepdim=True)                                     # (N, 1, H, W)
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
        texture = (_window_mean(grey ** 2, s.window) - _window_mean(grey, s.window) ** 2)
        texture = texture.clamp(min=0).sqrt()[:, 0] * 255
        valid = (score >= s.min_zncc) & (texture >= s.min_texture) & torch.isfinite(depth)
        depth = torch.where(valid, depth, torch.zeros_like(depth))
        keep = valid & (self._consistent_views(depth, K, T) >= s.min_consistent)
        timings["filter"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        points, colors, confidence = [], [], []
        for i in range(len(images)):
            v, u = torch.nonzero(keep[i], as_tuple=True)
            z = depth[i, v, u].double()
            pix = torch.stack([u.double(), v.double(), torch.ones_like(z)], 1)
            cam = (pix @ torch.linalg.inv(K[i]).T.to(pix.device)) * z[:, None]
            rig = cam @ T[i, :3, :3].T.to(cam.device) + T[i, :3, 3].to(cam.device)
            points.append(rig.float().cpu().numpy())
            colors.append((images[i, :, v, u].T * 255).round().byte().cpu().numpy())
            confidence.append(score[i, v, u].float().cpu().numpy())
        fused = voxel_downsample(np.concatenate(points), np.concatenate(colors),
                                 np.concatenate(confidence), s.voxel_size)
        timings["fusion"] = time.perf_counter() - t0
        return Reconstruction(points=fused[0], colors=fused[1], confidence=fused[2],
                              cameras=frames.cameras, cam_to_rig=poses,
                              intrinsics=K.numpy(), stamp_ns=frames.stamp_ns,
                              poses_from_calibration=True, timings_s=timings,
                              info={"mvs_valid_fraction": float(keep.float().mean())})

    def _sweep(self, ref: int, sources: list[int], grey: torch.Tensor, K: torch.Tensor,
               T: torch.Tensor, near: float, far: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Best depth and its ZNCC score per pixel of camera ``ref`` (H, W each), from the
        grey images (N, 1, H, W) in [0, 1]."""
        s = self.settings
        dev = grey.device
        _, _, H, W = grey.shape
        inv_depths = torch.linspace(1.0 / far, 1.0 / near, s.planes, dtype=torch.float64)
        v, u = torch.meshgrid(torch.arange(H, dtype=torch.float32, device=dev),
                              torch.arange(W, dtype=torch.float32, device=dev), indexing="ij")
        pix = torch.stack([u.ravel(), v.ravel(), torch.ones_like(u.ravel())], 1)
        rays = pix @ torch.linalg.inv(K[ref]).T.float().to(dev)               # z = 1
        inv_planes = inv_depths.float().to(dev)
        ref_img = grey[ref:ref + 1]
        mu_r = _window_mean(ref_img, s.window)
        var_r = (_window_mean(ref_img ** 2, s.window) - mu_r ** 2).clamp(min=0)
        per_source = []
        for src in sources:
            rel = (torch.linalg.inv(T[src]) @ T[ref]).float().to(dev)         # ref -> src
            Ks = K[src].float().to(dev)
            dirs = rays @ (Ks @ rel[:3, :3]).T                                # (HW, 3)
            proj = dirs[None] / inv_planes[:, None, None] + Ks @ rel[:3, 3]   # (D, HW, 3)
            z = proj[..., 2]
            uv = proj[..., :2] / z.clamp(min=1e-9)[..., None]
            grid = torch.stack([uv[..., 0] / (W - 1) * 2 - 1, uv[..., 1] / (H - 1) * 2 - 1], -1)
            grid = torch.where((z > 0)[..., None], grid, torch.full_like(grid, 2.0))
            grid = grid.reshape(s.planes, H, W, 2)
            warped = F.grid_sample(grey[src:src + 1].expand(s.planes, -1, -1, -1), grid,
                                   mode="bilinear", padding_mode="zeros", align_corners=True)
            mu_w = _window_mean(warped, s.window)
            var_w = (_window_mean(warped ** 2, s.window) - mu_w ** 2).clamp(min=0)
            cov = _window_mean(warped * ref_img, s.window) - mu_w * mu_r
            zncc = (cov / (var_w * var_r + 1e-8).sqrt()).mean(1)               # (D, H, W)
            inside = ((grid.abs() <= 1).all(-1))
            per_source.append(torch.where(inside, zncc, torch.full_like(zncc, -1.0)))
        stacked = torch.stack(per_source)                                       # (S, D, H, W)
        k = min(s.best_neighbours, len(sources))
        cost = stacked.topk(k, dim=0).values.mean(0)                            # (D, H, W)
        best = cost.argmax(0)                                                   # (H, W)
        score = cost.gather(0, best[None])[0]
        lo = cost.gather(0, (best - 1).clamp(min=0)[None])[0]
        hi = cost.gather(0, (best + 1).clamp(max=s.planes - 1)[None])[0]
        curvature = lo - 2 * score + hi
        offset = torch.where(curvature < 0, 0.5 * (lo - hi) / curvature.clamp(max=-1e-9),
                             torch.zeros_like(score)).clamp(-0.5, 0.5)
        interior = (best > 0) & (best < s.planes - 1)
        step = float(inv_depths[1] - inv_depths[0])
        inv = inv_planes[best] + offset * step
        depth = torch.where(interior, 1.0 / inv, torch.full_like(inv, float("nan")))
        return depth, torch.where(interior, score, torch.full_like(score, -1.0))

    def _consistent_views(self, depth: torch.Tensor, K: torch.Tensor, T: torch.Tensor
                          ) -> torch.Tensor:
        """For each pixel, how many other cameras' depth maps agree with its depth."""
        s = self.settings
        n, H, W = depth.shape
        dev = depth.device
        v, u = torch.meshgrid(torch.arange(H, dtype=torch.float32, device=dev),
                              torch.arange(W, dtype=torch.float32, device=dev), indexing="ij")
        pix = torch.stack([u.ravel(), v.ravel(), torch.ones(H * W, device=dev)], 1)
        K32, T32 = K.float().to(dev), T.float().to(dev)
        world_to_cam = torch.linalg.inv(T.double()).float().to(dev)
        counts = torch.zeros(n, H, W, dtype=torch.int32, device=dev)
        for i in range(n):
            cam = (pix @ torch.linalg.inv(K32[i]).T) * depth[i].reshape(-1, 1)
            rig = cam @ T32[i, :3, :3].T + T32[i, :3, 3]
            others = [j for j in range(n) if j != i]
            pj = torch.einsum("jab,pb->jpa", world_to_cam[others, :3, :3], rig) + \
                world_to_cam[others, None, :3, 3]                              # (n-1, HW, 3)
            zj = pj[..., 2]
            uv = torch.einsum("jab,jpb->jpa", K32[others], pj)[..., :2] / \
                zj.clamp(min=1e-9)[..., None]
            grid = torch.stack([uv[..., 0] / (W - 1) * 2 - 1, uv[..., 1] / (H - 1) * 2 - 1], -1)
            sampled = F.grid_sample(depth[others][:, None], grid.reshape(n - 1, H, W, 2),
                                    mode="nearest", align_corners=True)[:, 0]
            zj = zj.reshape(n - 1, H, W)
            agree = (sampled > 0) & ((sampled - zj).abs() <= s.consistency * zj)
            counts[i] = agree.sum(0, dtype=torch.int32)
        return torch.where(depth > 0, counts, torch.zeros_like(counts))
