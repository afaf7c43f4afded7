"""Conversions between ROS messages and numpy: images, point clouds, poses, camera info.

The numpy cores (:func:`decode_image`, :func:`pack_cloud`, ...) work on raw fields, so they run
on rclpy messages (``data`` is ``array.array``/``bytes``) and ``rosbags`` dataclasses (``data``
is a numpy array) alike. Message types are imported lazily where a message is built.
"""

from __future__ import annotations

import array
from typing import Any, Sequence

import cv2
import numpy as np

from threer_ros.geometry.transforms import matrix_to_quaternion, quaternion_to_matrix
from threer_ros.pipeline.types import CameraCalibration


class ImageDecodeError(ValueError):
    """An image message that cannot be turned into RGB (the message says why)."""


# encoding -> (channels, dtype bytes, conversion to RGB or None for copy)
_COLOR = {
    "rgb8": (3, 1, None), "bgr8": (3, 1, cv2.COLOR_BGR2RGB),
    "rgba8": (4, 1, cv2.COLOR_RGBA2RGB), "bgra8": (4, 1, cv2.COLOR_BGRA2RGB),
    "mono8": (1, 1, cv2.COLOR_GRAY2RGB),
    "rgb16": (3, 2, None), "bgr16": (3, 2, cv2.COLOR_BGR2RGB),
    "rgba16": (4, 2, cv2.COLOR_RGBA2RGB), "bgra16": (4, 2, cv2.COLOR_BGRA2RGB),
    "mono16": (1, 2, cv2.COLOR_GRAY2RGB),
    # 4:2:2 YUV, two bytes per pixel: ROS "yuv422" is UYVY, "yuv422_yuy2" is YUYV
    "yuv422": (2, 1, cv2.COLOR_YUV2RGB_UYVY), "yuv422_yuy2": (2, 1, cv2.COLOR_YUV2RGB_YUY2),
}
# ROS names the Bayer pattern from the first row, OpenCV from the second: rggb -> BayerBG.
_BAYER = {"rggb": cv2.COLOR_BayerBG2RGB, "bggr": cv2.COLOR_BayerRG2RGB,
          "gbrg": cv2.COLOR_BayerGR2RGB, "grbg": cv2.COLOR_BayerGB2RGB}
SUPPORTED_ENCODINGS = tuple(_COLOR) + tuple(f"bayer_{p}{b}" for p in _BAYER for b in (8, 16))


def _as_bytes(data: Any) -> memoryview:
    return memoryview(data).cast("B") if not isinstance(data, np.ndarray) else \
        memoryview(np.ascontiguousarray(data).view(np.uint8).ravel())


def decode_image(encoding: str, height: int, width: int, step: int, is_bigendian: bool,
                 data: Any, bit_depth: int = 16) -> np.ndarray:
    """Decode raw ``sensor_msgs/Image`` fields to an (H, W, 3) uint8 RGB array.

    16-bit encodings keep their top 8 significant bits: of ``bit_depth`` (9..16) bits, so a
    12-bit sensor's 0..4095 fills 0..255 (larger values saturate); ``step`` padding is honoured.

    Raises:
        ImageDecodeError: unknown encoding, or ``data``/``step`` too short for the header.
    """
    if encoding.startswith("bayer_"):
        pattern, bits = encoding[6:10], encoding[10:]
        if pattern not in _BAYER or bits not in ("8", "16"):
            raise ImageDecodeError(f"unsupported encoding {encoding!r}; supported: "
                                   f"{', '.join(SUPPORTED_ENCODINGS)}")
        channels, nbytes, code = 1, int(bits) // 8, _BAYER[pattern]
    elif encoding in _COLOR:
        channels, nbytes, code = _COLOR[encoding]
    else:
        raise ImageDecodeError(f"unsupported encoding {encoding!r}; supported: "
                               f"{', '.join(SUPPORTED_ENCODINGS)} (or CompressedImage jpeg/png)")
    row = width * channels * nbytes
    buf = _as_bytes(data)
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f"image header says {width}x{height} pixels")
    if encoding.startswith("yuv422") and width % 2:
        raise ImageDecodeError(f"{encoding} pairs pixels and needs an even width, got {width}")
    if step < row:
        raise ImageDecodeError(f"step {step} is smaller than one row of {width} {encoding} "
                               f"pixels ({row} bytes)")
    if len(buf) < step * (height - 1) + row:
        raise ImageDecodeError(f"{encoding} {width}x{height} (step {step}) needs "
                               f"{step * height} bytes but the message has {len(buf)}")
    rows = np.frombuffer(buf, np.uint8, count=step * (height - 1) + row)
    rows = np.lib.stride_tricks.as_strided(rows, (height, row), (step, 1))
    if nbytes == 2:
        dtype = np.dtype(">u2" if is_bigendian else "<u2")
        pixels = np.ascontiguousarray(rows).view(dtype).reshape(height, width, channels)
        pixels = np.minimum(pixels >> (bit_depth - 8), 255).astype(np.uint8)
    else:
        pixels = np.ascontiguousarray(rows).reshape(height, width, channels)
    if code is None:
        return np.ascontiguousarray(pixels)
    return cv2.cvtColor(pixels[..., 0] if channels == 1 else pixels, code)


