"""Binary little-endian PLY point clouds: x, y, z (float), red, green, blue (uchar), confidence."""

from __future__ import annotations

from pathlib import Path

import numpy as np

_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"),
                   ("blue", "u1"), ("confidence", "<f4")])


def write_ply(path: str | Path, points: np.ndarray, colors: np.ndarray,
              confidence: np.ndarray | None = None) -> None:
    """Write a coloured cloud (metres, uint8 RGB) that MeshLab, CloudCompare and Open3D read."""
    n = len(points)
    record = np.empty(n, _DTYPE)
    for i, axis in enumerate("xyz"):
        record[axis] = points[:, i]
    for i, channel in enumerate(("red", "green", "blue")):
        record[channel] = colors[:, i]
    record["confidence"] = 1.0 if confidence is None else confidence
    header = "\n".join(["ply", "format binary_little_endian 1.0", f"element vertex {n}",
                        "property float x", "property float y", "property float z",
                        "property uchar red", "property uchar green", "property uchar blue",
                        "property float confidence", "end_header"]) + "\n"
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(record.tobytes())


def read_ply(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read a PLY written by :func:`write_ply`: points (P, 3), colors (P, 3), confidence (P,)."""
    data = Path(path).read_bytes()
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise ValueError(f"{path}: not a PLY file")
    header = data[:end].decode("ascii").splitlines()
    if "format binary_little_endian 1.0" not in header:
        raise ValueError(f"{path}: only binary little-endian PLY is supported")
    count = next(int(line.split()[2]) for line in header if line.startswith("element vertex"))
    record = np.frombuffer(data, _DTYPE, count=count, offset=end + len(b"end_header\n"))
    points = np.stack([record["x"], record["y"], record["z"]], 1)
    colors = np.stack([record["red"], record["green"], record["blue"]], 1)
    return points, colors, record["confidence"].copy()
