"""rosbag2 bags of a camera rig, written and read with ``rosbags`` (pure Python, no ROS needed).

A *capture bag* holds what a live rig publishes, on the capture node's topics (the
``image_topic`` / ``camera_info_topic`` templates of ``config/capture.yaml``, made absolute):

* ``/<camera>/image_raw``: ``sensor_msgs/msg/Image``, ``rgb8``; or, compressed,
  ``/<camera>/image_raw/compressed``: ``sensor_msgs/msg/CompressedImage``, JPEG, format
  ``"rgb8; jpeg compressed bgr8"`` (compressed_image_transport's convention);
* ``/<camera>/camera_info``: ``sensor_msgs/msg/CameraInfo`` of that image: K (pixels of the
  image), D empty (pinhole), R = I, P = [K | 0];
* ``/tf_static``: one ``tf2_msgs/msg/TFMessage`` with ``<output_frame> -> <camera>_optical_frame``
  per camera = the camera-to-rig pose (translation in metres, quaternion x, y, z, w), offered
  with reliable, transient-local QoS (what tf2's static broadcaster offers), so that
  ``ros2 bag play`` latches it for late subscribers.

Every message of a frame set carries the set's stamp, as ``header.stamp`` and as the bag's log
time; ``/tf_static`` is written first, at the first set's stamp. Frame ids are
``<camera>_optical_frame``. Stamps are integer nanoseconds.

A bag is a folder ``<name>/`` holding ``metadata.yaml`` and ``<name>.mcap`` (the default
storage since ROS 2 Iron) or ``<name>.db3`` (sqlite3), metadata version 8 (readable by rosbag2
of Jazzy and later; Humble needs ``ros2 bag reindex``). The reader opens such folders and bare
``.mcap`` / ``.db3`` files, and reports missing, truncated or damaged bags as :class:`BagError`.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import numpy as np
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, \
    QosTime
from rosbags.rosbag2 import Reader, StoragePlugin, Writer, WriterError
from rosbags.typesys import Stores, get_typestore

from threer_ros.geometry.transforms import matrix_to_quaternion
from threer_ros.pipeline.types import CameraCalibration, FrameSet

#: Storage plugins a bag can be written with; the first is the default.
STORAGES = ("mcap", "sqlite3")
#: rosbag2 metadata version written (8: rosbag2 of Jazzy; Kilted reads it too).
BAG_VERSION = 8
#: Message definitions used to (de)serialize; identical for these types from Jazzy on.
TYPESTORE = get_typestore(Stores.ROS2_JAZZY)
TF_STATIC = "/tf_static"
_SUFFIX = {".mcap": "mcap", ".db3": "sqlite3"}
_PLUGIN = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
_T = TYPESTORE.types


class BagError(RuntimeError):
    """A bag that cannot be written or read; the message names the file and what to do."""


def absolute_topic(template: str, camera: str) -> str:
    """Topic ``template`` (with ``{camera}``) for ``camera``, as the absolute name bags store."""
    topic = template.replace("{camera}", camera)
    return topic if topic.startswith("/") else "/" + topic


def qos(reliable: bool = True, transient_local: bool = False, depth: int = 10) -> Qos:
    """An offered-QoS record for a bag's topic metadata (keep-last ``depth``, default times)."""
    zero = QosTime(sec=0, nsec=0)
    return Qos(history=QosHistory.KEEP_LAST, depth=depth,
               reliability=QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
               durability=QosDurability.TRANSIENT_LOCAL if transient_local
               else QosDurability.VOLATILE,
               deadline=zero, lifespan=zero, liveliness=QosLiveliness.AUTOMATIC,
               liveliness_lease_duration=zero, avoid_ros_namespace_conventions=False)


