"""Free-space consistency of per-view depth maps ("depth cleaning").

Every view of a multi-view reconstruction claims that the space between its camera and the
surface it sees is empty. A point of another view that lies clearly in front of that surface,
inside its camera's field of view, contradicts the claim: one of the two is wrong. The official
DUSt3R and MASt3R demos settle it by confidence before building the cloud (their "clean-up
depthmaps" option, on by default): the less confident point, when it is the one in front, is
dropped. Flying pixels at silhouettes and confident-looking garbage floating before the
backdrop are typical victims; points on a surface that several views agree on are kept.

Conventions as in :mod:`threer_ros.geometry.cameras`: OpenCV camera frames, ``K`` in pixels
of the ``H x W`` maps with integer pixel centres, depth along each camera's optical z axis.
Positions may be in any unit (metres, or the alignment's own unit) as long as points and
camera translations share it; the test is relative, so the unit does not matter.
"""

from __future__ import annotations

import torch

from threer_ros.geometry.cameras import project

#: Relative depth margin of the test (the official default): a point counts as in front of a
#: view's surface when its depth in that camera is below ``(1 - tolerance)`` times the depth
#: the view observes at the pixel it projects to.
TOLERANCE = 1e-3


def view_depths(points: torch.Tensor, cam_to_world: torch.Tensor) -> torch.Tensor:
    """``(N, H, W)`` depth of each view's own points along its camera's optical axis.

    Args:
        points: ``(N, H, W, 3)`` world points of every pixel of N views (NaN where none).
        cam_to_world: ``(N, 4, 4)`` camera-to-world poses, same unit as ``points``.
    """
    pose = cam_to_world.to(points.dtype)
    # z of R^T (p - c): the third column of R dotted with p - c
    return ((points - pose[:, None, None, :3, 3]) * pose[:, None, None, :3, 2]).sum(-1)


def free_space_violations(points: torch.Tensor, confidence: torch.Tensor,
                          intrinsics: torch.Tensor, cam_to_world: torch.Tensor,
                          tolerance: float = TOLERANCE) -> torch.Tensor:
    """Pixels whose point occludes, with less confidence, what another view sees.

    Pixel ``(i, v, u)`` is flagged when, for some other view ``j``, its point projects inside
    ``j``'s image (to the nearest pixel centre ``(v', u')``) in front of camera ``j`` with a
    depth below ``(1 - tolerance) * depth_j[v', u']`` and ``confidence[i, v, u] <
    confidence[j, v', u']``. Views' depths are those of their own points
    (:func:`view_depths`); pixels whose point is not finite or not in front of its camera
    neither get flagged nor flag others. The test compares the input confidences, so its
    result does not depend on the order of the views. The depth compared with is the nearest
    pixel's: on a surface seen at a slant it differs from a point on that surface by up to
    half a pixel's depth step, which can exceed the margin, so of two consistent points of
    different confidence the less confident one may go too (as officially; the other stays).

    Vectorised over the source views; one pass per target view, each holding ``N * H * W``
    projections (so memory grows as N, time as N^2). Runs on the device and in the floating
    dtype of ``points``.

    Args:
        points: ``(N, H, W, 3)`` world points of every pixel (any unit; NaN where none).
        confidence: ``(N, H, W)`` their confidences (larger = more trusted).
        intrinsics: ``(N, 3, 3)`` pinhole matrices in pixels of the ``H x W`` maps.
        cam_to_world: ``(N, 4, 4)`` camera-to-world poses, same unit as ``points``.
        tolerance: Relative depth margin, in ``[0, 1)``.

    Returns:
        ``(N, H, W)`` bool, True where the point should be dropped.
    """
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance}")
    N, H, W, _ = points.shape
    if confidence.shape != (N, H, W) or intrinsics.shape != (N, 3, 3) \
            or cam_to_world.shape != (N, 4, 4):
        raise ValueError(f"shapes do not agree: points {tuple(points.shape)}, confidence "
                         f"{tuple(confidence.shape)}, intrinsics {tuple(intrinsics.shape)}, "
                         f"cam_to_world {tuple(cam_to_world.shape)}")
    dtype, dev = points.dtype, points.device
    K, pose = intrinsics.to(dev, dtype), cam_to_world.to(dev, dtype)
    depth = view_depths(points, pose)
    depth = torch.where(torch.isfinite(depth) & (depth > 0), depth, float("nan"))
    conf = confidence.to(dev)
    flat_points, flat_conf = points.reshape(-1, 3), conf.reshape(-1)
    source = torch.arange(N, device=dev).repeat_interleave(H * W)
    usable = torch.isfinite(depth).reshape(-1)
    flagged = torch.zeros(N * H * W, dtype=torch.bool, device=dev)
    for j in range(N):
        uv, z = project(flat_points, K[j], pose[j])
        u, v = torch.round(uv[:, 0]), torch.round(uv[:, 1])
        inside = usable & (source != j) & (z > 0) & (u >= 0) & (u <= W - 1) \
            & (v >= 0) & (v <= H - 1)
        # clamp before the cast: outside (or NaN) coordinates are masked by ``inside`` anyway
        pixel = (v.nan_to_num(0).clamp(0, H - 1).long() * W
                 + u.nan_to_num(0).clamp(0, W - 1).long())
        seen = depth[j].reshape(-1)[pixel]
        # NaN ``seen`` (nothing observed at that pixel) compares False: no violation
        flagged |= inside & (z < (1 - tolerance) * seen) & (flat_conf < conf[j].reshape(-1)[pixel])
    return flagged.reshape(N, H, W)

