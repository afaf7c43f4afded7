"""Ground-truth "networks" for the synthetic rig: exact (or perturbed) pointmaps with the
official Fast3R and pair contracts, so the pipelines' geometry is tested without weights.

The synthetic head sits inside a backdrop sphere (radius :data:`BACKDROP_RADIUS` metres about
the rig origin), so every pixel sees a real, multi-view consistent surface; head pixels get
confidence :data:`HEAD_CONFIDENCE`, backdrop pixels :data:`BACKDROP_CONFIDENCE`. Like a real
network, the oracles answer in their own unit: every output is divided by ``unit`` (metres per
network unit), and each pair additionally by its own factor, so alignment must recover scale.
Views are identified by their ``instance`` (camera name), as the official view dicts carry.
The ground truth is computed once, at construction, and kept on ``device``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from threer_ros.data.synthetic import intersect_head
from threer_ros.pipeline.network import prepare_network_images
from threer_ros.pipeline.types import FrameSet

BACKDROP_RADIUS = 2.5
HEAD_CONFIDENCE = 10.0
BACKDROP_CONFIDENCE = 1.5


@dataclass(frozen=True)
class Perturbation:
    """Errors an oracle adds (seeded).

    Attributes:
        noise: Standard deviation of point noise relative to depth (0.01 = 1 %).
        outliers: Fraction of head pixels thrown to random depths (0.5x-1.5x), at full
            confidence.
        seed: Seed of both.
    """

    noise: float = 0.0
    outliers: float = 0.0
    seed: int = 0


def _surface(K: np.ndarray, height: int, width: int, cam_to_rig: np.ndarray
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rig-frame points ``(H, W, 3)`` of every pixel (head or backdrop) and confidences."""
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                          torch.arange(width, dtype=torch.float64), indexing="ij")
    pix = torch.stack([u.ravel(), v.ravel(), torch.ones(u.numel(), dtype=torch.float64)], -1)
    R = torch.from_numpy(cam_to_rig[:3, :3])
    centre = torch.from_numpy(cam_to_rig[:3, 3])
    dirs = pix @ torch.from_numpy(np.linalg.inv(K)).T @ R.T               # z = 1 in camera
    t, _ = intersect_head(centre.expand_as(dirs), dirs)
    # backdrop: |c + s d| = r, the positive root
    a, b = (dirs * dirs).sum(1), 2 * (dirs @ centre)
    c = float(centre @ centre) - BACKDROP_RADIUS ** 2
    far = (-b + torch.sqrt(b * b - 4 * a * c)) / (2 * a)
    head = torch.isfinite(t)
    depth = torch.where(head, t, far)
    conf = torch.where(head, HEAD_CONFIDENCE, BACKDROP_CONFIDENCE)
    return (centre + depth[:, None] * dirs).reshape(height, width, 3), conf.reshape(height, width)


class _Oracle(nn.Module):
    """Per-camera ground truth at the network resolution of ``frames`` (see module doc)."""

    def __init__(self, frames: FrameSet, image_size: int, unit: float,
                 perturbation: Perturbation, device: str = "cpu") -> None:
        super().__init__()
        images = prepare_network_images(frames, image_size, "cpu")
        if images.intrinsics is None or images.cam_to_rig is None:
            raise ValueError("an oracle needs a calibrated frame set")
        h, w = images.img.shape[-2:]
        self.unit = unit
        self.poses = {name: torch.from_numpy(images.cam_to_rig[i])
                      for i, name in enumerate(images.cameras)}
        rng = np.random.default_rng(perturbation.seed)
        self.world, self.conf = {}, {}
        for i, name in enumerate(images.cameras):
            points, conf = _surface(images.intrinsics[i], h, w, images.cam_to_rig[i])
            centre = self.poses[name][:3, 3]
            offset = points - centre
            factor = 1 + perturbation.noise * torch.from_numpy(rng.standard_normal((h, w)))
            wrong = torch.from_numpy(rng.random((h, w)) < perturbation.outliers) & \
                (conf == HEAD_CONFIDENCE)
            factor = torch.where(wrong, torch.from_numpy(rng.uniform(0.5, 1.5, (h, w))), factor)
            self.world[name] = (centre + offset * factor[..., None]).to(device)
            self.conf[name] = conf.float().to(device)
        self.poses = {name: pose.to(device) for name, pose in self.poses.items()}
        self.anchor = nn.Parameter(torch.zeros((), device=device))  # the module's dtype/device

    def in_frame(self, name: str, frame: str) -> torch.Tensor:
        """Camera ``name``'s points in camera ``frame``'s optical frame, network units."""
        pose = self.poses[frame]
        points = (self.world[name] - pose[:3, 3]) @ pose[:3, :3]
        return points / self.unit

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        return x[None].to(self.anchor.device, torch.float32)