def new_bag(out: str | Path, storage: str | None = None) -> Writer:
    """An unopened ``rosbags`` writer of a new bag named ``out``.

    ``run`` makes the folder ``run/``; ``run.mcap`` or ``run.db3`` make the folder ``run/`` too
    and choose the storage (``storage``, if given, must agree). Default storage: mcap.

    Raises:
        BagError: unknown or contradictory storage, or the folder exists.
    """
    out = Path(out)
    implied = _SUFFIX.get(out.suffix)
    if storage is not None and storage not in STORAGES:
        raise BagError(f"unknown bag storage {storage!r}: use one of {', '.join(STORAGES)}")
    if implied and storage and storage != implied:
        raise BagError(f"{out}: the name says {implied} but --storage says {storage}")
    folder = out.with_suffix("") if implied else out
    if folder.exists():
        raise BagError(f"{folder} exists already; choose another name or delete it")
    return Writer(folder, version=BAG_VERSION,
                  storage_plugin=_PLUGIN[storage or implied or STORAGES[0]])


def _header(stamp_ns: int, frame_id: str) -> Any:
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return _T["std_msgs/msg/Header"](stamp=_T["builtin_interfaces/msg/Time"](sec=sec,
                                                                             nanosec=nanosec),
                                     frame_id=frame_id)


def _camera_info(header: Any, calib: CameraCalibration) -> Any:
    K = np.asarray(calib.K, np.float64)
    P = np.zeros((3, 4))
    P[:, :3] = K
    roi = _T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                 do_rectify=False)
    return _T["sensor_msgs/msg/CameraInfo"](
        header=header, height=int(calib.height), width=int(calib.width),
        distortion_model=calib.distortion_model or "plumb_bob",
        d=np.asarray(calib.distortion, np.float64).ravel(), k=K.ravel(), r=np.eye(3).ravel(),
        p=P.ravel(), binning_x=0, binning_y=0, roi=roi)


def _transform(header: Any, child: str, cam_to_rig: np.ndarray) -> Any:
    x, y, z = (float(v) for v in cam_to_rig[:3, 3])
    qx, qy, qz, qw = (float(v) for v in matrix_to_quaternion(cam_to_rig[:3, :3]))
    transform = _T["geometry_msgs/msg/Transform"](
        translation=_T["geometry_msgs/msg/Vector3"](x=x, y=y, z=z),
        rotation=_T["geometry_msgs/msg/Quaternion"](x=qx, y=qy, z=qz, w=qw))
    return _T["geometry_msgs/msg/TransformStamped"](header=header, child_frame_id=child,
                                                    transform=transform)


