"""Read a local NeRSemble download: calibrated frames of the 16-camera face-capture dome.

Layouts (participant ids are zero-padded to three digits; serials are strings):

* **v2 raw** (``nersemble-data`` download kit)::

      <root>/<PPP>/calibration/camera_params.json
      <root>/<PPP>/sequences/<SEQ>/images/cam_<serial>.mp4     one video per camera

* **benchmark** (``nersemble-benchmark``): the v2 layout below ``<root>/nvs/`` (``root`` may
  also be that ``nvs`` folder), with intrinsics given per serial.
* **v1** (the paper's release)::

      <root>/<PPP>/camera_params.json
      <root>/<PPP>/sequences/<SEQ>/frame_<kkkkk>/images-2x-73fps/cam_<serial>.png

``camera_params.json`` holds ``world_2_cam`` (serial -> 4x4 world-to-camera matrix, OpenCV
camera axes) and ``intrinsics``: one 3x3 matrix shared by all cameras, given for the full
2200 x 3208 (W x H) image (or for the optional ``width``/``height`` keys), or a serial -> 3x3
mapping (benchmark), taken to be at the resolution of the images it comes with.

What the reader returns follows ``threer_ros.pipeline.types``:

* images: H x W x 3 uint8 RGB as decoded, optionally downscaled by an integer factor;
* camera names ``cam_<serial>``, in the dataset's canonical serial order (:data:`SERIALS`);
* :class:`CameraCalibration` per image: ``K`` in pixels of the returned image, with fx, fy, cx,
  cy multiplied by the image's size over the size the intrinsics refer to (the dataset
  authors' convention, no half-pixel shift); no distortion (the authors treat the images as
  pinhole); ``cam_to_rig = inverse(world_2_cam)``, i.e. the rig frame is the NeRSemble world
  frame, in metres, and the camera frame the optical frame (x right, y down, z forward);
* timestep ``k`` (frame ``k`` of every video, or folder ``frame_<k>``) at ``k / 73`` seconds
  after the start of the sequence (the rig runs at :data:`FPS`).

Colour correction (``color_calibration.json``) is not applied: it does not change geometry.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from threer_ros.geometry.transforms import invert_pose
from threer_ros.pipeline.types import CameraCalibration, Frame, FrameSet

#: The 16 camera serials in the dataset's canonical index order.
SERIALS = ("222200042", "222200044", "222200046", "222200040", "222200036", "222200048",
           "220700191", "222200041", "222200037", "222200038", "222200047", "222200043",
           "222200049", "222200039", "222200045", "221501007")
#: Frame rate of the capture rig (frames per second).
FPS = 73.0
#: Full sensor resolution in pixels (portrait) that shared intrinsics refer to.
FULL_WIDTH, FULL_HEIGHT = 2200, 3208

_V1_IMAGES = "images-2x-73fps"
_DOWNLOAD_HINT = ("download it with the nersemble-data kit, e.g. `nersemble-data download "
                  "<root> --participant <id> --sequence <name> --assets calibration images`")


class NersembleError(ValueError):
    """A NeRSemble file that is missing or unusable; the message names it and what to do."""


def camera_name(serial: str) -> str:
    """Camera name of ``serial`` in threer_ros (topics, frames): ``cam_<serial>``."""
    return f"cam_{serial}"


def frame_stamp_ns(k: int) -> int:
    """Time of timestep ``k`` after the start of its sequence, in nanoseconds (73 fps)."""
    return round(k * 1e9 / FPS)


def _canonical(serials: Sequence[str]) -> tuple[str, ...]:
    known = [s for s in SERIALS if s in serials]
    return tuple(known + sorted(s for s in serials if s not in SERIALS))


# --- calibration --------------------------------------------------------------------------
@dataclass(frozen=True)
class CameraParams:
    """Contents of a ``camera_params.json``.

    Attributes:
        path: The file.
        world_2_cam: Serial -> 4x4 world-to-camera matrix (OpenCV camera axes, metres).
        intrinsics: Serial -> 3x3 K in pixels of ``reference_size``.
        reference_size: (W, H) the intrinsics refer to; ``None`` when they refer to the
            resolution of the images themselves (per-serial benchmark intrinsics).
    """

    path: Path
    world_2_cam: dict[str, np.ndarray]
    intrinsics: dict[str, np.ndarray]
    reference_size: tuple[int, int] | None

    def calibration(self, serial: str, native_size: tuple[int, int],
                    size: tuple[int, int]) -> CameraCalibration:
        """Calibration of camera ``serial`` for an image of ``size`` (W, H) pixels.

        ``native_size`` (W, H) is the resolution the images are stored at; ``size`` the one they
        were resized to (equal when not downscaled).

        Raises:
            NersembleError: the stored images do not fit the intrinsics.
        """
        K = self.intrinsics[serial]
        (w0, h0), (w, h) = native_size, size
        if self.reference_size is not None:
            ref_w, ref_h = self.reference_size
            if abs(h0 - ref_h * w0 / ref_w) > 1.0:
                raise NersembleError(
                    f"{self.path}: the intrinsics are for {ref_w}x{ref_h} images but camera "
                    f"{serial}'s images are {w0}x{h0} (another aspect ratio); the calibration "
                    "belongs to other images")
            native = w0 / ref_w
        else:
            native = 1.0
            if not (0 < K[0, 2] < w0 and 0 < K[1, 2] < h0):
                raise NersembleError(
                    f"{self.path}: camera {serial}'s principal point ({K[0, 2]:.1f}, "
                    f"{K[1, 2]:.1f}) lies outside its {w0}x{h0} images; the per-camera "
                    "intrinsics belong to another resolution")
        scaled = K.astype(np.float64).copy()
        scaled[0, :] *= native * w / w0
        scaled[1, :] *= native * h / h0
        scaled[2] = (0.0, 0.0, 1.0)
        return CameraCalibration(scaled, w, h, cam_to_rig=invert_pose(self.world_2_cam[serial]))


def _matrix(path: Path, where: str, value, shape: tuple[int, int]) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        array = np.zeros(0)
    if array.shape != shape or not np.all(np.isfinite(array)):
        raise NersembleError(f"{path}: {where} must be a {shape[0]}x{shape[1]} matrix of finite "
                             f"numbers; re-download the calibration ({_DOWNLOAD_HINT})")
    return array


def _world_2_cam(path: Path, serial: str, value) -> np.ndarray:
    T = _matrix(path, f"world_2_cam[{serial!r}]", value, (4, 4))
    R = T[:3, :3]
    if not (np.allclose(T[3], (0, 0, 0, 1)) and np.allclose(R @ R.T, np.eye(3), atol=1e-4)
            and np.linalg.det(R) > 0):
        raise NersembleError(f"{path}: world_2_cam[{serial!r}] is not a rigid transform "
                             "(rotation + translation, last row 0 0 0 1); re-download the "
                             "calibration")
    return T


def _intrinsics(path: Path, where: str, value) -> np.ndarray:
    K = _matrix(path, where, value, (3, 3))
    if K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], (0, 0, 1)):
        raise NersembleError(f"{path}: {where} is not a pinhole matrix [[fx, s, cx], [0, fy, cy],"
                             " [0, 0, 1]] with fx, fy > 0")
    return K


def load_camera_params(path: str | Path) -> CameraParams:
    """Read and check a ``camera_params.json`` (schema in the module docstring).

    Raises:
        NersembleError: the file is missing, not JSON, or lacks/garbles a key (named).
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise NersembleError(f"{path} does not exist; {_DOWNLOAD_HINT}") from None
    except OSError as exc:
        raise NersembleError(f"{path}: cannot read it ({exc.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NersembleError(f"{path}: not valid JSON ({exc}); the download is damaged, "
                             f"re-download the calibration") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("world_2_cam"), dict) \
            or not doc["world_2_cam"]:
        raise NersembleError(f"{path}: expected an object with a non-empty 'world_2_cam' object "
                             "(serial -> 4x4 world-to-camera matrix)")
    poses = {str(s): _world_2_cam(path, str(s), v) for s, v in doc["world_2_cam"].items()}
    if "intrinsics" not in doc:
        raise NersembleError(f"{path}: no 'intrinsics' (a 3x3 matrix, or serial -> 3x3)")
    raw = doc["intrinsics"]
    if isinstance(raw, dict):
        intrinsics = {str(s): _intrinsics(path, f"intrinsics[{s!r}]", v) for s, v in raw.items()}
        reference = None
    else:
        shared = _intrinsics(path, "intrinsics", raw)
        intrinsics = {s: shared for s in poses}
        reference = (FULL_WIDTH, FULL_HEIGHT)
    if "width" in doc or "height" in doc:
        try:
            reference = (int(doc["width"]), int(doc["height"]))
        except (KeyError, TypeError, ValueError):
            raise NersembleError(f"{path}: 'width' and 'height' must both be integers") from None
    lacking = sorted(set(poses) - set(intrinsics))
    if lacking:
        raise NersembleError(f"{path}: no intrinsics for camera(s) {', '.join(lacking)}")
    return CameraParams(path, poses, intrinsics, reference)


