"""OpenCV ``cv2.FileStorage`` calibrations (YAML or XML) of a chain of ``stereoCalibrate`` pairs.

Cameras are numbered 1..N. Nodes read (``i`` is a camera number, written ``Ki`` or ``K_i``):

* camera matrix ``K``, ``M``, ``cameraMatrix`` or ``camera_matrix`` + ``i`` (3x3, pixels,
  pixel centres at integer coordinates);
* distortion ``D``, ``distCoeffs``, ``dist_coeffs`` or ``distortion_coefficients`` + ``i``:
  OpenCV's (k1, k2, p1, p2[, k3[, k4, k5, k6]]) -> ROS ``plumb_bob`` (4, 5) or
  ``rational_polynomial`` (8; 12 or 14 only when the thin-prism / tilt terms are zero); with
  ``--fisheye`` or ``distortion_model<i>: fisheye``: ``cv2.fisheye``'s k1..k4 -> ``equidistant``;
* image size: ``image_size<i>`` / ``imageSize<i>`` ([width, height]) or ``image_width<i>`` and
  ``image_height<i>``; without ``i`` for all cameras (the stereo_calib sample writes none: then
  give ``--image-size WxH``, or the rig file gets poses only);
* the chain: ``R`` and ``T`` of ``stereoCalibrate(camera i, camera i + 1)``, which take points
  of camera i's frame into camera i + 1's (``p_{i+1} = R p_i + T``), in the unit of the
  calibration pattern, named ``R_i_j`` / ``T_i_j`` (or ``Rij`` / ``Tij`` below 10) with
  j = i + 1, or plain ``R`` / ``T`` for a single pair; R may also be a Rodrigues vector;
* optional ``camera_names``: a sequence of N strings (default ``cam1`` ... ``camN``).

Several files are read as one set of nodes (e.g. the stereo_calib sample's ``intrinsics.yml``
with M1, D1, M2, D2 and ``extrinsics.yml`` with R, T); when every file holds its own ``R`` and
``T``, file k is the pair (k, k + 1) of the chain, its camera 1 and 2 nodes being cameras k and
k + 1. Other nodes (stereoRectify's R1, R2, P1, P2, Q; E, F, ...) are ignored.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from threer_ros.data.calibration import CalibrationError, RigCalibration
from threer_ros.data.calibration_formats.common import (SourceRig, checked_calibration,
                                                        export_distortion, ordered_intrinsics,
                                                        rotation_from)
from threer_ros.geometry.transforms import invert_pose, make_pose

_INDEXED = {
    "K": re.compile(r"^(?:K|M|cameraMatrix|camera_matrix)_?(\d+)$"),
    "D": re.compile(r"^(?:D|distCoeffs|dist_coeffs|distortion_coefficients)_?(\d+)$"),
    "size": re.compile(r"^(?:image_size|imageSize)_?(\d+)$"),
    "width": re.compile(r"^image_width_?(\d+)$"),
    "height": re.compile(r"^image_height_?(\d+)$"),
    "model": re.compile(r"^distortion_model_?(\d+)$"),
}
_GLOBAL = {"size": ("image_size", "imageSize"), "width": ("image_width",),
           "height": ("image_height",), "model": ("distortion_model",)}
_LINK = (re.compile(r"^([RT])(\d)(\d)$"), re.compile(r"^([RT])_(\d+)_(\d+)$"))
_NAMES = ("camera_names", "cameras")
_FISHEYE = ("fisheye", "equidistant")


def _value(node: cv2.FileNode):
    """A FileStorage node as a string, a list of strings, or a float array."""
    if node.isString():
        return node.string()
    if node.isSeq():
        items = [node.at(i) for i in range(node.size())]
        if items and all(item.isString() for item in items):
            return [item.string() for item in items]
        if all(item.isReal() or item.isInt() for item in items):
            return np.array([item.real() for item in items])
        return None
    if node.isMap():
        mat = node.mat()
        return None if mat is None else np.asarray(mat, np.float64)
    if node.isReal() or node.isInt():
        return np.array([node.real()])
    return None


def _read_nodes(path: Path) -> dict:
    if not path.is_file():
        raise CalibrationError(f"{path}: no such file (an OpenCV FileStorage .yml/.yaml/.xml)")
    try:
        storage = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    except cv2.error as exc:
        raise CalibrationError(f"{path}: not a readable OpenCV FileStorage file "
                               f"({exc.err.strip()})") from None
    try:
        if not storage.isOpened():
            raise CalibrationError(f"{path}: not a readable OpenCV FileStorage file")
        root = storage.root()
        return {key: _value(root.getNode(key)) for key in root.keys()}
    finally:
        storage.release()


def _merged(paths: Sequence[Path]) -> list[tuple[dict, dict[str, Path]]]:
    """Node sets to read: one per pair file when every file has R and T, else one in all."""
    files = [(Path(p), _read_nodes(Path(p))) for p in paths]
    if len(files) > 1 and all("R" in nodes and "T" in nodes for _, nodes in files):
        return [(nodes, {key: path for key in nodes}) for path, nodes in files]
    merged: dict = {}
    origin: dict[str, Path] = {}
    for path, nodes in files:
        for key, value in nodes.items():
            if key in merged:
                raise CalibrationError(
                    f"node {key!r} is in both {origin[key]} and {path}: give one set of nodes "
                    "(cameras 1..N, pairs R_i_j / T_i_j), or one file per stereo pair, each "
                    "with its R and T (a chain)")
            merged[key] = value
            origin[key] = path
    return [(merged, origin)]


def _indexed(nodes: dict, kind: str) -> dict[int, tuple[str, object]]:
    found = {}
    for key, value in nodes.items():
        match = _INDEXED[kind].match(key)
        if match:
            found[int(match.group(1))] = (key, value)
    return found


def _links(nodes: dict, origin: dict[str, Path]) -> dict[tuple[int, int], dict[str, tuple]]:
    links: dict[tuple[int, int], dict[str, tuple]] = {}
    for key, value in nodes.items():
        for pattern in _LINK:
            match = pattern.match(key)
            if match:
                pair = (int(match.group(2)), int(match.group(3)))
                links.setdefault(pair, {})[match.group(1)] = (key, value)
    if "R" in nodes or "T" in nodes:
        links.setdefault((1, 2), {}).update(
            {k: (k, nodes[k]) for k in ("R", "T") if k in nodes})
    for (i, j), parts in links.items():
        for part in ("R", "T"):
            if part not in parts:
                other = next(iter(parts.values()))[0]
                raise CalibrationError(f"{origin[other]}: {other} has no matching {part} node "
                                       f"(the pair camera {i} -> camera {j} needs R and T)")
    return links


def _pair_pose(origin: dict[str, Path], parts: dict[str, tuple]) -> np.ndarray:
    """4x4 transform taking camera i's frame into camera j's (stereoCalibrate's R, T)."""
    (r_key, R), (t_key, T) = parts["R"], parts["T"]
    if not isinstance(R, np.ndarray) or not isinstance(T, np.ndarray):
        raise CalibrationError(f"{origin[r_key]}: {r_key} and {t_key} must be numeric matrices")
    if R.size == 3:
        R = cv2.Rodrigues(R.reshape(3, 1))[0]
    R = rotation_from(origin[r_key], r_key, R.reshape(3, 3) if R.size == 9 else R)
    if T.size != 3 or not np.all(np.isfinite(T)):
        raise CalibrationError(f"{origin[t_key]}: {t_key} must hold 3 numbers (a translation), "
                               f"got shape {T.shape}")
    return make_pose(R, T.ravel())


def _size(nodes: dict, index: int, image_size: tuple[int, int] | None) -> tuple[int, int] | None:
    """Camera ``index``'s (width, height): its own nodes, else the file's, else ``image_size``."""
    def pick(size, width, height):
        if size is not None:
            return size
        if isinstance(width, np.ndarray) and isinstance(height, np.ndarray):
            return np.concatenate([width.ravel(), height.ravel()])
        return None

    own = {kind: _indexed(nodes, kind).get(index, (None, None))[1]
           for kind in ("size", "width", "height")}
    value = pick(own["size"], own["width"], own["height"])
    if value is None:
        value = pick(next((nodes[k] for k in _GLOBAL["size"] if k in nodes), None),
                     nodes.get("image_width"), nodes.get("image_height"))
    if value is None:
        return image_size
    arr = np.ravel(value) if isinstance(value, np.ndarray) else np.zeros(0)
    if arr.size != 2 or np.any(arr != np.round(arr)):
        raise CalibrationError(f"camera {index}: the image size must be two integers (width, "
                               f"height), got {value!r}")
    return int(arr[0]), int(arr[1])


def _distortion(path: Path, index: int, D: np.ndarray, model: str | None, fisheye: bool
                ) -> tuple[str, np.ndarray]:
    D = np.ravel(D)
    if fisheye or (model or "").lower() in _FISHEYE:
        if D.size != 4:
            raise CalibrationError(f"{path}: camera {index}: fisheye distortion has 4 "
                                   f"coefficients (k1..k4), got {D.size}")
        return "equidistant", D
    if D.size in (12, 14) and not np.any(D[8:]):
        D = D[:8]
    if D.size in (4, 5):
        return "plumb_bob", D
    if D.size == 8:
        return "rational_polynomial", D
    raise CalibrationError(f"{path}: camera {index}: {D.size} distortion coefficients cannot be "
                           "represented: ROS and threer_ros take 4, 5 or 8 (k1, k2, p1, p2, k3, "
                           "k4, k5, k6); the thin-prism and tilt terms must be zero")


def read_opencv(paths: Sequence[Path], fisheye: bool = False,
                image_size: tuple[int, int] | None = None) -> SourceRig:
    """Cameras of one or more FileStorage files (layout in the module docstring); reference
    frame: camera 1's; unit: the calibration pattern's (``metric`` is assumed: scale with
    ``--scale`` when the pattern was measured in millimetres).

    Args:
        paths: The files, in chain order for one-file-per-pair chains.
        fisheye: Read every 4-coefficient distortion as ``cv2.fisheye``'s (ROS equidistant).
        image_size: (width, height) of cameras whose file gives no size.

    Raises:
        CalibrationError: unreadable file, no cameras, a gap in the numbering, a missing or
            non-consecutive pair (not a chain), or malformed matrices.
    """
    node_sets = _merged(paths)
    # camera number -> (node name, matrix, its node set, node origins, number in that set)
    matrices: dict[int, tuple[str, object, dict, dict, int]] = {}
    links: dict[tuple[int, int], np.ndarray] = {}
    names: list[str] | None = None
    ignored: set[str] = set()
    notes = []
    for offset, (nodes, origin) in enumerate(node_sets):
        for index, (key, value) in _indexed(nodes, "K").items():
            first = matrices.setdefault(index + offset, (key, value, nodes, origin, index))
            if first[1] is not value and not _same(first[1], value):
                notes.append(f"camera {index + offset}: {origin[key]} gives another camera "
                             f"matrix than {first[3][first[0]]}; the first is used")
        for (i, j), parts in _links(nodes, origin).items():
            if j != i + 1:
                key = parts["R"][0]
                raise CalibrationError(
                    f"{origin[key]}: {key} links camera {i} to camera {j}, which is not the "
                    f"next one: the file must chain consecutive cameras (R_1_2, R_2_3, ...: "
                    "stereoCalibrate of each camera with the next)")
            links.setdefault((i + offset, j + offset), _pair_pose(origin, parts))
        for key in _NAMES:
            if isinstance(nodes.get(key), list):
                names = nodes[key]
        ignored |= {k for k in nodes if not _known(k)}
    if not matrices:
        raise CalibrationError(f"{', '.join(map(str, paths))}: no camera matrix found; expected "
                               "nodes K1, K2, ... (or M1, cameraMatrix1, camera_matrix_1)")
    count = max(matrices)
    missing = sorted(set(range(1, count + 1)) - set(matrices))
    if missing:
        raise CalibrationError(f"no camera matrix for camera(s) {missing} (cameras are numbered "
                               f"1..{count} without gaps)")
    if names is not None and len(names) != count:
        raise CalibrationError(f"camera_names lists {len(names)} names for {count} cameras")
    cameras = tuple(names or (f"cam{i}" for i in range(1, count + 1)))
    poses, intrinsics = {}, {}
    for i in range(1, count + 1):
        name = cameras[i - 1]
        key, K, nodes, origin, local = matrices[i]
        if not isinstance(K, np.ndarray) or K.size != 9:
            raise CalibrationError(f"{origin[key]}: {key} must be a 3x3 camera matrix")
        K = K.reshape(3, 3)
        if i == 1:
            poses[name] = np.eye(4)
        else:
            if (i - 1, i) not in links:
                raise CalibrationError(
                    f"camera {i} is not chained to camera {i - 1}: no R_{i - 1}_{i} / "
                    f"T_{i - 1}_{i} (stereoCalibrate of cameras {i - 1} and {i}); the chain "
                    "must link every camera to the one before it")
            poses[name] = poses[cameras[i - 2]] @ invert_pose(links[(i - 1, i)])
        d_key, D = _indexed(nodes, "D").get(local, (key, np.zeros(0)))
        if not isinstance(D, np.ndarray):
            raise CalibrationError(f"{origin[d_key]}: {d_key} must be a numeric matrix or "
                                   "sequence of distortion coefficients")
        model = _indexed(nodes, "model").get(local, (None, nodes.get("distortion_model")))[1]
        size = _size(nodes, local, image_size)
        if size is None:
            notes.append(f"{name}: no image size in the file; its intrinsics are left out "
                         "(give --image-size WxH)")
            continue
        ros_model, coeffs = _distortion(origin[key], i, D,
                                        model if isinstance(model, str) else None, fisheye)
        intrinsics[name] = checked_calibration(origin[key], name, K, size[0], size[1],
                                               ros_model, coeffs)
    extra = sorted(p for p in links if p[1] > count)
    if extra:
        raise CalibrationError(f"pair {extra[0][0]} -> {extra[0][1]} has no camera matrix for "
                               f"camera {extra[0][1]}")
    if ignored:
        notes.append(f"ignored nodes: {', '.join(sorted(ignored))}")
    return SourceRig(cameras, poses, intrinsics, "camera 1", True, tuple(notes))


def _same(a, b) -> bool:
    return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape \
        and np.allclose(a, b)


def _known(key: str) -> bool:
    return any(p.match(key) for p in _INDEXED.values()) or any(p.match(key) for p in _LINK) \
        or key in ("R", "T") or key in _NAMES or any(key in g for g in _GLOBAL.values())


def write_opencv(rig: RigCalibration, out: Path) -> None:
    """Write ``rig`` as one FileStorage file (YAML, or XML for ``.xml``): ``camera_names``,
    ``K<i>``, ``D<i>``, ``distortion_model<i>`` (``plumb_bob`` or ``fisheye``),
    ``image_width<i>``, ``image_height<i>`` and the chain ``R_<i>_<i+1>``, ``T_<i>_<i+1>``
    (metres) that ``read_opencv`` reads.

    Raises:
        CalibrationError: a camera without intrinsics, or the file cannot be written.
    """
    cameras = ordered_intrinsics(rig, "OpenCV")
    try:
        storage = cv2.FileStorage(str(out), cv2.FILE_STORAGE_WRITE)
    except cv2.error as exc:
        raise CalibrationError(f"{out}: cannot write ({exc.err.strip()})") from None
    try:
        storage.startWriteStruct("camera_names", cv2.FileNode_SEQ)
        for name, _ in cameras:
            storage.write("", name)
        storage.endWriteStruct()
        for i, (name, calib) in enumerate(cameras, start=1):
            kind, coeffs = export_distortion(name, calib)
            storage.write(f"K{i}", np.asarray(calib.K, np.float64))
            storage.write(f"D{i}", coeffs.reshape(1, -1) if coeffs.size else np.zeros((1, 5)))
            storage.write(f"distortion_model{i}", "fisheye" if kind == "fisheye" else "plumb_bob")
            storage.write(f"image_width{i}", int(calib.width))
            storage.write(f"image_height{i}", int(calib.height))
        for i in range(1, len(cameras)):
            pair = invert_pose(rig.cam_to_rig[cameras[i][0]]) @ rig.cam_to_rig[cameras[i - 1][0]]
            storage.write(f"R_{i}_{i + 1}", pair[:3, :3])
            storage.write(f"T_{i}_{i + 1}", pair[:3, 3].reshape(3, 1))
    finally:
        storage.release()
