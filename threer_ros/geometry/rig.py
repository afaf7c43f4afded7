"""Geometry of a camera rig (numpy, no I/O): rig frames, mean orientation, baselines, the point
the optical axes converge to.

Poses are 4x4 camera-to-rig matrices of OpenCV optical frames (x right, y down, z forward;
``p_rig = T @ p_cam``); their translations are the camera centres, in whatever unit the poses
use (metres for a calibrated rig).
"""

from __future__ import annotations

import numpy as np

from threer_ros.geometry.transforms import invert_pose, make_pose


def project_to_rotation(M: np.ndarray) -> np.ndarray:
    """The rotation nearest to the 3x3 matrix ``M`` in the Frobenius norm (SVD projection)."""
    U, _, Vt = np.linalg.svd(np.asarray(M, np.float64))
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt)) or 1.0])
    return U @ D @ Vt


def chordal_mean_rotation(rotations: np.ndarray) -> tuple[np.ndarray, float]:
    """Chordal L2 mean of rotations: the rotation ``R`` minimising sum ||R - R_i||_F^2.

    It is the SO(3) projection of the arithmetic mean of the matrices. Returns ``R`` and how
    well it is defined: the smallest singular value of the mean matrix, 1 when all rotations
    agree and near 0 when they cancel out (cameras spread around a full circle).
    """
    mean = np.mean(np.asarray(rotations, np.float64), axis=0)
    return project_to_rotation(mean), float(np.linalg.svd(mean, compute_uv=False)[-1])


def mean_pose(poses: np.ndarray) -> tuple[np.ndarray, float]:
    """Pose with the mean camera centre and the chordal mean orientation of ``poses`` (N, 4, 4),
    and the orientation's definedness (see :func:`chordal_mean_rotation`)."""
    poses = np.asarray(poses, np.float64)
    rotation, definedness = chordal_mean_rotation(poses[:, :3, :3])
    return make_pose(rotation, poses[:, :3, 3].mean(axis=0)), definedness


def rebase(poses: dict[str, np.ndarray], new_rig: np.ndarray, scale: float = 1.0
           ) -> dict[str, np.ndarray]:
    """Camera-to-rig poses expressed in the frame ``new_rig`` (its pose in the old rig frame),
    translations multiplied by ``scale`` (applied after the change of frame, so ``new_rig`` is
    in the old unit)."""
    to_new = invert_pose(np.asarray(new_rig, np.float64))
    out = {}
    for name, pose in poses.items():
        moved = to_new @ np.asarray(pose, np.float64)
        moved[:3, 3] *= scale
        out[name] = moved
    return out


def rotation_angle(R: np.ndarray) -> float:
    """Rotation angle of the 3x3 rotation ``R`` in radians, in [0, pi] (accurate near 0 too:
    atan2 of the sine, from the skew part, and the cosine, from the trace)."""
    R = np.asarray(R, np.float64)
    sine = np.linalg.norm([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]]) / 2.0
    return float(np.arctan2(sine, (np.trace(R) - 1.0) / 2.0))


def nearest_neighbours(centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For (N, 3) camera centres (N >= 2): each camera's nearest other camera (index) and the
    distance to it (the camera's shortest baseline, in the centres' unit)."""
    centres = np.asarray(centres, np.float64)
    dist = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    index = np.argmin(dist, axis=1)
    return index, dist[np.arange(len(centres)), index]


def axes_convergence(poses: np.ndarray, min_spread: float = 0.05) -> np.ndarray | None:
    """The point nearest (least squares) to every camera's optical axis, in the rig frame.

    ``None`` when the axes are too close to parallel for such a point to be meaningful: the
    smallest eigenvalue of the normal matrix sum(I - d d^T) / N, which is 0 for parallel axes
    and grows with their angular spread, is below ``min_spread``.
    """
    poses = np.asarray(poses, np.float64)
    dirs = poses[:, :3, 2] / np.linalg.norm(poses[:, :3, 2], axis=1, keepdims=True)
    projectors = np.eye(3)[None] - dirs[:, :, None] * dirs[:, None, :]
    A = projectors.sum(axis=0)
    if len(poses) < 2 or np.linalg.eigvalsh(A / len(poses))[0] < min_spread:
        return None
    b = np.einsum("nij,nj->i", projectors, poses[:, :3, 3])
    return np.linalg.solve(A, b)