def decode_compressed(fmt: str, data: Any) -> np.ndarray:
    """Decode a JPEG/PNG ``sensor_msgs/CompressedImage`` to (H, W, 3) uint8 RGB.

    ``fmt`` follows compressed_image_transport (``"rgb8; jpeg compressed bgr8"``): the encoded
    bytes hold BGR unless the part after "compressed" says ``rgb8``. Plain ``"jpeg"``/``"png"``
    means BGR, as cv_bridge writes it.
    """
    encoded = np.frombuffer(_as_bytes(data), np.uint8)
    if encoded.size == 0:
        raise ImageDecodeError(f"empty CompressedImage (format {fmt!r})")
    if "compresseddepth" in fmt.lower().replace(" ", ""):
        raise ImageDecodeError(f"depth images ({fmt!r}) are not camera images")
    image = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    if image is None:
        raise ImageDecodeError(f"CompressedImage (format {fmt!r}, {encoded.size} bytes) could "
                               "not be decoded as JPEG or PNG")
    stored_rgb = fmt.split("compressed")[-1].strip().startswith("rgb") if "compressed" in fmt \
        else False
    # in place, and without the GIL (a numpy flip and copy would hold it for milliseconds)
    return image if stored_rgb else cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)


def encode_compressed(rgb: np.ndarray, kind: str = "jpeg", quality: int = 95) -> bytes:
    """Encode RGB as CompressedImage bytes (format ``"rgb8; <kind> compressed bgr8"``)."""
    ext = {"jpeg": ".jpg", "png": ".png"}[kind]
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if kind == "jpeg" else []
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(rgb[..., ::-1]), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {rgb.shape} image as {kind}")
    return buf.tobytes()


def image_from_msg(msg: Any, bit_depth: int = 16) -> np.ndarray:
    """RGB uint8 array of an ``Image`` or ``CompressedImage`` message (``bit_depth``: see
    :func:`decode_image`)."""
    if hasattr(msg, "format"):
        return decode_compressed(msg.format, msg.data)
    return decode_image(msg.encoding, msg.height, msg.width, msg.step, bool(msg.is_bigendian),
                        msg.data, bit_depth)


def image_to_msg_fields(rgb: np.ndarray, encoding: str = "rgb8") -> dict[str, Any]:
    """Fields of a ``sensor_msgs/Image`` holding ``rgb`` (H, W, 3 uint8) as rgb8 or bgr8."""
    if encoding not in ("rgb8", "bgr8"):
        raise ValueError(f"can only write rgb8 or bgr8, not {encoding!r}")
    pixels = rgb if encoding == "rgb8" else rgb[..., ::-1]
    height, width = rgb.shape[:2]
    return {"height": height, "width": width, "encoding": encoding, "is_bigendian": 0,
            "step": width * 3, "data": np.ascontiguousarray(pixels).tobytes()}


# --- point clouds ---------------------------------------------------------------------------
FLOAT32 = 7  # sensor_msgs/PointField.FLOAT32
CLOUD_FIELDS = (("x", 0), ("y", 4), ("z", 8), ("rgb", 12), ("confidence", 16))
POINT_STEP = 20
#: One point of a packed cloud (:data:`CLOUD_FIELDS`), little-endian.
CLOUD_DTYPE = np.dtype({"names": [name for name, _ in CLOUD_FIELDS],
                        "formats": ["<f4", "<f4", "<f4", "<u4", "<f4"],
                        "offsets": [offset for _, offset in CLOUD_FIELDS],
                        "itemsize": POINT_STEP})