class OracleFast3R(_Oracle):
    """``model(views) -> [{'pts3d_in_other_view', 'conf', 'pts3d_local', 'conf_local'}]`` in
    the first view's frame, from the synthetic rig's ground truth."""

    def __init__(self, frames: FrameSet, image_size: int, unit: float = 0.4,
                 perturbation: Perturbation = Perturbation(), device: str = "cpu") -> None:
        super().__init__(frames, image_size, unit, perturbation, device)

    def forward(self, views: list[dict]) -> list[dict[str, torch.Tensor]]:
        names = [v["instance"][0] for v in views]
        out = []
        for name in names:
            conf = self._out(self.conf[name])
            out.append({"pts3d_in_other_view": self._out(self.in_frame(name, names[0])),
                        "conf": conf, "pts3d_local": self._out(self.in_frame(name, name)),
                        "conf_local": conf})
        return out


class OraclePairNetwork(_Oracle):
    """``model(view1, view2) -> (res1, res2)`` of the DUSt3R family from ground truth; with
    ``descriptors``, MASt3R's ``desc`` (unit vectors that encode the rig-frame position, so
    nearest descriptors are nearest surface points) and ``desc_conf``."""

    def __init__(self, frames: FrameSet, image_size: int, unit: float = 0.4,
                 perturbation: Perturbation = Perturbation(), descriptors: bool = False,
                 descriptor_dim: int = 24, device: str = "cpu") -> None:
        super().__init__(frames, image_size, unit, perturbation, device)
        generator = torch.Generator().manual_seed(perturbation.seed)
        # random Fourier features of the position: ~1 cm wavelength so nearby points differ
        self.frequencies = (torch.randn(3, descriptor_dim // 2, generator=generator,
                                        dtype=torch.float64) * 60.0).to(device) \
            if descriptors else None

    def pair_scale(self, first: str, second: str) -> float:
        """The pair's own unit factor, in [0.8, 1.25), deterministic in the pair."""
        return 0.8 + 0.45 * (zlib.crc32(f"{first}>{second}".encode()) % 1000) / 1000

    def _descriptor(self, name: str) -> torch.Tensor:
        phase = self.world[name] @ self.frequencies
        desc = torch.cat([phase.cos(), phase.sin()], -1)
        return desc / desc.norm(dim=-1, keepdim=True)

    def forward(self, view1: dict, view2: dict) -> tuple[dict, dict]:
        res1, res2 = {}, {}
        for a, b in zip(view1["instance"], view2["instance"]):
            scale = self.pair_scale(a, b)
            parts = ((res1, "pts3d", self.in_frame(a, a) / scale, a),
                     (res2, "pts3d_in_other_view", self.in_frame(b, a) / scale, b))
            for res, key, points, name in parts:
                res.setdefault(key, []).append(self._out(points))
                res.setdefault("conf", []).append(self._out(self.conf[name]))
                if self.frequencies is not None:
                    res.setdefault("desc", []).append(self._out(self._descriptor(name)))
                    res.setdefault("desc_conf", []).append(self._out(self.conf[name]))
        return ({k: torch.cat(v) for k, v in res1.items()},
                {k: torch.cat(v) for k, v in res2.items()})
