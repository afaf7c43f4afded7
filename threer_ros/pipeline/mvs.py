"""``mvs``: weight-free calibrated multi-view stereo in PyTorch (CPU or GPU), coarse to fine.

For every camera (the reference) and its ``neighbours`` nearest cameras (by camera centre):

1. **Range.** The depth range comes from the calibration: from half to four times the
   camera's distance to the point where the rig's optical axes converge (or ``depth_range``),
   wide enough for a background behind the subject (a studio wall) to be found rather than
   forced onto the subject.
2. **Coarse sweep.** On the images halved until about ``coarse_width`` pixels wide (where the
   windows span more texture), ``planes`` fronto-parallel planes uniform in inverse depth are
   swept; each plane is scored by the ZNCC of the colour images over ``window`` x ``window``
   pixels (each channel centred on its own mean, the three correlated as one vector: chroma
   variation is texture too, where weakly textured skin has little in grey levels), mean of
   the ``best_neighbours`` best neighbours (robust to occlusion), and the best plane is
   refined with a parabola fit. Pixels whose best plane is at the range's edge, or whose cost
   curve has a second peak within ``min_uniqueness`` of the best (an ambiguous match), are
   rejected.
3. **Refinement.** At each finer level (twice the resolution), and ``final_passes - 1`` more
   times at full resolution, every pixel tests ``2 * refine_steps + 1`` inverse depths around
   three seeds (its previous depth, and the nearest and farthest of its 3 x 3 neighbourhood:
   depth edges and weakly textured pixels take up their neighbours' depths, a propagation),
   with steps halving pass by pass.

Depths are then filtered: the full-resolution window's grey-level standard deviation must
reach ``min_texture``, and a depth must be confirmed both ways by at least ``min_consistent``
other cameras (its point lands on their depth within ``consistency`` and theirs comes back
within one pixel and ``consistency``), with a mean ZNCC over the pixel and its agreeing views
(its own score: the mean over the passes) of at least ``min_zncc``. The agreeing views' points
are averaged, fused into one coloured cloud in the rig frame, and that mean ZNCC is each
point's confidence. Needs intrinsics and camera-to-rig poses for every frame.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from threer_ros.geometry.fusion import voxel_downsample
from threer_ros.geometry.stereo import cross_check, half_resolution, window_std, zncc_cost
from threer_ros.pipeline.frames import resize_frames
from threer_ros.pipeline.types import FrameSet, Reconstruction

#: Automatic depth range, as factors of a camera's distance to the rig's convergence point.
AUTO_RANGE = (0.5, 4.0)


@dataclass(frozen=True)
class PlaneSweepSettings:
    """Parameters of :class:`PlaneSweepReconstructor` (distances in metres).

    Attributes:
        planes: Depth hypotheses of the coarse sweep.
        coarse_width: The images are halved while they stay at least this wide (pixels); the
            sweep starts on the smallest.
        refine_steps: Steps on each side of a seed at each finer level.
        final_passes: Refinement passes at full resolution (1 = only the level's own).
        depth_range: Near and far depth (metres along each camera's optical axis) of the
            sweep; ``(0, 0)`` = :data:`AUTO_RANGE` times the distance to the convergence point.
        neighbours: Source cameras per reference camera (nearest camera centres).
        best_neighbours: How many of the best-scoring neighbours are averaged per hypothesis.
        window: Side of the ZNCC window in pixels (odd), at every level.
        min_uniqueness: Smallest lead of the best coarse score over the best score more than
            two planes away (ambiguous matches below).
        min_zncc: Smallest mean ZNCC over a depth's agreeing views.
        min_texture: Smallest grey-level standard deviation (0..255) of a pixel's ``window``
            at full resolution (blank background, saturated areas are discarded).
        consistency: Largest relative depth difference with another camera's depth map for
            the two to agree.
        min_consistent: Other cameras that must agree with a depth for it to be kept.
        voxel_size: Voxel edge of the fused cloud's down-sampling (0 = off).
        device: Torch device.
        working_width: Images are first shrunk to this width (pixels; 0 or wider: kept).
    """

    planes: int = 96
    coarse_width: int = 48
    refine_steps: int = 2
    final_passes: int = 2
    depth_range: tuple[float, float] = (0.0, 0.0)
    neighbours: int = 3
    best_neighbours: int = 2
    window: int = 7
    min_uniqueness: float = 0.02
    min_zncc: float = 0.5
    min_texture: float = 1.0
    consistency: float = 0.003
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


class PlaneSweepReconstructor:
    """The ``mvs`` backend (see the module docstring)."""

    name = "mvs"

    def __init__(self, settings: PlaneSweepSettings = PlaneSweepSettings()) -> None:
        if settings.window % 2 != 1:
            raise ValueError(f"window must be odd, got {settings.window}")
        near, far = settings.depth_range
        if (near, far) != (0.0, 0.0) and not 0 < near < far:
            raise ValueError(f"depth_range must be [near, far] with 0 < near < far metres, "
                             f"or [0, 0] (from the calibration); got {[near, far]}")
        self.settings = settings
        self.device = torch.device(settings.device)

    @classmethod
    def from_options(cls, options) -> "PlaneSweepReconstructor":
        """Build from the node's :class:`~threer_ros.pipeline.backends.BackendOptions`."""
        near, far = (float(d) for d in options.mvs_depth_range)
        return cls(replace(PlaneSweepSettings(), device=options.device,
                           voxel_size=options.voxel_size, depth_range=(near, far),
                           working_width=options.working_width))

    def update_fusion(self, options) -> None:
        """Down-sample with ``options.voxel_size`` from the next set on (the plane sweep keeps
        its own confidence and consistency filters)."""
        self.settings = replace(self.settings, voxel_size=options.voxel_size)

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
        pyramid = [(images, K)]                                # fine first
        while pyramid[-1][0].shape[-1] // 2 >= s.coarse_width:
            pyramid.append(half_resolution(*pyramid[-1]))
        timings["prepare"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        centres, axes = poses[:, :3, 3], poses[:, :3, 2]
        if s.depth_range == (0.0, 0.0):
            distances = ((_convergence_point(centres, axes) - centres) * axes).sum(axis=1)
            ranges = [(AUTO_RANGE[0] * d, AUTO_RANGE[1] * d) for d in distances]
        else:
            ranges = [s.depth_range] * len(poses)
        inv_depths, scores, valids = [], [], []
        for r in range(len(images)):
            order = np.argsort(np.linalg.norm(centres - centres[r], axis=1))[1:1 + s.neighbours]
            inv, score, valid = self._depth(r, list(order), pyramid, T, *ranges[r])
            inv_depths.append(inv)
            scores.append(score)
            valids.append(valid)
        valid = torch.stack(valids)
        depth = torch.where(valid, 1.0 / torch.stack(inv_depths), 0.0)      # (N, H, W)
        timings["depth"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        count, agreement, points = cross_check(depth, torch.stack(scores), K, T, s.consistency,
                                               pixels=1.0)
        keep = valid & (count >= s.min_consistent) & (agreement >= s.min_zncc)
        timings["filter"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        colors = images.permute(0, 2, 3, 1)[keep].mul(255).round().to(torch.uint8)
        fused = [t.cpu().numpy() for t in voxel_downsample(points[keep], colors, agreement[keep],
                                                           s.voxel_size)]
        timings["fusion"] = time.perf_counter() - t0
        return Reconstruction(points=fused[0], colors=fused[1], confidence=fused[2],
                              cameras=frames.cameras, cam_to_rig=poses,
                              intrinsics=K.numpy(), stamp_ns=frames.stamp_ns,
                              poses_from_calibration=True, timings_s=timings,
                              info={"mvs_valid_fraction": float(keep.float().mean())})

    def _depth(self, ref: int, sources: list[int], pyramid: list[tuple[torch.Tensor,
               torch.Tensor]], T: torch.Tensor, near: float, far: float
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Inverse depth (1/metres), score (mean ZNCC over the passes) and validity (interior,
        unambiguous, textured) of every pixel of camera ``ref`` at the finest level (H, W
        each), from the image pyramid (fine to coarse, images (N, 3, H, W) in [0, 1] with
        their float64 intrinsics) and the camera-to-rig poses T (N, 4, 4)."""
        s = self.settings
        images, K = pyramid[-1]
        H, W = images.shape[-2:]
        dev = images.device
        planes = torch.linspace(1.0 / far, 1.0 / near, s.planes, dtype=torch.float64)
        step = float(planes[1] - planes[0])
        hypotheses = planes.float().to(dev)[:, None].expand(s.planes, H * W)
        cost = zncc_cost(images, ref, sources, K, T, hypotheses, s.window, s.best_neighbours)
        inv, score, best = _refine(cost, hypotheses, step)
        plane = torch.arange(s.planes, device=dev)[:, None, None]
        rival = torch.where((plane - best).abs() > 2, cost, -1.0).amax(0)
        valid = (best > 0) & (best < s.planes - 1) & (score - rival >= s.min_uniqueness)
        total = score
        offsets = torch.arange(-s.refine_steps, s.refine_steps + 1, device=dev).float()
        passes = list(reversed(pyramid[:-1])) + [pyramid[0]] * (s.final_passes - 1)
        for images, K in passes:
            H, W = images.shape[-2:]
            step /= 2
            coarse = inv[None, None]
            seeds = torch.cat([coarse, -F.max_pool2d(-coarse, 3, 1, 1),
                               F.max_pool2d(coarse, 3, 1, 1)], 1)
            seeds = F.interpolate(seeds, size=(H, W), mode="nearest")[0]      # (3, H, W)
            stack = torch.stack([valid, total]).float()[None]
            valid, total = F.interpolate(stack, size=(H, W), mode="nearest")[0]
            valid = valid > 0
            hypotheses = (seeds[:, None] + step * offsets[:, None, None]).reshape(-1, H * W)
            hypotheses = hypotheses.clamp(1.0 / far, 1.0 / near)
            cost = zncc_cost(images, ref, sources, K, T, hypotheses, s.window,
                             s.best_neighbours)
            inv, score, _ = _refine(cost, hypotheses, step, len(offsets))
            total = total + score
        textured = window_std(images[ref].mean(0), s.window) * 255 >= s.min_texture
        return inv, total / (1 + len(passes)), valid & textured


def _refine(cost: torch.Tensor, hypotheses: torch.Tensor, step: float, run: int = 0
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best hypothesis per pixel of a ``(D, H, W)`` cost, refined by a parabola through its
    neighbours: hypotheses come in runs of ``run`` (all ``D`` when 0) spaced ``step`` apart,
    and a best at a run's end is not refined. Returns the inverse depth, its score and the
    index of the best hypothesis (H, W each)."""
    D, H, W = cost.shape
    run = run or D
    best = cost.argmax(0)
    score = cost.gather(0, best[None])[0]
    position = best % run
    lo = cost.gather(0, (best - 1).clamp(min=0)[None])[0]
    hi = cost.gather(0, (best + 1).clamp(max=D - 1)[None])[0]
    curvature = lo - 2 * score + hi
    inner = (position > 0) & (position < run - 1) & (curvature < 0)
    offset = torch.where(inner, 0.5 * (lo - hi) / curvature.clamp(max=-1e-9),
                         torch.zeros_like(score)).clamp(-0.5, 0.5)
    inv = hypotheses.reshape(D, H, W).gather(0, best[None])[0] + offset * step
    return inv, score, best
