"""Fast3R backend: all N views in one forward pass, then poses and one fused cloud.

Fast3R predicts, for every view, a pointmap in the first view's camera frame (global head,
``pts3d_in_other_view``) and, with the local head, one in the view's own camera frame
(``pts3d_local``), each with a confidence. From these:

* **calibrated fast path** (intrinsics and extrinsics known, ``alignment`` auto/fast): the
  calibrated poses and intrinsics stay fixed and only the networks' depths are kept (their x
  and y carry the network's focal error). The global pointmaps are first un-stretched by the
  ratio of view 0's implied focal to its calibrated one
  (:func:`~threer_ros.geometry.registration.focal_stretch`). Their one unknown, the scale,
  is the closed-form scale that puts every view's global points on that camera's pixel rays
  (:func:`~threer_ros.geometry.registration.ray_consistent_scale`); each view's local depth
  map then gets its own scale, the median ratio of the global points' depths along that
  camera's axis to the local depths over its more confident half, and is back-projected along
  the calibrated rays (without a local head, the global points' depths are used).
* **full path**: one focal length for all views from view 0's global pointmap, as the official
  demo estimates it (robust Weiszfeld estimate, 100 iterations, pixels at least as confident as
  the 10th percentile, principal point at the image centre; the calibrated intrinsics when
  known, and then the global pointmaps un-stretched as on the fast path) and each view's pose
  by PnP-RANSAC of the global points against their pixels; with a calibrated rig the result is
  taken into the rig frame by a Sim(3) of the camera centres, with the residual reported.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from threer_ros.geometry.cameras import depths_to_rig, rays_of_views
from threer_ros.geometry.registration import (estimate_focal, fit_similarity_batched,
                                              focal_stretch, pixel_grid, ray_consistent_scale,
                                              solve_pnp)
from threer_ros.pipeline.network import (NetworkImages, NetworkSettings, assemble,
                                         float32_matmul, load_network,
                                         prepare_network_images, update_network_fusion)
from threer_ros.pipeline.types import FrameSet, Reconstruction

#: Most pixels per view used for PnP (the most confident ones on a regular sub-grid).
PNP_POINTS = 4096


def intrinsics_from_focal(focal: torch.Tensor, height: int, width: int) -> np.ndarray:
    """``(N, 3, 3)`` pinhole matrices with focal ``(N,)`` pixels and the image-centre
    principal point."""
    K = np.zeros((len(focal), 3, 3))
    K[:, 0, 0] = K[:, 1, 1] = focal.double().cpu().numpy()
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = (width - 1) / 2, (height - 1) / 2, 1.0
    return K


def transform(poses: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply ``(N, 4, 4)`` poses to ``(N, ..., 3)`` points."""
    shape = points.shape
    flat = points.reshape(shape[0], -1, 3)
    out = torch.einsum("nij,npj->npi", poses[:, :3, :3], flat) + poses[:, None, :3, 3]
    return out.reshape(shape)


