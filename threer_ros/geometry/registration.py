"""Camera and point-set registration: Sim(3) fits, focal from a pointmap, PnP, pose errors.

Conventions: poses are 4x4 camera-to-world (or camera-to-rig) matrices of OpenCV optical frames
(x right, y down, z forward); pointmaps are ``(H, W, 3)`` arrays of 3D points, one per pixel;
pixel ``(u, v)`` is column ``u``, row ``v`` and integer coordinates are pixel centres. Units are
those of the inputs (metres for a calibrated rig, the network's unit otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Similarity:
    """``x -> scale * rotation @ x + translation`` (a Sim(3) element).

    Attributes:
        scale: Positive scalar.
        rotation: 3x3 rotation matrix.
        translation: 3-vector, in the target frame's unit.
    """

    scale: float
    rotation: np.ndarray
    translation: np.ndarray

    def apply(self, points: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Map ``(..., 3)`` points: a numpy array, or a tensor (on its device and dtype)."""
        if isinstance(points, torch.Tensor):
            rotation, translation = (torch.as_tensor(v, dtype=points.dtype, device=points.device)
                                     for v in (self.rotation, self.translation))
            return self.scale * points @ rotation.T + translation
        return self.scale * points @ self.rotation.T + self.translation

    def apply_to_poses(self, cam_to_world: np.ndarray) -> np.ndarray:
        """Map ``(N, 4, 4)`` camera poses; their rotations stay orthonormal (scale moves only
        the camera centres)."""
        out = np.array(cam_to_world, dtype=np.float64, copy=True)
        out[:, :3, :3] = self.rotation @ out[:, :3, :3]
        out[:, :3, 3] = self.apply(out[:, :3, 3])
        return out


