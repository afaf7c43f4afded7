"""Ground-truth "networks" for the synthetic rig: exact (or perturbed) pointmaps with the
official Fast3R and pair contracts, so the pipelines' geometry is tested without weights.

The synthetic head sits inside a backdrop sphere (radius :data:`BACKDROP_RADIUS` metres about
the rig origin), so every pixel sees a real, multi-view consistent surface; head pixels get
confidence :data:`HEAD_CONFIDENCE`, backdrop pixels :data:`BACKDROP_CONFIDENCE`. Like a real
network, the oracles answer in their own unit: every output is divided by ``unit`` (metres per
network unit), and each pair additionally by its own factor, so alignment must recover scale.
A :class:`~threer_ros.pipeline.realistic.Perturbation` makes the answers wrong the way real
networks are (:func:`~threer_ros.pipeline.realistic.realistic` for the realistic mix).
Views are identified by their ``instance`` (camera name), as the official view dicts carry.
The answers are computed once, at construction, and kept on ``device``.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
from scipy.spatial.transform import Rotation
from torch import nn

from threer_ros.data.synthetic import intersect_head
from threer_ros.pipeline.network import prepare_network_images
from threer_ros.pipeline.realistic import (Perturbation, position_descriptors, stretch,
                                           view_answer)
from threer_ros.pipeline.types import FrameSet

BACKDROP_RADIUS = 2.5
HEAD_CONFIDENCE = 10.0
BACKDROP_CONFIDENCE = 1.5


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
    """Per-camera answers at the network resolution of ``frames`` (see module doc)."""

    def __init__(self, frames: FrameSet, image_size: int, unit: float,
                 perturbation: Perturbation, device: str = "cpu") -> None:
        super().__init__()
        images = prepare_network_images(frames, image_size, "cpu")
        if images.intrinsics is None or images.cam_to_rig is None:
            raise ValueError("an oracle needs a calibrated frame set")
        h, w = images.img.shape[-2:]
        self.unit = unit
        self.perturbation = perturbation
        self.poses = {name: torch.from_numpy(images.cam_to_rig[i])
                      for i, name in enumerate(images.cameras)}
        self.world, self.conf, self.focal_factor, self.described = {}, {}, {}, {}
        for i, name in enumerate(images.cameras):
            points, conf = _surface(images.intrinsics[i], h, w, images.cam_to_rig[i])
            answer = view_answer(points, conf == HEAD_CONFIDENCE, conf, self.poses[name], i,
                                 name, perturbation)
            self.world[name] = answer.points.to(device)
            self.conf[name] = answer.confidence.to(device)
            self.focal_factor[name] = answer.focal_factor
            self.described[name] = answer.descriptor_points.to(device)
        self.poses = {name: pose.to(device) for name, pose in self.poses.items()}
        self.anchor = nn.Parameter(torch.zeros((), device=device))  # the module's dtype/device

    def in_frame(self, name: str, frame: str) -> torch.Tensor:
        """Camera ``name``'s points in camera ``frame``'s optical frame, metres, before the
        focal stretch."""
        pose = self.poses[frame]
        return (self.world[name] - pose[:3, 3]) @ pose[:3, :3]

    def answer(self, name: str, frame: str, focal_factor: float | None = None
               ) -> torch.Tensor:
        """Camera ``name``'s points as the network gives them in camera ``frame``'s frame:
        stretched by that camera's focal error (or ``focal_factor``), in network units."""
        factor = self.focal_factor[frame] if focal_factor is None else focal_factor
        return stretch(self.in_frame(name, frame), factor) / self.unit

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
            out.append({"pts3d_in_other_view": self._out(self.answer(name, names[0])),
                        "conf": conf, "pts3d_local": self._out(self.answer(name, name)),
                        "conf_local": conf})
        return out


class OraclePairNetwork(_Oracle):
    """``model(view1, view2) -> (res1, res2)`` of the DUSt3R family from ground truth; with
    ``descriptors``, MASt3R's ``desc`` (the
    :func:`~threer_ros.pipeline.realistic.position_descriptors` of the positions the perturbed
    answer describes) and ``desc_conf``. Pow3R's priors
    (``known_rays``, ``known_pose``) are followed as far as the perturbation's
    ``prior_weight`` says."""

    def __init__(self, frames: FrameSet, image_size: int, unit: float = 0.4,
                 perturbation: Perturbation = Perturbation(), descriptors: bool = False,
                 descriptor_dim: int = 24, device: str = "cpu") -> None:
        super().__init__(frames, image_size, unit, perturbation, device)
        self.descriptors = {name: position_descriptors(described, descriptor_dim)
                            for name, described in self.described.items()} \
            if descriptors else None

    def pair_scale(self, first: str, second: str) -> float:
        """The pair's own unit factor, in [0.8, 1.25), deterministic in the pair."""
        return 0.8 + 0.45 * (zlib.crc32(f"{first}>{second}".encode()) % 1000) / 1000

    def _second_view(self, first: str, second: str, prior: torch.Tensor | None
                     ) -> torch.Tensor:
        """Camera ``second``'s points in ``first``'s frame (metres, before the stretch), moved
        ``prior_weight`` of the way from the true relative pose to the ``prior`` (pose of
        ``second`` in ``first``'s frame, unit translation)."""
        true_points = self.in_frame(second, first)
        if prior is None or self.perturbation.prior_weight == 0:
            return true_points
        weight = self.perturbation.prior_weight
        pose_a, pose_b = self.poses[first], self.poses[second]
        true = torch.linalg.inv(pose_a) @ pose_b
        prior = prior.to(true)
        delta = Rotation.from_matrix((true[:3, :3].T @ prior[:3, :3]).cpu().numpy())
        rotation = true[:3, :3] @ torch.from_numpy(
            Rotation.from_rotvec(weight * delta.as_rotvec()).as_matrix()).to(true)
        baseline = true[:3, 3].norm()
        translation = (1 - weight) * true[:3, 3] + weight * baseline * prior[:3, 3] \
            / prior[:3, 3].norm().clamp(min=1e-12)
        own = (self.world[second] - pose_b[:3, 3]) @ pose_b[:3, :3]
        return own @ rotation.T + translation

    def forward(self, view1: dict, view2: dict) -> tuple[dict, dict]:
        res1, res2 = {}, {}
        priors = view2.get("known_pose")
        follows_rays = "known_rays" in view1
        for k, (a, b) in enumerate(zip(view1["instance"], view2["instance"])):
            scale = self.pair_scale(a, b)
            factor = self.focal_factor[a]
            if follows_rays:
                factor = 1 + (factor - 1) * (1 - self.perturbation.prior_weight)
            second = stretch(self._second_view(a, b, None if priors is None else priors[k]),
                             factor) / self.unit
            parts = ((res1, "pts3d", self.answer(a, a, factor) / scale, a),
                     (res2, "pts3d_in_other_view", second / scale, b))
            for res, key, points, name in parts:
                res.setdefault(key, []).append(self._out(points))
                res.setdefault("conf", []).append(self._out(self.conf[name]))
                if self.descriptors is not None:
                    res.setdefault("desc", []).append(self._out(self.descriptors[name]))
                    res.setdefault("desc_conf", []).append(self._out(self.conf[name]))
        return ({k: torch.cat(v) for k, v in res1.items()},
                {k: torch.cat(v) for k, v in res2.items()})