class CaptureBagWriter:
    """Writes frame sets into a new capture bag (format in the module docstring).

    Use as a context manager; if the block raises, the partial bag is deleted.

    Args:
        out: Bag name (see :func:`new_bag`).
        cameras: Camera names, in rig order.
        image_topic, camera_info_topic: Topic templates with ``{camera}`` (as in the config);
            an empty ``camera_info_topic`` writes no CameraInfo.
        output_frame: Parent frame of the camera frames on ``/tf_static``.
        compressed: Write JPEG ``CompressedImage`` on ``<image_topic>/compressed``.
        storage: ``mcap`` or ``sqlite3`` (default: from the name, else mcap).
        jpeg_quality: JPEG quality 0..100 when compressed.
    """

    def __init__(self, out: str | Path, cameras: Sequence[str], *,
                 image_topic: str = "{camera}/image_raw",
                 camera_info_topic: str = "{camera}/camera_info", output_frame: str = "rig",
                 compressed: bool = False, storage: str | None = None,
                 jpeg_quality: int = 95) -> None:
        self._writer = new_bag(out, storage)
        self.path: Path = self._writer.path
        self.cameras = tuple(cameras)
        self._image_topic, self._info_topic = image_topic, camera_info_topic
        self.output_frame = output_frame
        self.compressed = compressed
        self._quality = jpeg_quality
        self._connections: dict[tuple[str, str], Any] = {}
        self._tf_written = False

    def __enter__(self) -> "CaptureBagWriter":
        try:
            self._writer.open()
        except (WriterError, OSError) as exc:
            raise BagError(f"{self.path}: cannot create the bag ({exc})") from None
        add = self._writer.add_connection
        self._connections[("tf", "")] = add(TF_STATIC, "tf2_msgs/msg/TFMessage",
                                            typestore=TYPESTORE,
                                            offered_qos_profiles=[qos(transient_local=True,
                                                                      depth=1)])
        sensor = [qos(reliable=False, depth=5)]
        image_type = "sensor_msgs/msg/CompressedImage" if self.compressed \
            else "sensor_msgs/msg/Image"
        for camera in self.cameras:
            if self._info_topic:
                self._connections[("info", camera)] = add(
                    absolute_topic(self._info_topic, camera), "sensor_msgs/msg/CameraInfo",
                    typestore=TYPESTORE, offered_qos_profiles=sensor)
            topic = absolute_topic(self._image_topic, camera)
            self._connections[("image", camera)] = add(
                topic + "/compressed" if self.compressed else topic, image_type,
                typestore=TYPESTORE, offered_qos_profiles=sensor)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._writer.close()
            return
        self._writer.abort()
        shutil.rmtree(self.path, ignore_errors=True)

    def _write(self, key: tuple[str, str], stamp_ns: int, msg: Any) -> None:
        conn = self._connections[key]
        self._writer.write(conn, stamp_ns, TYPESTORE.serialize_cdr(msg, conn.msgtype))

    def write_set(self, frames: FrameSet, stamp_ns: int) -> None:
        """Write one frame set, every message stamped ``stamp_ns`` (ns); the first call also
        writes ``/tf_static`` from the frames' ``cam_to_rig`` poses (cameras without one have
        no static frame).

        Raises:
            BagError: a frame of a camera the bag was not made for.
        """
        unknown = [f.camera for f in frames.frames if f.camera not in self.cameras]
        if unknown:
            raise BagError(f"{self.path}: camera(s) {', '.join(unknown)} not among the bag's "
                           f"cameras {', '.join(self.cameras)}")
        if not self._tf_written:
            posed = [f for f in frames.frames
                     if f.calibration is not None and f.calibration.cam_to_rig is not None]
            tf_header = _header(stamp_ns, self.output_frame)
            self._write(("tf", ""), stamp_ns, _T["tf2_msgs/msg/TFMessage"](transforms=[
                _transform(tf_header, f"{f.camera}_optical_frame", f.calibration.cam_to_rig)
                for f in posed]))
            self._tf_written = True
        for frame in frames.frames:
            header = _header(stamp_ns, f"{frame.camera}_optical_frame")
            if self._info_topic and frame.calibration is not None:
                self._write(("info", frame.camera), stamp_ns,
                            _camera_info(header, frame.calibration))
            self._write(("image", frame.camera), stamp_ns, self._image_msg(header, frame.image))

    def _image_msg(self, header: Any, rgb: np.ndarray) -> Any:
        if self.compressed:
            ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]),
                                   [cv2.IMWRITE_JPEG_QUALITY, self._quality])
            if not ok:
                raise BagError(f"{self.path}: OpenCV could not JPEG-encode a {rgb.shape} image")
            return _T["sensor_msgs/msg/CompressedImage"](
                header=header, format="rgb8; jpeg compressed bgr8", data=buf.ravel())
        height, width = rgb.shape[:2]
        return _T["sensor_msgs/msg/Image"](
            header=header, height=height, width=width, encoding="rgb8", is_bigendian=0,
            step=width * 3, data=np.ascontiguousarray(rgb, np.uint8).ravel())


# --- reading ------------------------------------------------------------------------------
@dataclass(frozen=True)
class TopicInfo:
    """One topic of a bag.

    Attributes:
        name: Topic name.
        msgtype: Message type, e.g. ``sensor_msgs/msg/Image``.
        count: Number of messages.
        latched: Offered with transient-local durability (``/tf_static``-like).
    """

    name: str
    msgtype: str
    count: int
    latched: bool


@dataclass(frozen=True)
class BagInfo:
    """What a bag holds: its topics and its time span (log times, nanoseconds)."""

    path: Path
    storage: str
    topics: tuple[TopicInfo, ...]
    message_count: int
    start_ns: int
    end_ns: int

    @property
    def duration_ns(self) -> int:
        """Time from the first to the last message (ns)."""
        return max(0, self.end_ns - self.start_ns)

    def topic(self, name: str) -> TopicInfo | None:
        """The topic called ``name``, if the bag has it."""
        return next((t for t in self.topics if t.name == name), None)