def fit_similarity_batched(src: torch.Tensor, dst: torch.Tensor,
                           weights: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted least-squares Sim(3) (Umeyama) taking ``src`` onto ``dst``, for a batch.

    Args:
        src, dst: ``(B, N, 3)`` corresponding points.
        weights: ``(B, N)`` non-negative weights (default: all ones).

    Returns:
        ``scale (B,)``, ``rotation (B, 3, 3)``, ``translation (B, 3)`` with
        ``dst ~ scale * rotation @ src + translation``. Computed in float64.
    """
    src, dst = src.double(), dst.double()
    w = torch.ones(src.shape[:2], dtype=src.dtype, device=src.device) if weights is None \
        else weights.double()
    w = w / w.sum(1, keepdim=True).clamp(min=1e-300)
    mu_s = (w[..., None] * src).sum(1)
    mu_d = (w[..., None] * dst).sum(1)
    s0, d0 = src - mu_s[:, None], dst - mu_d[:, None]
    cov = torch.einsum("bn,bni,bnj->bij", w, d0, s0)
    U, S, Vh = torch.linalg.svd(cov)
    sign = torch.sign(torch.linalg.det(U @ Vh))
    fix = torch.ones_like(S)
    fix[:, 2] = torch.where(sign == 0, torch.ones_like(sign), sign)
    rotation = U @ torch.diag_embed(fix) @ Vh
    variance = (w * (s0 ** 2).sum(-1)).sum(1)
    scale = (S * fix).sum(1) / variance.clamp(min=1e-300)
    translation = mu_d - scale[:, None] * torch.einsum("bij,bj->bi", rotation, mu_s)
    return scale, rotation, translation


def fit_similarity(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None
                   ) -> Similarity:
    """Sim(3) taking ``(N, 3)`` points ``src`` onto ``dst`` (N >= 3, not collinear)."""
    if len(src) < 3:
        raise ValueError(f"a similarity needs at least 3 point pairs, got {len(src)}")
    w = None if weights is None else torch.as_tensor(weights)[None]
    scale, rotation, translation = fit_similarity_batched(
        torch.as_tensor(src)[None], torch.as_tensor(dst)[None], w)
    return Similarity(float(scale[0]), rotation[0].numpy(), translation[0].numpy())


def pixel_grid(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """``(H, W, 2)`` pixel coordinates (u, v) of every pixel, dtype/device of ``like``."""
    v, u = torch.meshgrid(torch.arange(height, dtype=like.dtype, device=like.device),
                          torch.arange(width, dtype=like.dtype, device=like.device),
                          indexing="ij")
    return torch.stack([u, v], -1)


def estimate_focal(points_cam: torch.Tensor, principal_point: torch.Tensor | None = None,
                   mask: torch.Tensor | None = None, iterations: int = 10) -> torch.Tensor:
    """Focal length (pixels) that best explains a pointmap in its own camera frame.

    Minimises ``sum |(p - c) - f (x/z, y/z)|`` over pixels p (an L2-per-pixel, robust cost) by
    iteratively re-weighted least squares (Weiszfeld), starting from the least-squares focal.

    Args:
        points_cam: ``(B, H, W, 3)`` points in each view's own camera frame.
        principal_point: ``(B, 2)`` in pixels; default the image centre ``((W-1)/2, (H-1)/2)``.
        mask: ``(B, H, W)`` bool, pixels to use (default: all with z > 0).
        iterations: Re-weighting iterations.

    Returns:
        ``(B,)`` focal lengths in pixels (same for x and y).
    """
    B, H, W, _ = points_cam.shape
    pts = points_cam.double()
    if principal_point is None:
        principal_point = pts.new_tensor([(W - 1) / 2, (H - 1) / 2]).expand(B, 2)
    centred = pixel_grid(H, W, pts)[None] - principal_point.double()[:, None, None]
    valid = pts[..., 2] > 1e-9
    if mask is not None:
        valid = valid & mask
    q = pts[..., :2] / pts[..., 2:].clamp(min=1e-9)
    weight = valid.double()
    focal = pts.new_zeros(B)
    for _ in range(iterations + 1):
        focal = (weight * (centred * q).sum(-1)).sum((1, 2)) / \
            (weight * (q * q).sum(-1)).sum((1, 2)).clamp(min=1e-300)
        residual = (centred - focal[:, None, None, None] * q).norm(dim=-1)
        weight = valid.double() / residual.clamp(min=1e-6)
    return focal


def focal_stretch(points_cam: torch.Tensor, K: torch.Tensor, mask: torch.Tensor
                  ) -> torch.Tensor:
    """``(B,)`` ratio of the focal length a pointmap implies to the calibrated one.

    A network that believes camera a's focal is ``f * r`` gives every point in a's frame with
    x and y divided by ``r`` (the one scene consistent with the image under that belief);
    multiplying x and y of its answers in a's frame by ``r`` undoes it. ``points_cam``
    ``(B, H, W, 3)`` is a's own pointmap, ``K`` ``(B, 3, 3)`` its calibrated intrinsics,
    ``mask`` ``(B, H, W)`` the pixels to trust.
    """
    K = K.double()
    focal = estimate_focal(points_cam, K[:, :2, 2], mask=mask)
    return focal / ((K[:, 0, 0] + K[:, 1, 1]) / 2)


def solve_pnp(points: np.ndarray, pixels: np.ndarray, K: np.ndarray,
              reprojection_px: float = 5.0, iterations: int = 100, seed: int = 0
              ) -> np.ndarray | None:
    """Camera-to-world pose from 3D-2D correspondences with RANSAC (OpenCV SQPnP).

    Args:
        points: ``(P, 3)`` world points.
        pixels: ``(P, 2)`` their pixel coordinates (u, v).
        K: 3x3 intrinsics.
        reprojection_px: RANSAC inlier threshold in pixels.
        iterations: RANSAC iterations.
        seed: Seed of OpenCV's RNG (RANSAC sampling is deterministic per seed).

    Returns:
        The 4x4 camera-to-world pose, or ``None`` when fewer than 4 correspondences or no
        consistent pose.
    """
    import cv2

    if len(points) < 4:
        return None
    cv2.setRNGSeed(seed)
    ok, rvec, tvec, inliers = cv2.solvePnPRansac(
        points.astype(np.float64), pixels.astype(np.float64), K.astype(np.float64), None,
        iterationsCount=iterations, reprojectionError=reprojection_px, flags=cv2.SOLVEPNP_SQPNP)
    if not ok or inliers is None or len(inliers) < 4:
        return None
    world_to_cam = np.eye(4)
    world_to_cam[:3, :3] = cv2.Rodrigues(rvec)[0]
    world_to_cam[:3, 3] = tvec.ravel()
    return np.linalg.inv(world_to_cam)


@dataclass(frozen=True)
class PoseDisagreement:
    """How far estimated camera poses are from reference poses after a Sim(3) fit.

    Attributes:
        rotation_deg: Per-camera angle (degrees) between estimated and reference orientation.
        centre_error: Per-camera distance between centres, in the reference unit (metres).
    """

    rotation_deg: np.ndarray
    centre_error: np.ndarray

    def summary(self) -> dict[str, float]:
        """Median and maximum of both errors, keyed for diagnostics."""
        return {"pose_rotation_median_deg": float(np.median(self.rotation_deg)),
                "pose_rotation_max_deg": float(np.max(self.rotation_deg)),
                "pose_centre_median_m": float(np.median(self.centre_error)),
                "pose_centre_max_m": float(np.max(self.centre_error))}


def pose_disagreement(estimated: np.ndarray, reference: np.ndarray) -> PoseDisagreement:
    """Rotation angle and centre distance of ``(N, 4, 4)`` poses already in the same frame."""
    relative = np.einsum("nji,njk->nik", estimated[:, :3, :3], reference[:, :3, :3])
    cos = np.clip((np.trace(relative, axis1=1, axis2=2) - 1) / 2, -1.0, 1.0)
    return PoseDisagreement(np.degrees(np.arccos(cos)),
                            np.linalg.norm(estimated[:, :3, 3] - reference[:, :3, 3], axis=1))


def align_to_reference(estimated: np.ndarray, reference: np.ndarray
                       ) -> tuple[Similarity, PoseDisagreement]:
    """Sim(3) taking estimated camera centres onto reference ones, and the residual disagreement.

    Args:
        estimated: ``(N, 4, 4)`` estimated camera-to-world poses (network frame and unit).
        reference: ``(N, 4, 4)`` calibrated camera-to-rig poses (metres); N >= 3.

    Returns:
        The similarity (network frame -> rig frame) and the per-camera pose disagreement after
        applying it.
    """
    transform = fit_similarity(estimated[:, :3, 3], reference[:, :3, 3])
    return transform, pose_disagreement(transform.apply_to_poses(estimated), reference)


def ray_consistent_scale(points: torch.Tensor, pose_a: torch.Tensor, origins: torch.Tensor,
                         directions: torch.Tensor, weights: torch.Tensor, iterations: int = 3
                         ) -> torch.Tensor:
    """Scale that puts points predicted in camera a's frame onto the rays that see them.

    With calibrated poses fixed, a network's points ``X`` (camera a's frame, unknown unit) of
    pixels seen by other calibrated cameras lie, scaled by the right ``s``, on those pixels'
    rays: ``pose_a(s X)`` is on the line ``origin + d * direction``. The point-to-ray distance
    is linear in ``s``, so the weighted least-squares ``s`` is closed-form; a few re-weightings
    by the inverse residual make it robust to outliers.

    Args:
        points: ``(B, P, 3)`` points in camera a's frame.
        pose_a: ``(B, 4, 4)`` camera-to-rig pose of camera a (metres).
        origins: ``(B, P, 3)`` rig-frame centre of the camera that sees each point.
        directions: ``(B, P, 3)`` rig-frame direction of each point's pixel ray (any length).
        weights: ``(B, P)`` non-negative weights (e.g. network confidence).
        iterations: Re-weighting iterations after the first solve.

    Returns:
        ``(B,)`` scales (metres per network unit), float64.
    """
    points, pose_a = points.double(), pose_a.double()
    d = directions.double()
    d = d / d.norm(dim=-1, keepdim=True).clamp(min=1e-12)

    def reject(x: torch.Tensor) -> torch.Tensor:      # component orthogonal to the ray
        return x - (x * d).sum(-1, keepdim=True) * d

    a = reject(torch.einsum("bij,bpj->bpi", pose_a[:, :3, :3], points))
    b = reject(pose_a[:, None, :3, 3] - origins.double())
    w = weights.double()
    scale = torch.zeros(len(points), dtype=torch.float64, device=points.device)
    for _ in range(iterations + 1):
        scale = -(w * (a * b).sum(-1)).sum(1) / (w * (a * a).sum(-1)).sum(1).clamp(min=1e-300)
        residual = (scale[:, None, None] * a + b).norm(dim=-1)
        floor = 1e-6 * residual.mean(1, keepdim=True).clamp(min=1e-12)
        w = weights.double() / torch.maximum(residual, floor)
    return scale
