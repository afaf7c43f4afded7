"""Other tools' calibrations (Kalibr, OpenCV, COLMAP) to and from our rig calibration (no ROS).

Import = read the tool's file(s) into a :class:`SourceRig` (the file's own cameras, frame and
unit), then :func:`build_rig`: rename the cameras, scale to metres, and express every pose in
the rig frame the user chose. Export writes a :class:`RigCalibration` in the tool's layout.
The conventions of each tool are in its module's docstring and in docs/calibration.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from threer_ros.data.calibration import CalibrationError, RigCalibration
from threer_ros.data.calibration_formats.colmap import read_colmap, write_colmap
from threer_ros.data.calibration_formats.common import SourceRig
from threer_ros.data.calibration_formats.kalibr import read_kalibr, write_kalibr
from threer_ros.data.calibration_formats.opencv import read_opencv, write_opencv
from threer_ros.geometry.rig import mean_pose, rebase

#: Readers by format name; each takes the list of paths (and its own keyword options).
READERS = {"kalibr": read_kalibr, "opencv": read_opencv, "colmap": read_colmap}
#: Writers by format name: ``writer(rig, out, **options)``.
WRITERS = {"kalibr": write_kalibr, "opencv": write_opencv, "colmap": write_colmap}
#: Rig frames that are not a camera: the mean of the cameras, or the file's own frame.
MEAN_FRAME, FILE_FRAME = "mean", "file"
#: Below this definedness (see ``chordal_mean_rotation``) the mean orientation is a warning.
_POORLY_DEFINED = 0.3
_IMAGE_SEGMENTS = ("image_raw", "image", "image_rect", "image_color", "image_mono",
                   "image_rect_color")

__all__ = ["READERS", "WRITERS", "MEAN_FRAME", "FILE_FRAME", "SourceRig", "Baseline",
           "build_rig", "camera_from_topic", "parse_names", "read_source"]


@dataclass(frozen=True)
class Baseline:
    """A known distance between two camera centres: ``metres`` between ``first``, ``second``."""

    first: str
    second: str
    metres: float


def parse_names(text: str) -> list[str] | dict[str, str]:
    """``--names``: ``a,b,c`` (the file's cameras in order) or ``cam0=a,cam1=b`` (a mapping)."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise CalibrationError("--names is empty: give a,b,c or cam0=a,cam1=b")
    if all("=" in item for item in items):
        pairs = [item.split("=", 1) for item in items]
        return {old.strip(): new.strip() for old, new in pairs}
    if any("=" in item for item in items):
        raise CalibrationError(f"--names {text!r} mixes a list and a mapping: give a,b,c or "
                               "cam0=a,cam1=b")
    return items


def camera_from_topic(topic: str) -> str:
    """Camera name from an image topic: the namespace's last segment (``/stereo/left/image_raw``
    -> ``left``; a trailing ``compressed`` and the image segment are dropped)."""
    segments = [s for s in topic.split("/") if s]
    if segments and segments[-1] == "compressed":
        segments.pop()
    if segments and segments[-1] in _IMAGE_SEGMENTS:
        segments.pop()
    if not segments:
        raise CalibrationError(f"topic {topic!r} has no namespace to name its camera after; "
                               "give --names")
    return segments[-1]


def _renamed(source: SourceRig, names: Sequence[str] | Mapping[str, str] | None,
             names_from_topics: bool) -> dict[str, str]:
    """File camera name -> rig camera name."""
    if names_from_topics:
        if names is not None:
            raise CalibrationError("give --names or --names-from-topics, not both")
        missing = [c for c in source.cameras if c not in source.topics]
        if missing:
            raise CalibrationError(f"camera(s) {', '.join(missing)} have no topic in the file; "
                                   "give --names instead")
        mapping = {c: camera_from_topic(source.topics[c]) for c in source.cameras}
    elif isinstance(names, Mapping):
        unknown = sorted(set(names) - set(source.cameras))
        if unknown:
            raise CalibrationError(f"--names maps {', '.join(unknown)}, which the file does not "
                                   f"have; its cameras are {', '.join(source.cameras)}")
        mapping = {c: names.get(c, c) for c in source.cameras}
    elif names is not None:
        if len(names) != len(source.cameras):
            raise CalibrationError(f"--names gives {len(names)} names for the file's "
                                   f"{len(source.cameras)} cameras ({', '.join(source.cameras)})")
        mapping = dict(zip(source.cameras, names))
    else:
        mapping = {c: c for c in source.cameras}
    final = list(mapping.values())
    repeated = sorted({n for n in final if final.count(n) > 1})
    if repeated:
        raise CalibrationError(f"camera name(s) {', '.join(repeated)} would be given to several "
                               "cameras; give distinct --names")
    bad = [n for n in final if not n or any(ch.isspace() or ch == "/" for ch in n)]
    if bad:
        raise CalibrationError(f"camera name(s) {bad} cannot name a TF frame (no spaces or "
                               "slashes); give --names")
    return mapping


def _lookup(mapping: dict[str, str], name: str, option: str) -> str:
    """The file camera called ``name`` (its rig name, or else its name in the file)."""
    for old, new in mapping.items():
        if new == name:
            return old
    if name in mapping:
        return name
    raise CalibrationError(f"{option}: no camera {name!r}; the cameras are "
                           f"{', '.join(mapping.values())}")


def build_rig(source: SourceRig, *, names: Sequence[str] | Mapping[str, str] | None = None,
              names_from_topics: bool = False, rig_frame: str | None = None,
              scale: float | None = None, baseline: Baseline | None = None,
              frame_id: str = "rig") -> tuple[RigCalibration, list[str]]:
    """Our rig calibration from a tool's cameras, and notes for the user.

    Args:
        source: What a reader returned.
        names: New camera names: the file's cameras in order, or a mapping file name -> name.
        names_from_topics: Name cameras after their image topics (Kalibr's ``rostopic``).
        rig_frame: A camera (rig or file name): the rig frame is its optical frame;
            ``mean``: centre = mean camera centre, axes = chordal L2 mean of the camera
            orientations (so z is the mean viewing direction, x right, y down);
            ``file``: the file's own reference frame. Default: the first camera.
        scale: Metres per file unit (e.g. 0.001 for a pattern measured in millimetres).
        baseline: Known distance between two cameras, from which the scale follows.
        frame_id: The rig frame's name in the rig file.

    Raises:
        CalibrationError: bad names, unknown cameras, both or (COLMAP) neither of ``scale``
            and ``baseline``, a non-positive scale, or coincident baseline cameras.
    """
    mapping = _renamed(source, names, names_from_topics)
    notes = list(source.notes)
    if scale is not None and baseline is not None:
        raise CalibrationError("give --scale or --baseline, not both")
    if baseline is not None:
        a = source.cam_to_ref[_lookup(mapping, baseline.first, "--baseline")][:3, 3]
        b = source.cam_to_ref[_lookup(mapping, baseline.second, "--baseline")][:3, 3]
        distance = float(np.linalg.norm(a - b))
        if distance < 1e-12 or baseline.metres <= 0:
            raise CalibrationError(f"--baseline {baseline.first} {baseline.second}: the cameras "
                                   "must be apart in the file and the distance positive")
        scale = baseline.metres / distance
        notes.append(f"scale {scale:.6g} m per file unit (from the {baseline.first}-"
                     f"{baseline.second} baseline)")
    if scale is None:
        if not source.metric:
            raise CalibrationError(
                "a COLMAP model has no metric scale: give --scale S (metres per model unit) "
                "or --baseline CAM_A CAM_B METRES (a measured distance between two cameras)")
        scale = 1.0
    if not np.isfinite(scale) or scale <= 0:
        raise CalibrationError(f"--scale must be a positive number, got {scale}")
    if rig_frame == FILE_FRAME:
        origin = np.eye(4)
        notes.append(f"rig frame {frame_id!r} = the file's own frame ({source.reference})")
    elif rig_frame == MEAN_FRAME:
        origin, definedness = mean_pose(np.stack([source.cam_to_ref[c] for c in source.cameras]))
        if definedness < _POORLY_DEFINED:
            notes.append(f"the cameras' orientations nearly cancel (definedness "
                         f"{definedness:.2f} of 1): the mean orientation is poorly defined; "
                         "consider --rig-frame CAMERA")
    else:
        first = mapping[source.cameras[0]]
        camera = _lookup(mapping, rig_frame or first, "--rig-frame")
        origin = source.cam_to_ref[camera]
        if rig_frame is None:
            notes.append(f"rig frame {frame_id!r} = camera {first}'s optical frame (choose with "
                         "--rig-frame CAMERA|mean|file)")
    poses = rebase(source.cam_to_ref, origin, scale)
    rig = RigCalibration(frame_id, {mapping[c]: poses[c] for c in source.cameras},
                         {mapping[c]: source.intrinsics[c] for c in source.cameras
                          if c in source.intrinsics})
    return rig, notes


def read_source(fmt: str, paths: Sequence[Path], **options) -> SourceRig:
    """Read ``paths`` with the reader of format ``fmt`` (``kalibr``, ``opencv``, ``colmap``)."""
    if fmt not in READERS:
        raise CalibrationError(f"unknown format {fmt!r}: use {', '.join(READERS)}")
    return READERS[fmt]([Path(p) for p in paths], **options)