def pack_cloud(points: np.ndarray, colors: np.ndarray, confidence: np.ndarray,
               finite: bool | None = None
               ) -> tuple[list[tuple[str, int, int, int]], int, array.array, bool]:
    """Pack a cloud the way ``sensor_msgs_py.point_cloud2.create_cloud`` and RViz expect.

    Returns ``(fields, point_step, data, is_dense)`` with fields ``(name, offset, datatype,
    count)``: x, y, z, rgb, confidence as little-endian float32; ``rgb`` holds the bits of the
    uint32 ``0x00RRGGBB``. ``data`` is an ``array.array('B')``, the buffer type that a
    ``PointCloud2`` message keeps as it is: the points are written into it once, and building
    the message copies nothing. ``finite``: whether every point is known to be finite (None:
    checked here).
    """
    n = len(points)
    data = array.array("B", [0]) * (n * POINT_STEP)
    record = np.frombuffer(data, CLOUD_DTYPE)
    xyz = np.asarray(points, np.float32)
    record["x"], record["y"], record["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    c = np.asarray(colors, np.uint32)
    record["rgb"] = (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]
    record["confidence"] = np.asarray(confidence, np.float32)
    fields = [(name, offset, FLOAT32, 1) for name, offset in CLOUD_FIELDS]
    dense = bool(np.isfinite(xyz).all()) if finite is None else finite
    return fields, POINT_STEP, data, dense


def unpack_cloud(fields: Sequence[tuple[str, int, int, int]], point_step: int, data: Any,
                 is_bigendian: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of :func:`pack_cloud` for any layout with float32 x, y, z, rgb (and confidence).

    Returns points (P, 3) float32, colors (P, 3) uint8, confidence (P,) float32 (ones when the
    field is absent).
    """
    offsets = {name: offset for name, offset, datatype, _ in fields}
    for name in ("x", "y", "z", "rgb"):
        if name not in offsets:
            raise ValueError(f"point cloud has no '{name}' field (fields: {list(offsets)})")
    end = ">" if is_bigendian else "<"
    names = [n for n in ("x", "y", "z", "rgb", "confidence") if n in offsets]
    dtype = np.dtype({"names": names,
                      "formats": [end + ("u4" if n == "rgb" else "f4") for n in names],
                      "offsets": [offsets[n] for n in names], "itemsize": point_step})
    buf = _as_bytes(data)
    record = np.frombuffer(buf, dtype, count=len(buf) // point_step)
    points = np.stack([record["x"], record["y"], record["z"]], axis=1).astype(np.float32)
    rgb = record["rgb"].astype(np.uint32)
    colors = np.stack([(rgb >> 16) & 255, (rgb >> 8) & 255, rgb & 255], axis=1).astype(np.uint8)
    confidence = (record["confidence"].astype(np.float32) if "confidence" in names
                  else np.ones(len(record), np.float32))
    return points, colors, confidence


def cloud_to_msg(header: Any, points: np.ndarray, colors: np.ndarray, confidence: np.ndarray,
                 finite: bool | None = None):
    """A ``sensor_msgs/PointCloud2`` (unorganised, height 1) of the given cloud (``finite``: as
    :func:`pack_cloud` takes it)."""
    from sensor_msgs.msg import PointCloud2, PointField

    fields, step, data, dense = pack_cloud(points, colors, confidence, finite)
    return PointCloud2(header=header, height=1, width=len(points), is_bigendian=False,
                       point_step=step, row_step=step * len(points), is_dense=dense, data=data,
                       fields=[PointField(name=n, offset=o, datatype=d, count=c)
                               for n, o, d, c in fields])


def filtered_cloud_msg(header: Any, points: np.ndarray, colors: np.ndarray,
                       confidence: np.ndarray, confidence_threshold: float, max_points: int,
                       seed: int) -> Any:
    """:func:`cloud_to_msg` of the finite points with ``confidence >= confidence_threshold``,
    at most ``max_points`` of them (0: no limit; above it an even, ``seed``-ed subset:
    :func:`~threer_ros.geometry.fusion.stratified_subset`)."""
    from threer_ros.geometry.fusion import stratified_subset

    keep = confidence >= confidence_threshold
    finite = np.isfinite(points)
    if not finite.all():            # a whole-array test first: per-row tests cost more
        keep &= finite.all(axis=1)
    if not keep.all():
        points, colors, confidence = points[keep], colors[keep], confidence[keep]
    if 0 < max_points < len(points):
        idx = stratified_subset(len(points), max_points, seed=seed).numpy()
        points, colors, confidence = points[idx], colors[idx], confidence[idx]
    return cloud_to_msg(header, points, colors, confidence, finite=True)


def cloud_from_msg(msg: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points, colours and confidence of a ``PointCloud2`` (see :func:`unpack_cloud`)."""
    fields = [(f.name, f.offset, f.datatype, f.count) for f in msg.fields]
    return unpack_cloud(fields, msg.point_step, msg.data, bool(msg.is_bigendian))


# --- poses ----------------------------------------------------------------------------------
def _pose_parts(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(T[:3, 3], float), matrix_to_quaternion(T[:3, :3])


def transform_msgs(parent_frame: str, child_frames: Sequence[str], cam_to_rig: np.ndarray,
                   stamp: Any) -> list:
    """``geometry_msgs/TransformStamped`` per camera: ``parent_frame -> child`` = camera-to-rig.

    The translation is the camera centre in the parent frame, the rotation the optical frame's
    orientation (quaternion x, y, z, w, normalised).
    """
    from geometry_msgs.msg import TransformStamped

    out = []
    for child, T in zip(child_frames, cam_to_rig):
        t, q = _pose_parts(T)
        msg = TransformStamped()
        msg.header.stamp = stamp
        msg.header.frame_id = parent_frame
        msg.child_frame_id = child
        msg.transform.translation.x, msg.transform.translation.y, msg.transform.translation.z = \
            (float(v) for v in t)
        r = msg.transform.rotation
        r.x, r.y, r.z, r.w = (float(v) for v in q)
        out.append(msg)
    return out


def transform_to_matrix(transform: Any) -> np.ndarray:
    """4x4 pose of a ``geometry_msgs/Transform`` (translation, quaternion x, y, z, w)."""
    t, q = transform.translation, transform.rotation
    pose = np.eye(4)
    pose[:3, :3] = quaternion_to_matrix(np.array([q.x, q.y, q.z, q.w]))
    pose[:3, 3] = (t.x, t.y, t.z)
    return pose


def pose_array_msg(header: Any, cam_to_rig: np.ndarray):
    """``geometry_msgs/PoseArray`` of camera-to-rig poses (in ``header.frame_id``)."""
    from geometry_msgs.msg import Pose, PoseArray

    poses = []
    for T in cam_to_rig:
        t, q = _pose_parts(T)
        pose = Pose()
        pose.position.x, pose.position.y, pose.position.z = (float(v) for v in t)
        pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = \
            (float(v) for v in q)
        poses.append(pose)
    return PoseArray(header=header, poses=poses)


# --- camera info ----------------------------------------------------------------------------
def camera_info_to_calibration(msg: Any) -> CameraCalibration | None:
    """Intrinsics of a ``sensor_msgs/CameraInfo``; ``None`` for an uncalibrated camera (K[0] == 0).

    Binning is applied to K and the size. Raises ``ValueError`` for a malformed message.
    """
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if K[0, 0] == 0:
        return None
    if not np.all(np.isfinite(K)) or msg.width <= 0 or msg.height <= 0:
        raise ValueError(f"CameraInfo with unusable K {K.ravel().tolist()} or size "
                         f"{msg.width}x{msg.height}")
    bx, by = max(int(msg.binning_x), 1), max(int(msg.binning_y), 1)
    K[0] /= bx
    K[1] /= by
    return CameraCalibration(K=K, width=msg.width // bx, height=msg.height // by,
                             distortion=np.asarray(msg.d, dtype=np.float64),
                             distortion_model=str(msg.distortion_model))


def calibration_to_camera_info_fields(calib: CameraCalibration) -> dict[str, Any]:
    """Fields of a monocular ``sensor_msgs/CameraInfo`` for ``calib`` (R = I, P = [K | 0])."""
    K = np.asarray(calib.K, dtype=np.float64)
    P = np.zeros((3, 4))
    P[:, :3] = K
    distortion = np.asarray(calib.distortion, dtype=np.float64)
    return {"width": int(calib.width), "height": int(calib.height),
            "distortion_model": calib.distortion_model or "plumb_bob",
            "d": (distortion if distortion.size else np.zeros(5)).tolist(),
            "k": K.ravel().tolist(), "r": np.eye(3).ravel().tolist(), "p": P.ravel().tolist()}