@dataclass(frozen=True)
class BagMessage:
    """One message: ``topic``, ``msgtype``, ``stamp_ns`` (log time) and the CDR bytes."""

    topic: str
    msgtype: str
    stamp_ns: int
    raw: bytes
    bag: Path

    def deserialize(self) -> Any:
        """The message as a ``rosbags`` dataclass (fields as in the .msg; arrays as numpy).

        Raises:
            BagError: the bytes are not a valid message of its type.
        """
        try:
            return TYPESTORE.deserialize_cdr(self.raw, self.msgtype)
        except KeyError:
            raise BagError(f"{self.bag}: {self.topic} has type {self.msgtype}, which threer_ros "
                           "cannot decode") from None
        except Exception as exc:  # noqa: BLE001 - any decoding failure means damaged bytes
            raise BagError(f"{self.bag}: the {self.topic} message at {self.stamp_ns} ns is "
                           f"damaged ({type(exc).__name__}: {exc}); convert or record the bag "
                           "again") from None


def _damaged(path: Path, exc: BaseException) -> BagError:
    return BagError(f"{path}: cannot read the bag ({type(exc).__name__}: {exc}); it is "
                    "truncated or damaged: convert or record it again")


@contextmanager
def _opened(path: Path) -> Iterator[Reader]:
    if not path.exists():
        raise BagError(f"{path} does not exist (a bag is a folder with metadata.yaml, or a "
                       ".mcap / .db3 file)")
    if path.is_dir() and not (path / "metadata.yaml").is_file():
        raise BagError(f"{path} has no metadata.yaml, so it is not a rosbag2 bag (or the "
                       f"recording was interrupted: `ros2 bag reindex {path}` rebuilds it)")
    try:
        reader = Reader(path)
        reader.open()
    except Exception as exc:  # noqa: BLE001 - rosbags raises many kinds on damaged files
        raise _damaged(path, exc) from None
    try:
        yield reader
    finally:
        reader.close()


def _storage(path: Path) -> str:
    files = [path] if path.is_file() else sorted(path.iterdir())
    return next((_SUFFIX[f.suffix] for f in files if f.suffix in _SUFFIX), "unknown")


def bag_info(path: str | Path) -> BagInfo:
    """Topics, counts and time span of the bag at ``path``.

    Raises:
        BagError: missing, truncated or damaged bag.
    """
    path = Path(path)
    with _opened(path) as reader:
        topics = tuple(
            TopicInfo(name, info.msgtype or "(several types)", info.msgcount,
                      any(q.durability == QosDurability.TRANSIENT_LOCAL
                          for c in info.connections
                          for q in getattr(c.ext, "offered_qos_profiles", ())))
            for name, info in reader.topics.items())
        count = reader.message_count
        start, end = (reader.start_time, reader.end_time - 1) if count else (0, 0)
    return BagInfo(path, _storage(path), topics, count, start, end)


class BagReader:
    """A bag kept open for several reads (context manager).

    Raises:
        BagError: missing, truncated or damaged bag (on entering, or found while reading).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._context = _opened(self.path)
        self._reader: Reader | None = None

    def __enter__(self) -> "BagReader":
        self._reader = self._context.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._context.__exit__(exc_type, exc, tb)
        self._reader = None

    def messages(self, topics: Sequence[str] | None = None, start_ns: int | None = None,
                 stop_ns: int | None = None) -> Iterator[BagMessage]:
        """Messages of ``topics`` (default: all) with ``start_ns <= log time < stop_ns``, in
        log-time order (file order among equal times)."""
        connections = [c for c in self._reader.connections
                       if topics is None or c.topic in topics]
        if not connections:
            return
        messages = self._reader.messages(connections, start=start_ns, stop=stop_ns)
        while True:
            try:
                conn, stamp, raw = next(messages)
            except StopIteration:
                return
            except Exception as exc:  # noqa: BLE001 - as in _opened
                raise _damaged(self.path, exc) from None
            yield BagMessage(conn.topic, conn.msgtype, stamp, bytes(raw), self.path)


def read_messages(path: str | Path, topics: Sequence[str] | None = None,
                  start_ns: int | None = None, stop_ns: int | None = None
                  ) -> Iterator[BagMessage]:
    """Messages of the bag at ``path``, as :meth:`BagReader.messages` selects them.

    Raises:
        BagError: missing, truncated or damaged bag (also when found mid-way).
    """
    with BagReader(path) as bag:
        yield from bag.messages(topics, start_ns, stop_ns)
