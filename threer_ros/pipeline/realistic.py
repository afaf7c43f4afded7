"""How real reconstruction networks err: a seeded model of imperfect answers, applied by the
ground-truth "networks" of :mod:`threer_ros.pipeline.oracle` (tests and benchmarks only; the
node never imports this).

Real networks are wrong in structured ways, and the pipelines must cope with each:

* **focal length**: a pointmap implies a focal length; a network's is off by a few percent.
  Modelled exactly as a network that believes camera ``a``'s focal is ``f (1 + e_a)``: every
  answer expressed in camera ``a``'s frame (its own pointmap, and a pair's or Fast3R's other
  views in it) has its x and y divided by ``1 + e_a`` (depths along z are right). This is the
  one consistent scene such a network can give: an anisotropic stretch about ``a``'s axis.
* **depth noise** growing with depth (white, relative to depth) and a smooth low-frequency
  relative warp (networks' errors are spatially correlated); points stay on their pixel rays.
* **silhouettes**: in a band around the head's outline, head pixels are pushed back and
  background pixels become flying pixels between the head and the backdrop, all with low
  confidence.
* **confident garbage**: blobs covering part of the backdrop get nonsense depths near the
  head's distance, at a confidence above the official thresholds.
* **outliers**: single head pixels thrown to random depths at full confidence.
* **a poor view**: one camera's noise, warp and focal error are larger and its confidences
  lower.
* **priors (Pow3R)**: given the calibrated intrinsics as rays, the network's focal error
  shrinks; given a relative pose, it follows it partly, right or wrong (so a bumped camera is
  partly hidden by the prior).
* **descriptors (MASt3R)**: :func:`position_descriptors` encodes a rig-frame position smoothly
  and injectively (so that reciprocal matching finds the right pixel); each pixel's descriptor
  encodes its true surface position with jitter, and a seeded fraction encode a random other
  pixel's position, so that matching finds wrong matches at a realistic rate, more of them in
  the poor view.

Per-pair units (the scale of each pair's answer) are the oracle's own
(:meth:`threer_ros.pipeline.oracle.OraclePairNetwork.pair_scale`). Every random draw comes from
``seed`` and the camera's name, so a camera's errors do not depend on the set's order.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Perturbation:
    """Errors an oracle adds (seeded); all zero = the exact ground truth.

    Attributes:
        noise: Standard deviation of white depth noise relative to depth (0.01 = 1 %).
        outliers: Fraction of head pixels thrown to random depths (0.5x-1.5x), at full
            confidence.
        seed: Seed of every draw.
        depth_warp: Standard deviation of a smooth relative depth error (low-frequency field).
        focal_error: Relative error of every view's implied focal length (0.05: the network
            believes ``1.05 f``).
        focal_spread: Standard deviation of a per-view relative focal error around it.
        silhouette_px: Half-width (network pixels) of the band around head silhouettes.
        silhouette_bias: Head pixels of the band are pushed back by up to this fraction of
            their depth; background pixels of the band fly between head and backdrop.
        silhouette_confidence: Band confidences are uniform in ``[1, silhouette_confidence)``.
        garbage: Fraction of the backdrop pixels outside the silhouette band (in blobs) given
            nonsense depths within 30 % of the camera's distance to the rig origin.
        garbage_confidence: Their confidence.
        poor_view: Index (camera order of the frame set) of a poor view; -1: none.
        poor_factor: The poor view's noise, warp and focal deviation from ``focal_error`` are
            this many times larger and its confidences ``1 + (c - 1) / poor_factor``.
        prior_weight: How far Pow3R follows its priors: known rays scale the focal error by
            ``1 - prior_weight``; a known relative pose moves the pair's second view that far
            from the true relative pose towards the prior.
        descriptor_noise: Jitter (metres) of the position descriptors encode (the poor
            view's: ``poor_factor`` times larger).
        descriptor_outliers: Fraction of pixels whose descriptor encodes a random other pixel's
            position (the poor view's: ``poor_factor`` times larger, at most 1).
    """

    noise: float = 0.0
    outliers: float = 0.0
    seed: int = 0
    depth_warp: float = 0.0
    focal_error: float = 0.0
    focal_spread: float = 0.0
    silhouette_px: int = 0
    silhouette_bias: float = 0.0
    silhouette_confidence: float = 3.0
    garbage: float = 0.0
    garbage_confidence: float = 5.0
    poor_view: int = -1
    poor_factor: float = 4.0
    prior_weight: float = 0.0
    descriptor_noise: float = 0.0
    descriptor_outliers: float = 0.0


#: The realistic defaults: errors of the size the released networks show on a capture rig.
REALISTIC = Perturbation(noise=0.002, outliers=0.002, depth_warp=0.002, focal_error=0.03,
                         focal_spread=0.01, silhouette_px=2, silhouette_bias=0.02,
                         garbage=0.15, poor_view=5, poor_factor=3.0, prior_weight=0.7,
                         descriptor_noise=0.001, descriptor_outliers=0.2)


#: Length (metres) of the descriptors' encoding (:func:`position_descriptors`): positions within
#: about this distance of the rig origin are the best resolved.
DESCRIPTOR_SCALE = 0.5


def realistic(seed: int = 0, **changes) -> Perturbation:
    """:data:`REALISTIC` with ``seed`` and any field changed (e.g. ``focal_error=0.05``)."""
    return replace(REALISTIC, seed=seed, **changes)


@dataclass(frozen=True)
class ViewAnswer:
    """One camera's imperfect answer (rig frame, metres; network pixels).

    Attributes:
        points: ``(H, W, 3)`` the points the network puts at each pixel, before the focal
            stretch (which depends on the frame the answer is given in).
        confidence: ``(H, W)`` float32 confidences.
        focal_factor: ``1 + e``: the network believes this camera's focal is ``f (1 + e)``.
        descriptor_points: ``(H, W, 3)`` the positions its descriptors encode.
    """

    points: torch.Tensor
    confidence: torch.Tensor
    focal_factor: float
    descriptor_points: torch.Tensor


def camera_rng(perturbation: Perturbation, camera: str) -> np.random.Generator:
    """The random generator of ``camera``'s errors (seed and name)."""
    return np.random.default_rng([perturbation.seed, zlib.crc32(camera.encode())])


def smooth_field(height: int, width: int, rng: np.random.Generator, cells: int = 4
                 ) -> torch.Tensor:
    """``(H, W)`` float64 smooth random field of unit standard deviation (``cells`` x ``cells``
    random values, bicubically interpolated)."""
    coarse = torch.from_numpy(rng.standard_normal((1, 1, cells, cells)))
    field = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)[0, 0]
    return (field - field.mean()) / field.std().clamp(min=1e-12)


def _band(mask: torch.Tensor, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels of ``mask`` within ``radius`` of its outline (inner) and outside it (outer)."""
    m = mask.double()[None, None]
    k = 2 * radius + 1
    grown = F.max_pool2d(m, k, stride=1, padding=radius)[0, 0] > 0
    shrunk = -F.max_pool2d(-m, k, stride=1, padding=radius)[0, 0] > 0
    return mask & ~shrunk, grown & ~mask


def view_answer(points: torch.Tensor, head: torch.Tensor, confidence: torch.Tensor,
                cam_to_rig: torch.Tensor, index: int, camera: str, perturbation: Perturbation
                ) -> ViewAnswer:
    """Apply ``perturbation`` to one camera's exact answer.

    Args:
        points: ``(H, W, 3)`` float64 true rig-frame points of every pixel (head or backdrop).
        head: ``(H, W)`` bool, pixels on the head.
        confidence: ``(H, W)`` exact-answer confidences.
        cam_to_rig: ``(4, 4)`` float64 true pose of the camera (metres).
        index: The camera's position in the frame set (for ``poor_view``).
        camera: Its name (seeds its draws).
    """
    p = perturbation
    rng = camera_rng(p, camera)
    H, W = head.shape
    poor = p.poor_factor if index == p.poor_view else 1.0
    centre, axis = cam_to_rig[:3, 3], cam_to_rig[:3, 2]
    offset = points - centre
    depth = offset @ axis                                           # z-depth, metres
    factor = 1 + p.noise * poor * torch.from_numpy(rng.standard_normal((H, W))) \
        + p.depth_warp * poor * smooth_field(H, W, rng)
    wrong = torch.from_numpy(rng.random((H, W)) < p.outliers) & head
    factor = torch.where(wrong, torch.from_numpy(rng.uniform(0.5, 1.5, (H, W))), factor)
    conf = confidence.double().clone()
    inner = outer = torch.zeros_like(head)
    if p.silhouette_px > 0:
        inner, outer = _band(head, p.silhouette_px)
        # nearest head depth beside each outer pixel: a min-pool of the head's depths
        k = 2 * p.silhouette_px + 1
        head_depth = torch.where(head, depth, torch.full_like(depth, np.inf))[None, None]
        near = -F.max_pool2d(-head_depth, k, stride=1, padding=p.silhouette_px)[0, 0]
        t = torch.from_numpy(rng.random((H, W)))
        flying = (near + t * (depth - near)) / depth
        factor = torch.where(outer, flying, factor)
        factor = torch.where(inner, factor * (1 + p.silhouette_bias * t), factor)
        band_conf = 1 + (p.silhouette_confidence - 1) * torch.from_numpy(rng.random((H, W)))
        conf = torch.where(inner | outer, band_conf, conf)
    if p.garbage > 0:
        field = smooth_field(H, W, rng, cells=6)
        backdrop = ~head & ~outer
        cut = torch.quantile(field[backdrop], 1 - p.garbage) if backdrop.any() else np.inf
        blob = backdrop & (field >= cut)
        distance = float(centre.norm())
        nonsense = distance * (1 + 0.3 * torch.tanh(smooth_field(H, W, rng, cells=5)))
        factor = torch.where(blob, nonsense / depth, factor)
        conf = torch.where(blob, torch.full_like(conf, p.garbage_confidence), conf)
    if poor > 1:
        conf = 1 + (conf - 1) / poor
    focal_factor = 1 + p.focal_error + poor * p.focal_spread * float(rng.standard_normal())
    return ViewAnswer(centre + offset * factor[..., None], conf.float(), focal_factor,
                      _described(points, poor, rng, p))


def _described(points: torch.Tensor, poor: float, rng: np.random.Generator, p: Perturbation
               ) -> torch.Tensor:
    """``(H, W, 3)`` rig-frame positions (metres) a view's descriptors encode: its true
    ``points`` ``(H, W, 3)`` with jitter, and for a fraction of pixels a random other pixel's
    true position (``poor`` scales the jitter and the fraction)."""
    H, W, _ = points.shape
    described = points + poor * p.descriptor_noise * torch.from_numpy(
        rng.standard_normal((H, W, 3)))
    swap = torch.from_numpy(rng.random((H, W)) < min(1.0, poor * p.descriptor_outliers))
    other = torch.from_numpy(rng.integers(0, H * W, (H, W)))
    return torch.where(swap[..., None], points.reshape(-1, 3)[other], described)


def position_descriptors(positions: torch.Tensor, dim: int = 24,
                         scale: float = DESCRIPTOR_SCALE) -> torch.Tensor:
    """``(..., dim)`` unit descriptors of rig-frame ``positions`` ``(..., 3)`` (metres).

    ``positions / scale`` mapped onto the unit sphere of R^4 by inverse stereographic
    projection (smooth and injective over all of space; conformal, so the descriptor with the
    largest dot product is locally that of the nearest position), then into R^dim by a fixed
    orthonormal map (dot products unchanged; ``dim >= 4``). Float64; in a network's float32
    output, a centimetre on the backdrop (2.5 m from the origin) still changes a dot product
    by about 1e-6, twenty times its resolution there.
    """
    if dim < 4:
        raise ValueError(f"position descriptors need at least 4 dimensions, got {dim}")
    x = positions.double() / scale
    squared = (x * x).sum(-1, keepdim=True)
    sphere = torch.cat([2 * x, 1 - squared], -1) / (1 + squared)
    basis, _ = torch.linalg.qr(torch.randn(dim, 4, dtype=torch.float64,
                                           generator=torch.Generator().manual_seed(0)))
    return sphere @ basis.T.to(sphere.device)


def stretch(points_cam: torch.Tensor, focal_factor: float | torch.Tensor) -> torch.Tensor:
    """Points in a camera's frame as a network that believes its focal is ``f * focal_factor``
    gives them: x and y divided by the factor (``(..., 3)``; a tensor factor broadcasts over
    the leading dimensions)."""
    factor = torch.as_tensor(focal_factor, dtype=points_cam.dtype, device=points_cam.device)
    lateral = points_cam[..., :2] / factor.reshape(factor.shape + (1,) * (points_cam.dim()
                                                                         - factor.dim()))
    return torch.cat([lateral, points_cam[..., 2:]], -1)
