"""Rotations and rigid transforms (numpy): quaternions in ROS order (x, y, z, w).

A pose ``T`` (4x4) maps points of a child frame into its parent: ``p_parent = T @ p_child``; for
cameras that is the camera-to-rig pose, whose translation is the camera centre in the rig frame.
"""

from __future__ import annotations

import numpy as np


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """3x3 rotation matrix of the quaternion ``q = (x, y, z, w)`` (normalised first)."""
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def matrix_to_quaternion(R: np.ndarray) -> np.ndarray:
    """Unit quaternion ``(x, y, z, w)`` with ``w >= 0`` of a 3x3 rotation matrix.

    Uses the largest of the four candidate denominators, so it is accurate for every rotation,
    including those near 180 degrees.
    """
    R = np.asarray(R, dtype=np.float64)
    trace = np.trace(R)
    candidates = np.array([trace, R[0, 0], R[1, 1], R[2, 2]])
    k = int(np.argmax(candidates))
    if k == 0:
        s = 2.0 * np.sqrt(1.0 + trace)
        q = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1], 0.25 * s * s]) / s
    else:
        i, j, m = k - 1, k % 3, (k + 1) % 3
        s = 2.0 * np.sqrt(1.0 + R[i, i] - R[j, j] - R[m, m])
        q = np.empty(4)
        q[i] = 0.25 * s
        q[j] = (R[j, i] + R[i, j]) / s
        q[m] = (R[m, i] + R[i, m]) / s
        q[3] = (R[m, j] - R[j, m]) / s
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def make_pose(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """4x4 homogeneous transform from rotation ``R`` (3x3) and translation ``t`` (3,)."""
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t
    return T


def invert_pose(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform (rotation transposed, no general matrix inverse)."""
    R, t = T[:3, :3], T[:3, 3]
    return make_pose(R.T, -R.T @ t)


def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply the 4x4 transform ``T`` to (..., 3) points."""
    return points @ T[:3, :3].T + T[:3, 3]


def look_at(centre: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Camera-to-world pose of an optical frame at ``centre`` looking at ``target``.

    The optical z axis points at the target, x to the right and y down in the image, with
    ``up`` (world vector) appearing upwards.
    """
    z = np.asarray(target, float) - np.asarray(centre, float)
    z /= np.linalg.norm(z)
    x = np.cross(z, np.asarray(up, float))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return make_pose(np.stack([x, y, z], axis=1), np.asarray(centre, float))
