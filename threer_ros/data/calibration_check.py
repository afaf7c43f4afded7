"""Sanity report of a rig calibration, alone and against a capture bag (no ROS).

The report lists each camera (centre, viewing direction, nearest neighbour, intrinsics), the
rig's own geometry (the point the optical axes converge to, seen from each camera) and
findings: errors (the file cannot be used as it is) and warnings (it looks wrong).
Distances are in the rig file's unit, which should be metres; frames as in the rig file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from threer_ros.data.calibration import DISTORTION_MODELS, RigCalibration
from threer_ros.data.rosbag import TF_STATIC, BagReader, absolute_topic, bag_info
from threer_ros.geometry.rig import axes_convergence, nearest_neighbours, rotation_angle
from threer_ros.geometry.transforms import quaternion_to_matrix
from threer_ros.pipeline.types import CameraCalibration

#: Median nearest-neighbour baselines above this many "metres" look like millimetres.
MILLIMETRE_BASELINE = 10.0
#: Median nearest-neighbour baselines below this look like an unscaled (e.g. COLMAP) rig.
TINY_BASELINE = 1e-3
#: Poses closer than this (fraction of the rig's extent; radians) count as the same.
SAME_CENTRE, SAME_ROTATION = 1e-4, 1e-3
#: A bag's /tf_static pose differs from the file beyond these (metres, degrees).
TF_TRANSLATION_M, TF_ROTATION_DEG = 1e-3, 0.1


@dataclass
class Report:
    """Lines to print and findings; ``errors`` make ``calibration check`` exit non-zero."""

    lines: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def extend(self, other: "Report") -> None:
        self.lines += other.lines
        self.errors += other.errors
        self.warnings += other.warnings


def _vec(v: np.ndarray, digits: int = 3) -> str:
    return "(" + ", ".join(f"{round(float(x), digits) + 0.0:+.{digits}f}" for x in v) + ")"


def _intrinsics_line(calib: CameraCalibration | None) -> str:
    if calib is None:
        return "no intrinsics (from CameraInfo)"
    K = np.asarray(calib.K)
    hfov = np.degrees(2 * np.arctan2(calib.width / 2, K[0, 0])) if K[0, 0] > 0 else float("nan")
    model = calib.distortion_model or "none"
    if not np.any(calib.distortion):
        model = "none"
    return (f"{calib.width}x{calib.height} f ({K[0, 0]:.1f}, {K[1, 1]:.1f}) c ({K[0, 2]:.1f}, "
            f"{K[1, 2]:.1f}) hfov {hfov:.1f} deg, distortion {model}")


def _check_intrinsics(name: str, calib: CameraCalibration, report: Report) -> None:
    K = np.asarray(calib.K, np.float64)
    if not np.allclose(K[2], [0, 0, 1]) or K[1, 0] != 0:
        report.errors.append(f"{name}: K {K.ravel().tolist()} is not a camera matrix "
                             "[fx, s, cx, 0, fy, cy, 0, 0, 1]")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        report.errors.append(f"{name}: focal lengths must be positive (fx {K[0, 0]}, fy "
                             f"{K[1, 1]})")
    if K[0, 1] != 0:
        report.warnings.append(f"{name}: K has skew {K[0, 1]:g}; undistortion ignores it")
    if not (0 <= K[0, 2] <= calib.width and 0 <= K[1, 2] <= calib.height):
        report.warnings.append(f"{name}: principal point ({K[0, 2]:.1f}, {K[1, 2]:.1f}) lies "
                               f"outside the {calib.width}x{calib.height} image")
    model, count = calib.distortion_model, np.asarray(calib.distortion).size
    if model not in DISTORTION_MODELS:
        report.errors.append(f"{name}: distortion model {model!r} is not one threer_ros "
                             f"undistorts ({', '.join(m for m in DISTORTION_MODELS if m)})")
    elif count not in DISTORTION_MODELS[model]:
        report.errors.append(f"{name}: distortion model {model or 'none'} takes "
                             f"{' or '.join(map(str, DISTORTION_MODELS[model]))} coefficients, "
                             f"the file has {count}")


def _geometry(rig: RigCalibration, names: list[str], poses: np.ndarray, report: Report) -> None:
    """The point the optical axes converge to, seen from every camera."""
    point = axes_convergence(poses)
    if point is None:
        report.lines.append("optical axes: (nearly) parallel, no convergence point")
        mean_dir = poses[:, :3, 2].mean(axis=0)
        for name, pose in zip(names, poses):
            if pose[:3, 2] @ mean_dir < 0:
                report.warnings.append(f"{name}: faces away from the other cameras' mean "
                                       "viewing direction")
        return
    cam_points = [np.linalg.inv(pose) @ np.append(point, 1.0) for pose in poses]
    in_front = [p[2] > 0 for p in cam_points]
    if sum(in_front) < len(names) / 2:
        report.lines.append(f"optical axes meet behind the cameras at {_vec(point)}: an "
                            "outward-looking rig")
        return
    report.lines.append(f"optical axes converge at {_vec(point)} (the rig centre the cameras "
                        "look at); where each camera sees it:")
    for name, p, front in zip(names, cam_points, in_front):
        calib = rig.intrinsics.get(name)
        if not front:
            report.warnings.append(f"{name}: faces away from the rig centre {_vec(point)} the "
                                   "other cameras look at (is its rotation inverted?)")
            report.lines.append(f"  {name:<20} behind the camera")
            continue
        if calib is None:
            report.lines.append(f"  {name:<20} {p[2]:.3f} in front (no intrinsics to project)")
            continue
        u, v = (np.asarray(calib.K) @ p[:3])[:2] / p[2]
        inside = 0 <= u < calib.width and 0 <= v < calib.height
        report.lines.append(f"  {name:<20} pixel ({u:.1f}, {v:.1f}) at {p[2]:.3f}"
                            f"{'' if inside else '  OUTSIDE the image'}")
        if not inside:
            report.warnings.append(f"{name}: the rig centre projects to ({u:.0f}, {v:.0f}), "
                                   f"outside its {calib.width}x{calib.height} image")


def _baselines(names: list[str], poses: np.ndarray, report: Report) -> tuple[np.ndarray, str]:
    """Nearest-neighbour baselines and their summary line; findings on duplicates and unit."""
    centres = poses[:, :3, 3]
    extent = float(np.max(np.linalg.norm(centres[:, None] - centres[None], axis=-1)))
    if extent == 0.0:
        report.errors.append(f"all {len(names)} cameras have the same centre: the translations "
                             "are missing")
        return np.zeros(len(names)), ""
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            if np.linalg.norm(centres[i] - centres[j]) <= SAME_CENTRE * extent:
                angle = rotation_angle(poses[i, :3, :3].T @ poses[j, :3, :3])
                if angle < SAME_ROTATION:
                    report.errors.append(f"{names[i]} and {names[j]} have the same pose "
                                         "(a copied entry?)")
                else:
                    report.warnings.append(f"{names[i]} and {names[j]} share a centre")
    _, dist = nearest_neighbours(centres)
    median = float(np.median(dist))
    summary = (f"baselines to the nearest camera: min {dist.min():.4f}, median {median:.4f}, "
               f"max {dist.max():.4f} m; rig extent {extent:.4f} m")
    if median > MILLIMETRE_BASELINE:
        report.warnings.append(f"the median baseline is {median:.1f} m: the file looks like "
                               "millimetres (re-import with --scale 0.001)")
    elif median < TINY_BASELINE:
        report.warnings.append(f"the median baseline is {median:.2g} m: the file looks "
                               "unscaled (COLMAP? re-import with --scale or --baseline)")
    return dist, summary


def rig_report(rig: RigCalibration, source: str, output_frame: str | None = None,
               node_cameras: Sequence[str] | None = None) -> Report:
    """Cameras, intrinsics, baselines and geometry of ``rig``, with findings.

    Args:
        rig: The calibration.
        source: Where it came from (file name), for the first line.
        output_frame: The node's ``output_frame``, to compare with the file's ``frame_id``.
        node_cameras: The node's camera list, to compare with the file's cameras.
    """
    report = Report()
    names = list(rig.cam_to_rig)
    report.lines.append(f"{source}: {len(names)} camera(s) in frame {rig.frame_id!r}")
    if not names:
        report.errors.append("the file has no cameras")
        return report
    poses = np.stack([rig.cam_to_rig[n] for n in names])
    dist, summary = _baselines(names, poses, report) if len(names) > 1 else (np.zeros(1), "")
    nearest = nearest_neighbours(poses[:, :3, 3])[0] if len(names) > 1 else [0]
    report.lines.append(f"  {'camera':<20} {'centre [m]':<27} {'looks along':<24} "
                        f"{'nearest, baseline':<30} intrinsics")
    for i, name in enumerate(names):
        neighbour = f"{names[nearest[i]]} {dist[i]:.4f} m" if len(names) > 1 else "-"
        report.lines.append(f"  {name:<20} {_vec(poses[i, :3, 3]):<27} "
                            f"{_vec(poses[i, :3, 2], 2):<24} {neighbour:<30} "
                            f"{_intrinsics_line(rig.intrinsics.get(name))}")
        if name in rig.intrinsics:
            _check_intrinsics(name, rig.intrinsics[name], report)
    if summary:
        report.lines.append(summary)
    if len(names) > 1:
        _geometry(rig, names, poses, report)
    if output_frame is not None and output_frame != rig.frame_id:
        report.warnings.append(f"the file's frame_id is {rig.frame_id!r} but the node "
                               f"publishes in output_frame {output_frame!r}; the poses are "
                               f"taken as {output_frame!r} poses")
    if node_cameras is not None:
        absent = [c for c in node_cameras if c not in rig.cam_to_rig]
        if absent:
            report.warnings.append(f"the node's cameras {', '.join(absent)} are not in the file "
                                   "(no pose for them)")
        extra = [c for c in names if c not in node_cameras]
        if extra:
            report.lines.append(f"not in the node's camera list (unused): {', '.join(extra)}")
    return report


def _first(bag: BagReader, topic: str):
    msg = next(bag.messages([topic]), None)
    return None if msg is None else msg.deserialize()


def _image_size(msg) -> tuple[int, int] | None:
    if hasattr(msg, "width"):
        return int(msg.width), int(msg.height)
    image = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_UNCHANGED)
    return None if image is None else (image.shape[1], image.shape[0])


def _compare_info(name: str, info, calib: CameraCalibration | None, report: Report) -> None:
    K = np.asarray(info.k, np.float64).reshape(3, 3)
    if calib is None:
        report.lines.append(f"  {name}: CameraInfo {info.width}x{info.height} (the file has no "
                            "intrinsics; the node uses these)")
        return
    if (int(info.width), int(info.height)) != (calib.width, calib.height):
        report.errors.append(f"{name}: the bag's CameraInfo is {info.width}x{info.height}, the "
                             f"file's intrinsics are for {calib.width}x{calib.height}")
    elif not np.allclose(K, calib.K, rtol=1e-4, atol=1e-3):
        report.errors.append(f"{name}: the bag's CameraInfo K {K.ravel().round(2).tolist()} "
                             "differs from the file's "
                             f"{np.asarray(calib.K).ravel().round(2).tolist()} (the node uses "
                             "CameraInfo)")
    d_bag, d_file = np.asarray(info.d, np.float64), np.asarray(calib.distortion, np.float64)
    n = max(d_bag.size, d_file.size)
    if not np.allclose(np.pad(d_bag, (0, n - d_bag.size)), np.pad(d_file, (0, n - d_file.size)),
                       atol=1e-6):
        report.warnings.append(f"{name}: the bag's distortion {d_bag.tolist()} differs from the "
                               f"file's {d_file.tolist()}")


def _compare_tf(rig: RigCalibration, transforms: list, report: Report) -> None:
    frames = {f"{n}_optical_frame": n for n in rig.cam_to_rig}
    for t in transforms:
        name = frames.get(t.child_frame_id)
        if name is None:
            continue
        if t.header.frame_id != rig.frame_id:
            report.warnings.append(f"{name}: the bag's /tf_static parent is "
                                   f"{t.header.frame_id!r}, the file's frame is "
                                   f"{rig.frame_id!r}")
        tr, q = t.transform.translation, t.transform.rotation
        pose = rig.cam_to_rig[name]
        dt = float(np.linalg.norm(np.array([tr.x, tr.y, tr.z]) - pose[:3, 3]))
        R = quaternion_to_matrix(np.array([q.x, q.y, q.z, q.w]))
        dr = np.degrees(rotation_angle(R.T @ pose[:3, :3]))
        if dt > TF_TRANSLATION_M or dr > TF_ROTATION_DEG:
            report.warnings.append(f"{name}: the bag's /tf_static pose differs from the file by "
                                   f"{dt:.4f} m and {dr:.2f} deg")


def bag_report(rig: RigCalibration, bag_path: Path, params: dict) -> Report:
    """Whether the bag's images, CameraInfo and /tf_static agree with ``rig``.

    ``params`` are the node's parameters (topic templates ``image_topic``,
    ``camera_info_topic``). Raises :class:`threer_ros.data.rosbag.BagError` for an unreadable
    bag.
    """
    report = Report()
    report.lines.append(f"bag {bag_path}:")
    topics = {t.name for t in bag_info(bag_path).topics}
    before, _, after = absolute_topic(params["image_topic"], "{camera}").partition("{camera}")
    pattern = re.compile(f"^{re.escape(before)}(.+?){re.escape(after)}(?:/compressed)?$")
    in_bag = {m.group(1) for m in map(pattern.match, topics) if m}
    with BagReader(bag_path) as bag:
        for name in rig.cam_to_rig:
            topic = absolute_topic(params["image_topic"], name)
            image_topic = topic if topic in topics else topic + "/compressed"
            if image_topic not in topics:
                report.errors.append(f"{name}: the bag has no images on {topic} (camera names "
                                     "or the config's image_topic differ)")
                continue
            calib = rig.intrinsics.get(name)
            info = None
            if params.get("camera_info_topic"):
                info_topic = absolute_topic(params["camera_info_topic"], name)
                info = _first(bag, info_topic) if info_topic in topics else None
            if info is not None:
                _compare_info(name, info, calib, report)
                if calib is None:
                    calib = CameraCalibration(np.asarray(info.k).reshape(3, 3), int(info.width),
                                               int(info.height))
            elif calib is None:
                report.errors.append(f"{name}: no intrinsics: neither the file nor the bag's "
                                     "CameraInfo gives them")
            size = _image_size(_first(bag, image_topic))
            if size is not None and calib is not None and size != (calib.width, calib.height):
                report.errors.append(f"{name}: the bag's images are {size[0]}x{size[1]}, its "
                                     f"calibration is for {calib.width}x{calib.height}")
            report.lines.append(f"  {name}: images on {image_topic}"
                                f"{'' if size is None else f' {size[0]}x{size[1]}'}"
                                f"{', CameraInfo' if info is not None else ''}")
        extra = sorted(in_bag - set(rig.cam_to_rig))
        if extra:
            report.warnings.append(f"the bag has images of camera(s) {', '.join(extra)}, which "
                                   "the file does not have")
        if TF_STATIC in topics:
            transforms = [t for m in bag.messages([TF_STATIC]) for t in m.deserialize().transforms]
            _compare_tf(rig, transforms, report)
    return report