# --- images -------------------------------------------------------------------------------
def _rgb(bgr: np.ndarray, downscale: int) -> np.ndarray:
    """Decoded BGR -> RGB, resized by ``1 / downscale`` (area averaging)."""
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if downscale == 1:
        return rgb
    h, w = rgb.shape[:2]
    size = (max(1, round(w / downscale)), max(1, round(h / downscale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


class _Videos:
    """One sequential decoder per camera video (v2 and benchmark layouts)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = tuple(paths)
        self.captures = []
        self.position = 0
        for path in self.paths:
            capture = cv2.VideoCapture(str(path))
            if not capture.isOpened():
                self.close()
                raise NersembleError(f"{path}: cannot be opened as a video (damaged or "
                                     f"incomplete download); re-download it ({_DOWNLOAD_HINT})")
            self.captures.append(capture)

    def frame_count(self) -> int:
        """Number of frames of the first video (the dataset's definition of the length)."""
        return int(self.captures[0].get(cv2.CAP_PROP_FRAME_COUNT))

    def seek(self, k: int) -> None:
        """Decode (and drop) frames until every video is at frame ``k`` (no container seek:
        seeking long-GOP video is slow and can be inexact)."""
        while self.position < k:
            for path, capture in zip(self.paths, self.captures):
                if not capture.grab():
                    raise self._ended(path, self.position)
            self.position += 1

    def read(self) -> list[np.ndarray]:
        """The next frame of every video (BGR, as decoded)."""
        images = []
        for path, capture in zip(self.paths, self.captures):
            ok, image = capture.read()
            if not ok:
                raise self._ended(path, self.position)
            images.append(image)
        self.position += 1
        return images

    @staticmethod
    def _ended(path: Path, k: int) -> NersembleError:
        return NersembleError(f"{path}: the video ends before frame {k}; choose frames "
                              "within the sequence, or re-download a truncated video")

    def close(self) -> None:
        for capture in self.captures:
            capture.release()


@dataclass(frozen=True)
class NersembleSequence:
    """One sequence of one participant in a local download.

    Attributes:
        participant: Participant id, three digits.
        name: Sequence name (e.g. ``EXP-2-eyes``).
        layout: ``v2`` (videos, shared intrinsics), ``benchmark`` (videos, per-camera
            intrinsics) or ``v1`` (per-frame PNGs).
        folder: ``.../sequences/<name>``.
        params: The participant's calibration.
        serials: The cameras read, in canonical order.
    """

    participant: str
    name: str
    layout: str
    folder: Path
    params: CameraParams
    serials: tuple[str, ...]

    @classmethod
    def open(cls, root: str | Path, participant: str | int, sequence: str,
             serials: Sequence[str] | None = None) -> "NersembleSequence":
        """Find participant ``participant``'s ``sequence`` below ``root``.

        Args:
            root: The download folder (for the benchmark: it or its ``nvs`` folder).
            participant: Participant id (``31`` or ``"031"``).
            sequence: Sequence name.
            serials: Cameras to read (default: every camera of the calibration).

        Raises:
            NersembleError: calibration, sequence or a camera's images missing or unusable.
        """
        folder, calib, layout = _participant(Path(root), participant)
        params = load_camera_params(calib)
        seq_folder = folder / "sequences" / sequence
        if not seq_folder.is_dir():
            have = ", ".join(list_sequences(root, participant)) or "none"
            raise NersembleError(f"{seq_folder} does not exist (sequences downloaded for "
                                 f"participant {folder.name}: {have}); {_DOWNLOAD_HINT}")
        wanted = tuple(str(s) for s in serials) if serials else _canonical(list(params.world_2_cam))
        unknown = [s for s in wanted if s not in params.world_2_cam]
        if unknown:
            raise NersembleError(f"{params.path} has no camera {', '.join(unknown)} (it has "
                                 f"{', '.join(_canonical(list(params.world_2_cam)))})")
        result = cls(folder.name, sequence, layout, seq_folder, params, _canonical(wanted))
        if layout != "v1":
            for path in result.video_paths():
                if not path.is_file():
                    raise NersembleError(f"{path} is missing (camera {path.stem[4:]} is in "
                                         f"{params.path}); {_DOWNLOAD_HINT}, or leave the "
                                         "camera out")
        elif not result.timesteps():
            raise NersembleError(f"{seq_folder}: no frame_<k> folders; {_DOWNLOAD_HINT}")
        return result

    @property
    def cameras(self) -> tuple[str, ...]:
        """Camera names (``cam_<serial>``) in the order frames are returned."""
        return tuple(camera_name(s) for s in self.serials)

    def video_paths(self) -> list[Path]:
        """The camera videos (v2 and benchmark layouts), in camera order."""
        return [self.folder / "images" / f"{camera_name(s)}.mp4" for s in self.serials]

    def _png(self, k: int, serial: str) -> Path:
        return self.folder / f"frame_{k:05d}" / _V1_IMAGES / f"{camera_name(serial)}.png"

    def timesteps(self) -> list[int]:
        """Available timesteps: every frame of the first video, or the ``frame_<k>`` folders."""
        if self.layout == "v1":
            found = (re.fullmatch(r"frame_(\d+)", p.name) for p in self.folder.iterdir())
            return sorted(int(m.group(1)) for m in found if m)
        videos = _Videos(self.video_paths()[:1])
        try:
            return list(range(videos.frame_count()))
        finally:
            videos.close()

    def frame_sets(self, start: int = 0, stop: int | None = None, downscale: int = 1
                   ) -> Iterator[FrameSet]:
        """Frame sets of timesteps ``start <= k < stop``, decoded sequentially.

        Every frame's ``stamp_ns`` (and the set's) is :func:`frame_stamp_ns` of its timestep,
        relative to the sequence start.

        Args:
            start, stop: Timestep range (``stop=None``: to the end).
            downscale: Integer factor the images are shrunk by (1 = as stored).

        Raises:
            NersembleError: a range outside the sequence, or a missing/damaged image or video.
        """
        if downscale < 1 or int(downscale) != downscale:
            raise ValueError(f"downscale must be a positive integer, got {downscale}")
        available = self.timesteps()
        if stop is None:
            stop = available[-1] + 1 if available else 0
        wanted = [k for k in available if start <= k < stop]
        if not wanted:
            span = f"{available[0]}..{available[-1]}" if available else "none"
            raise NersembleError(f"{self.folder}: no timesteps in {start}:{stop} (available: "
                                 f"{span})")
        if self.layout == "v1":
            for k in wanted:
                yield self._frame_set(k, [self._read_png(k, s) for s in self.serials], downscale)
            return
        videos = _Videos(self.video_paths())
        try:
            videos.seek(wanted[0])
            for k in wanted:
                yield self._frame_set(k, videos.read(), downscale)
        finally:
            videos.close()

    def _read_png(self, k: int, serial: str) -> np.ndarray:
        path = self._png(k, serial)
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            state = "cannot be decoded as PNG" if path.is_file() else "is missing"
            raise NersembleError(f"{path} {state}; re-download the sequence ({_DOWNLOAD_HINT})")
        return image

    def _frame_set(self, k: int, images: list[np.ndarray], downscale: int) -> FrameSet:
        stamp = frame_stamp_ns(k)
        frames = []
        for serial, bgr in zip(self.serials, images):
            rgb = _rgb(bgr, downscale)
            calib = self.params.calibration(serial, (bgr.shape[1], bgr.shape[0]),
                                            (rgb.shape[1], rgb.shape[0]))
            frames.append(Frame(camera_name(serial), rgb, stamp, calib))
        return FrameSet(tuple(frames), stamp)


# --- discovery ----------------------------------------------------------------------------
def _participant_folders(root: Path) -> list[Path]:
    """Folders that may hold participants: ``root`` and, for the benchmark, ``root/nvs``."""
    root = root.expanduser()
    if not root.is_dir():
        raise NersembleError(f"{root} is not a folder; give the folder a NeRSemble download "
                             "went to")
    return [root] + ([root / "nvs"] if (root / "nvs").is_dir() else [])


def _participant(root: Path, participant: str | int) -> tuple[Path, Path, str]:
    """(participant folder, camera_params.json, layout) of ``participant``."""
    pid = str(participant).zfill(3)
    expected = []
    for base in _participant_folders(root):
        for calib, layout in ((base / pid / "calibration" / "camera_params.json", "v2"),
                              (base / pid / "camera_params.json", "v1")):
            if calib.is_file():
                benchmark = layout == "v2" and base.resolve().name == "nvs"
                return base / pid, calib, "benchmark" if benchmark else layout
            expected.append(str(calib))
    raise NersembleError(f"no calibration for participant {pid}: expected one of "
                         f"{', '.join(expected)}; {_DOWNLOAD_HINT}")


def list_participants(root: str | Path) -> list[str]:
    """Participant ids (three digits) below ``root`` that have a calibration, sorted."""
    found = set()
    for base in _participant_folders(Path(root)):
        for folder in base.iterdir():
            if re.fullmatch(r"\d{3}", folder.name) and (
                    (folder / "calibration" / "camera_params.json").is_file()
                    or (folder / "camera_params.json").is_file()):
                found.add(folder.name)
    return sorted(found)


def list_sequences(root: str | Path, participant: str | int) -> list[str]:
    """Sequence names of ``participant`` that hold images (videos or frame folders), sorted."""
    folder = _participant(Path(root), participant)[0] / "sequences"
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir()
                  if (p / "images").is_dir() or any(p.glob("frame_*")))