def confident_pixels(confidence: torch.Tensor, limit: int) -> torch.Tensor:
    """Bool mask ``(H, W)``: pixels at least as confident as the median, on a regular
    sub-grid holding at most about ``limit`` pixels."""
    H, W = confidence.shape
    stride = max(1, int(np.ceil(np.sqrt(H * W / limit))))
    grid = torch.zeros_like(confidence, dtype=torch.bool)
    grid[stride // 2::stride, stride // 2::stride] = True
    return grid & (confidence >= confidence.median()) & torch.isfinite(confidence)


class Fast3RReconstructor:
    """One Fast3R forward per set (see the module docstring).

    Args:
        network: A Fast3R module (:func:`threer_ros.models.load_model`) or any module with its
            contract: ``network(views) -> [{'pts3d_in_other_view', 'conf', ['pts3d_local']}]``.
        settings: Backend settings.
    """

    name = "fast3r"

    def __init__(self, network: nn.Module, settings: NetworkSettings) -> None:
        self.network = network
        self.settings = settings

    update_fusion = update_network_fusion

    @classmethod
    def from_options(cls, options) -> "Fast3RReconstructor":
        """Build from :class:`~threer_ros.pipeline.backends.BackendOptions`."""
        settings = options.network_settings(cls.name)
        return cls(load_network("fast3r", settings), settings)

    def reconstruct(self, frames: FrameSet) -> Reconstruction:
        if len(frames.frames) < 2:
            raise ValueError(f"fast3r needs at least 2 cameras, got {len(frames.frames)}")
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        images = prepare_network_images(frames, self.settings.image_size, self.settings.device)
        timings["preprocess"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        dtype = next(self.network.parameters()).dtype
        views = [dict(images.view([i]), img=images.img[i:i + 1].to(dtype))
                 for i in range(len(images.cameras))]
        with torch.inference_mode(), float32_matmul(self.settings.precision):
            out = self.network(views)
        glob = torch.cat([o["pts3d_in_other_view"] for o in out]).float()     # (N, h, w, 3)
        conf = torch.cat([o["conf"] for o in out]).float()                     # (N, h, w)
        local = torch.cat([o["pts3d_local"] for o in out]).float() \
            if "pts3d_local" in out[0] else None
        if images.img.is_cuda:
            torch.cuda.synchronize(images.img.device)
        timings["network"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        if self.settings.use_calibration and images.intrinsics is not None:
            glob = self._unstretched(images, glob, conf)
        if self.settings.fast_path(images):
            points = self._calibrated_points(images, glob, conf, local)
            timings["scale"] = time.perf_counter() - t0
            return assemble(images, points, conf, images.cam_to_rig, images.intrinsics,
                            frames.stamp_ns, self.settings, timings, from_calibration=True)
        K, poses = self._estimate_cameras(images, glob, conf, local)
        timings["poses"] = time.perf_counter() - t0
        return assemble(images, glob, conf, poses, K, frames.stamp_ns, self.settings, timings,
                        from_calibration=False)

    @staticmethod
    def _unstretched(images: NetworkImages, glob: torch.Tensor, conf: torch.Tensor
                     ) -> torch.Tensor:
        """The global pointmaps (view 0's frame) with the stretch of view 0's focal error
        undone, by the ratio of its implied focal to its calibrated one (float64)."""
        K = torch.as_tensor(images.intrinsics[:1], device=glob.device)
        trusted = conf[:1] >= conf[:1].flatten(1).median(1).values[:, None, None]
        ratio = focal_stretch(glob[:1], K, trusted)[0]
        return torch.cat([glob[..., :2].double() * ratio, glob[..., 2:].double()], -1)

    def _calibrated_points(self, images: NetworkImages, glob: torch.Tensor, conf: torch.Tensor,
                           local: torch.Tensor | None) -> torch.Tensor:
        """Rig-frame points (N, h, w, 3) with the calibrated poses held fixed: each view's
        local depth along its calibrated rays, scaled per view (module docstring)."""
        n, h, w, _ = glob.shape
        poses = torch.as_tensor(images.cam_to_rig, device=glob.device, dtype=torch.float64)
        K = torch.as_tensor(images.intrinsics, device=glob.device, dtype=torch.float64)
        rays = rays_of_views(K, h, w).reshape(n, -1, 3)
        # the global points of views 1.. (view 0's frame) must lie on their own cameras' rays
        directions = torch.einsum("nij,npj->npi", poses[1:, :3, :3], rays[1:])
        origins = poses[1:, None, :3, 3].expand_as(directions)
        scale = ray_consistent_scale(glob[1:].reshape(1, -1, 3), poses[:1],
                                     origins.reshape(1, -1, 3), directions.reshape(1, -1, 3),
                                     conf[1:].reshape(1, -1))[0]
        rig = transform(poses[:1].expand(n, 4, 4), scale * glob)
        # depth of every view's global points along its own optical axis
        depth = torch.einsum("nhwi,ni->nhw", rig - poses[:, None, None, :3, 3], poses[:, :3, 2])
        if local is not None:
            own = local[..., 2].double()
            trusted = conf >= conf.flatten(1).median(1).values[:, None, None]
            ratio = torch.where(own != 0, depth / own, float("nan"))
            view_scale = torch.where(trusted, ratio, float("nan")).flatten(1).nanmedian(1).values
            depth = view_scale[:, None, None] * own
        return depths_to_rig(depth, K, poses)

    def _estimate_cameras(self, images: NetworkImages, glob: torch.Tensor, conf: torch.Tensor,
                          local: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray]:
        """Intrinsics (N, 3, 3) and camera-to-world poses (N, 4, 4) in view 0's frame."""
        n, h, w, _ = glob.shape
        if self.settings.use_calibration and images.intrinsics is not None:
            K = images.intrinsics
        else:
            # as the official demo: one focal from view 0's global head, confidence at least
            # its 10th percentile, 100 Weiszfeld iterations
            trusted = conf[:1] >= torch.quantile(conf[0].flatten(), 0.1)
            focal = estimate_focal(glob[:1], mask=trusted, iterations=100)
            K = intrinsics_from_focal(focal.expand(n), h, w)
        pixels = pixel_grid(h, w, glob)
        fallback = None
        poses = np.empty((n, 4, 4))
        for i in range(n):
            mask = confident_pixels(conf[i], PNP_POINTS)
            pose = solve_pnp(glob[i][mask].double().cpu().numpy(),
                             pixels[mask].double().cpu().numpy(), K[i])
            if pose is None:      # degenerate view: its pointmap's Sim(3) to its own frame
                if fallback is None:
                    fallback = self._poses_from_local(glob, conf, local)
                pose = fallback[i]
            poses[i] = pose
        return K, poses

    @staticmethod
    def _poses_from_local(glob: torch.Tensor, conf: torch.Tensor, local: torch.Tensor | None
                          ) -> np.ndarray:
        """Camera-to-world poses from the local -> global pointmap fit (identity without a
        local head)."""
        n = len(glob)
        if local is None:
            return np.repeat(np.eye(4)[None], n, axis=0)
        _, rotation, translation = fit_similarity_batched(
            local.reshape(n, -1, 3), glob.reshape(n, -1, 3), conf.reshape(n, -1))
        poses = np.repeat(np.eye(4)[None], n, axis=0)
        poses[:, :3, :3] = rotation.cpu().numpy()
        poses[:, :3, 3] = translation.cpu().numpy()
        return poses
