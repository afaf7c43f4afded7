"""The capture node: N camera topics in, a fused PointCloud2, camera TF frames and diagnostics out.

A thin adapter (DESIGN.md): messages -> :class:`Frame` -> synchroniser -> a backend on a worker
thread -> :class:`Reconstruction` -> messages. All settings are ROS parameters whose defaults
come from ``config/capture.yaml``.

Topics (names from the parameters):

* in: ``<camera>/image_raw`` (``Image``, or ``CompressedImage`` on ``.../compressed``) and
  ``<camera>/camera_info``, sensor-data QoS;
* out (reliable): ``points`` (PointCloud2 in ``output_frame``: x, y, z, rgb, confidence),
  ``camera_poses`` (PoseArray), ``/tf`` or ``/tf_static`` (``output_frame`` ->
  ``<camera>_optical_frame``; static when the poses are the calibration), ``/diagnostics``.

With ``rig_calibration: tf`` the camera poses are read from ``/tf_static`` (transforms
``output_frame -> <camera>_optical_frame`` published by the rig) instead of a file, and the
node does not publish them again.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseArray
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header, String
from tf2_msgs.msg import TFMessage

from threer_ros.config import read_parameters
from threer_ros.data.calibration import RigCalibration, load_rig_calibration
from threer_ros.pipeline.backends import (BackendOptions, make_reconstructor,
                                         options_from_parameters, resolve_device)
from threer_ros.pipeline.compare import Comparison, CompareReconstructor
from threer_ros.pipeline.frames import FramePreparer
from threer_ros.pipeline.types import CameraCalibration, Frame, FrameSet, Reconstruction
from threer_ros.ros.convert import (ImageDecodeError, camera_info_to_calibration, cloud_to_msg,
                                    image_from_msg, pose_array_msg, transform_msgs,
                                    transform_to_matrix)
from threer_ros.ros.sync import FrameSynchronizer
from threer_ros.ros.worker import LatestSetWorker

#: Name of the node's pipeline status in ``/diagnostics`` (counters, stage timings, latency).
PIPELINE_STATUS = "threer_ros: pipeline"


@dataclass(frozen=True)
class NodeSettings:
    """The node's parameters (documented in ``config/capture.yaml``)."""

    cameras: tuple[str, ...]
    image_topic: str
    camera_info_topic: str
    image_transport: str
    image_reliability: str
    rig_calibration: str
    sync_tolerance: float
    sync_max_delay: float
    min_cameras: int
    max_rate: float
    backend: str
    compare_backends: str
    output_frame: str
    max_points: int
    cloud_topic: str
    poses_topic: str
    options: BackendOptions = BackendOptions()

    @classmethod
    def declare(cls, node: Node) -> "NodeSettings":
        """Declare every parameter on ``node`` (defaults from the config file) and read them;
        the backend options are the parameters named after :class:`BackendOptions` fields."""
        defaults = read_parameters()
        values: dict[str, Any] = {}
        names = [f.name for f in fields(cls) if f.name != "options"]
        for name in names + [f.name for f in fields(BackendOptions)]:
            values[name] = node.declare_parameter(name, defaults[name]).value
        values["cameras"] = tuple(values["cameras"])
        values["options"] = options_from_parameters(values)
        for f in fields(BackendOptions):
            del values[f.name]
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise ``ValueError`` naming the parameter when a value is unusable."""
        if not self.cameras or len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"parameter 'cameras' must list distinct names, got {self.cameras}")
        if self.image_transport not in ("raw", "compressed"):
            raise ValueError(f"parameter 'image_transport' is {self.image_transport!r}: "
                             "use raw or compressed")
        if self.image_reliability not in ("best_effort", "reliable"):
            raise ValueError(f"parameter 'image_reliability' is {self.image_reliability!r}: "
                             "use best_effort or reliable")
        if not 1 <= self.min_cameras <= len(self.cameras):
            raise ValueError(f"parameter 'min_cameras' = {self.min_cameras} must be between 1 "
                             f"and the number of cameras ({len(self.cameras)})")
        if self.sync_tolerance <= 0 or self.sync_max_delay < 0:
            raise ValueError("parameters 'sync_tolerance' (> 0) and 'sync_max_delay' (>= 0) are "
                             "in seconds")

    @property
    def backends(self) -> list[str]:
        """The primary backend, then the compared ones (``compare_backends``)."""
        extra = [b.strip() for b in self.compare_backends.split(",") if b.strip()]
        return [self.backend] + [b for b in extra if b != self.backend]

    def topic(self, template: str, camera: str) -> str:
        return template.replace("{camera}", camera)

    def camera_qos(self) -> QoSProfile:
        """QoS of the image and CameraInfo subscriptions: best effort, keep last 5 (sensor
        data), or with ``image_reliability: reliable`` reliable, keep last 1 (each camera's
        newest image, no backlog when the node falls behind); volatile."""
        return QoSProfile(depth=1 if self.image_reliability == "reliable" else 5,
                          history=HistoryPolicy.KEEP_LAST,
                          durability=DurabilityPolicy.VOLATILE,
                          reliability=ReliabilityPolicy.RELIABLE
                          if self.image_reliability == "reliable"
                          else ReliabilityPolicy.BEST_EFFORT)


@dataclass
class CameraStats:
    """Per-camera input counters for /diagnostics."""

    received: int = 0
    rejected: int = 0
    last_error: str = ""
    arrivals: list[float] = field(default_factory=list)  # monotonic seconds, last 30

    def arrived(self, now: float) -> None:
        self.received += 1
        self.arrivals.append(now)
        del self.arrivals[:-30]

    def rate_hz(self, now: float) -> float:
        """Images per second over the last arrivals; 0 once the camera has been silent for
        three of its intervals and at least 5 s (so slow-triggered rigs still count as live)."""
        if len(self.arrivals) < 2:
            return 0.0
        period = (self.arrivals[-1] - self.arrivals[0]) / (len(self.arrivals) - 1)
        if now - self.arrivals[-1] > max(5.0, 3.0 * period):
            return 0.0
        return 1.0 / max(period, 1e-9)


def _stamp_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _stamp_msg(stamp_ns: int) -> Time:
    return Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)


def _latched(depth: int) -> QoSProfile:
    """Reliable, transient-local QoS: what tf2 uses for ``/tf_static``."""
    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL,
                      history=HistoryPolicy.KEEP_LAST)


class CaptureNode(Node):
    """Reconstruction node; see the module docstring for topics and frames."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("threer_capture", **kwargs)
        self.settings = NodeSettings.declare(self)
        s = self.settings
        self._lock = threading.Lock()
        self._rig: RigCalibration | None = None
        self._poses_from_tf = s.rig_calibration == "tf"
        if self._poses_from_tf:
            self._rig = RigCalibration(s.output_frame, {}, {})
        elif s.rig_calibration:
            self._rig = load_rig_calibration(s.rig_calibration)
        self._camera_info: dict[str, CameraCalibration] = {}
        self._stats = {c: CameraStats() for c in s.cameras}
        self._preparer = FramePreparer()
        self._sync = FrameSynchronizer(s.cameras, tolerance_ns=int(s.sync_tolerance * 1e9),
                                       min_cameras=s.min_cameras,
                                       max_delay_ns=int(s.sync_max_delay * 1e9))
        self._last_recon: Reconstruction | None = None
        self._last_missing: tuple[str, ...] = ()
        self._last_latency_s = float("nan")
        self._last_overhead_s = float("nan")     # latency minus the backend's own time
        self._published_points = 0
        self._static: dict[str, object] = {}   # child frame -> TransformStamped sent latched
        self._last_transforms: list = []
        self._warned: set[tuple[str, str]] = set()
        self._backend_error = ""
        self._reconstructor = None
        self._comparison: Comparison | None = None
        try:
            options = replace(s.options, device=resolve_device(s.options.device))
            built = {name: make_reconstructor(name, options) for name in s.backends}
            self._reconstructor = built[s.backend] if len(built) == 1 \
                else CompareReconstructor(built)
        except (ValueError, OSError, RuntimeError) as exc:
            self._backend_error = f"backend {', '.join(s.backends)} unavailable: {exc}"
            self.get_logger().error(self._backend_error)

        reliable = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE,
                              history=HistoryPolicy.KEEP_LAST)
        latched = _latched(depth=1)
        self._cloud_pub = self.create_publisher(PointCloud2, s.cloud_topic, reliable)
        self._poses_pub = self.create_publisher(PoseArray, s.poses_topic, reliable)
        self._tf_pub = self.create_publisher(TFMessage, "/tf", QoSProfile(depth=100))
        self._tf_static_pub = self.create_publisher(TFMessage, "/tf_static", latched)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics",
                                               QoSProfile(depth=10))
        self._compare_pubs = {
            name: self.create_publisher(PointCloud2, f"{s.cloud_topic}/{name}", reliable)
            for name in s.backends[1:]}
        self._comparison_pub = self.create_publisher(String, "comparison", reliable) \
            if self._compare_pubs else None
        for camera in s.cameras:
            self._subscribe(camera)
        if self._poses_from_tf:
            self.create_subscription(TFMessage, "/tf_static", self._on_tf_static,
                                     _latched(depth=100))
        self._worker: LatestSetWorker = LatestSetWorker(
            self._reconstruct, self._publish, self._report_failure, max_rate=s.max_rate)
        self.create_timer(1.0, self._on_timer)
        self.get_logger().info(
            f"reconstructing {len(s.cameras)} cameras with backend {s.backend!r} into frame "
            f"{s.output_frame!r}; calibration: {s.rig_calibration or 'CameraInfo only'}")

    # --- inputs ---------------------------------------------------------------------------
    def _subscribe(self, camera: str) -> None:
        s = self.settings
        topic, qos = s.topic(s.image_topic, camera), s.camera_qos()
        if s.image_transport == "compressed":
            self.create_subscription(CompressedImage, topic + "/compressed",
                                     lambda m, c=camera: self._on_image(c, m), qos)
        else:
            self.create_subscription(Image, topic, lambda m, c=camera: self._on_image(c, m), qos)
        if s.camera_info_topic:
            self.create_subscription(CameraInfo, s.topic(s.camera_info_topic, camera),
                                     lambda m, c=camera: self._on_camera_info(c, m), qos)

    def _reject(self, camera: str, reason: str, message: str) -> None:
        """Count a bad message and log it (one line; repeated reasons are throttled)."""
        stats = self._stats[camera]
        stats.rejected += 1
        stats.last_error = message
        if (camera, reason) not in self._warned:
            self._warned.add((camera, reason))
            self.get_logger().error(f"dropped a message from {camera}: {message}")
        else:
            self.get_logger().warning(f"dropped a message from {camera}: {message}",
                                      throttle_duration_sec=10.0)

    def _on_camera_info(self, camera: str, msg: CameraInfo) -> None:
        try:
            calib = camera_info_to_calibration(msg)
        except ValueError as exc:
            self._reject(camera, "camera_info", str(exc))
            return
        if calib is not None:
            self._camera_info[camera] = calib

    def _on_tf_static(self, msg: TFMessage) -> None:
        """Take camera poses ``output_frame -> <camera>_optical_frame`` from the rig's TF."""
        frames = {f"{c}_optical_frame": c for c in self.settings.cameras}
        for t in msg.transforms:
            camera = frames.get(t.child_frame_id)
            if camera is not None and t.header.frame_id == self.settings.output_frame:
                self._rig.cam_to_rig[camera] = transform_to_matrix(t.transform)

    def _calibration(self, camera: str) -> CameraCalibration | None:
        info = self._camera_info.get(camera)
        if self._rig is not None:
            return self._rig.calibration_for(camera, info)
        return info

    def _on_image(self, camera: str, msg: Image | CompressedImage) -> None:
        now = time.monotonic()
        self._stats[camera].arrived(now)
        stamp_ns = _stamp_ns(msg.header.stamp)
        try:
            rgb = image_from_msg(msg)
            frame = self._preparer.prepare(camera, rgb, stamp_ns, self._calibration(camera))
        except (ImageDecodeError, ValueError) as exc:
            self._reject(camera, type(exc).__name__, str(exc))
            return
        for synced in self._sync.add(camera, stamp_ns, frame):
            self._submit(synced, now)

    def _submit(self, synced, arrival: float) -> None:
        frames = tuple(synced.items[c] for c in self.settings.cameras if c in synced.items)
        frames = self._consistent_resolution(frames)
        missing = tuple(c for c in self.settings.cameras if c not in {f.camera for f in frames})
        if len(frames) < self.settings.min_cameras:
            return
        self._last_missing = missing
        if self._reconstructor is None:
            return
        self._worker.submit((FrameSet(frames, synced.stamp_ns, missing), arrival))

    def _consistent_resolution(self, frames: tuple[Frame, ...]) -> tuple[Frame, ...]:
        """Keep the frames with the rig's majority resolution; name and count the others."""
        sizes = [f.image.shape[:2] for f in frames]
        majority = max(set(sizes), key=sizes.count)
        for f, size in zip(frames, sizes):
            if size != majority:
                self._reject(f.camera, "resolution",
                             f"image is {size[1]}x{size[0]} while the other cameras send "
                             f"{majority[1]}x{majority[0]}; excluded from the set")
        return tuple(f for f, size in zip(frames, sizes) if size == majority)

    # --- worker thread --------------------------------------------------------------------
    def _reconstruct(self, item: tuple[FrameSet, float]
                     ) -> tuple[Reconstruction, Comparison | None, float]:
        """The set's reconstruction (and comparison), and the seconds the backend(s) took."""
        started = time.monotonic()
        if isinstance(self._reconstructor, CompareReconstructor):
            comparison = self._reconstructor.compare_set(item[0])
            recon = comparison.reconstructions[self._reconstructor.primary]
        else:
            recon, comparison = self._reconstructor.reconstruct(item[0]), None
        return recon, comparison, time.monotonic() - started

    def _report_failure(self, item: tuple[FrameSet, float], exc: BaseException) -> None:
        if not self.context.ok():  # shutting down: nothing to report to
            return
        self.get_logger().error(f"reconstruction of the set at {item[0].stamp_ns} ns failed: "
                                f"{type(exc).__name__}: {exc}", throttle_duration_sec=5.0)

    def _cloud_msg(self, header: Header, recon: Reconstruction) -> tuple[PointCloud2, int]:
        """The cloud message of ``recon`` (confidence-filtered, within ``max_points``)."""
        s = self.settings
        points, colors, conf = recon.points, recon.colors, recon.confidence
        keep = np.isfinite(points).all(axis=1) & (conf >= s.options.confidence_threshold)
        points, colors, conf = points[keep], colors[keep], conf[keep]
        if len(points) > s.max_points:
            idx = np.random.default_rng(recon.stamp_ns).choice(len(points), s.max_points,
                                                               replace=False)
            idx.sort()
            points, colors, conf = points[idx], colors[idx], conf[idx]
        return cloud_to_msg(header, points, colors, conf), len(points)

    def _publish(self, item: tuple[FrameSet, float],
                 result: tuple[Reconstruction, Comparison | None, float]) -> None:
        if not self.context.ok():  # the job finished after Ctrl-C: nobody to publish to
            return
        s = self.settings
        recon, comparison, backend_s = result
        started = time.perf_counter()
        header = Header(stamp=_stamp_msg(recon.stamp_ns), frame_id=s.output_frame)
        cloud, published = self._cloud_msg(header, recon)
        self._cloud_pub.publish(cloud)
        if comparison is not None:
            self._publish_comparison(header, comparison)
        self._poses_pub.publish(pose_array_msg(header, recon.cam_to_rig))
        transforms = transform_msgs(s.output_frame, [f"{c}_optical_frame" for c in recon.cameras],
                                    recon.cam_to_rig, header.stamp)
        if recon.poses_from_calibration:
            if not self._poses_from_tf:
                self._latch_static(transforms)
        else:
            self._tf_pub.publish(TFMessage(transforms=transforms))
        recon.timings_s["publish"] = time.perf_counter() - started
        with self._lock:
            self._last_transforms = [] if recon.poses_from_calibration else transforms
            self._last_recon = recon
            self._published_points = published
            self._last_latency_s = time.monotonic() - item[1]
            self._last_overhead_s = self._last_latency_s - backend_s
            self._comparison = comparison
        self.get_logger().info(
            f"published {published} points from {len(recon.cameras)} cameras; "
            + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in recon.timings_s.items()))

    def _publish_comparison(self, header: Header, comparison: Comparison) -> None:
        """Each compared backend's cloud on ``<cloud_topic>/<backend>`` and the summary (JSON)
        on ``comparison``."""
        for name, publisher in self._compare_pubs.items():
            if name in comparison.reconstructions:
                publisher.publish(self._cloud_msg(header, comparison.reconstructions[name])[0])
        summary = {"stamp_ns": comparison.reconstructions[self._reconstructor.primary].stamp_ns,
                   "primary": self._reconstructor.primary, "backends": comparison.summary,
                   "errors": comparison.errors}
        self._comparison_pub.publish(String(data=json.dumps(summary, allow_nan=False,
                                                            default=str)))

    def _latch_static(self, transforms: list) -> None:
        """Keep every calibrated camera frame on ``/tf_static``: one latched message holding all
        frames sent so far, re-sent only when a frame is new or moved."""
        changed = False
        for t in transforms:
            old = self._static.get(t.child_frame_id)
            if old is None or old.transform != t.transform:
                self._static[t.child_frame_id] = t
                changed = True
        if changed:
            self._tf_static_pub.publish(TFMessage(transforms=list(self._static.values())))

    # --- diagnostics ----------------------------------------------------------------------
    def _on_timer(self) -> None:
        with self._lock:
            transforms = self._last_transforms
        if transforms:  # keep estimated camera frames alive for late tf2 listeners / RViz
            stamp = self.get_clock().now().to_msg()
            for t in transforms:
                t.header.stamp = stamp
            self._tf_pub.publish(TFMessage(transforms=transforms))
        self._diag_pub.publish(self.diagnostics())

    def diagnostics(self) -> DiagnosticArray:
        """Current status: one pipeline entry and one entry per camera."""
        now = time.monotonic()
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        sync, work = self._sync.stats, self._worker.stats
        with self._lock:
            recon, latency = self._last_recon, self._last_latency_s
            overhead = self._last_overhead_s
        values = {
            "backend": self.settings.backend,
            "sets_completed": sync.completed, "sets_partial": sync.partial,
            "sets_dropped_sync": sync.dropped, "sets_dropped_busy": work.dropped,
            "frames_duplicate": sync.duplicates, "frames_late": sync.late,
            "sync_resets": sync.resets,
            "sets_rate_limited": work.rate_limited, "reconstructions": work.completed,
            "reconstruction_failures": work.failed,
            "last_reconstruction_s": f"{work.last_duration_s:.4f}",
            "missing_cameras_last_set": ",".join(self._last_missing),
            "points_published": self._published_points,
            "end_to_end_latency_s": f"{latency:.4f}",
            "node_overhead_s": f"{overhead:.4f}",
        }
        if recon is not None:
            values.update({f"stage_{k}_s": f"{v:.4f}" for k, v in recon.timings_s.items()})
            values.update({k: f"{v:.6g}" for k, v in recon.info.items()})
        if self._backend_error:
            level, message = DiagnosticStatus.ERROR, self._backend_error
        elif work.failed and (recon is None):
            level, message = DiagnosticStatus.ERROR, "every reconstruction failed so far"
        elif self._last_missing:
            level = DiagnosticStatus.WARN
            message = f"missing cameras: {', '.join(self._last_missing)}"
        else:
            level, message = DiagnosticStatus.OK, "reconstructing"
        array.status.append(self._status(PIPELINE_STATUS, level, message, values))
        for camera, st in self._stats.items():
            rate = st.rate_hz(now)
            level = DiagnosticStatus.OK if rate > 0 and not st.rejected else DiagnosticStatus.WARN
            msg = "receiving" if rate > 0 else "no images"
            if st.rejected:
                msg = f"{st.rejected} messages rejected; last: {st.last_error}"
            array.status.append(self._status(
                f"threer_ros: camera {camera}", level, msg,
                {"rate_hz": f"{rate:.2f}", "received": st.received, "rejected": st.rejected,
                 "has_camera_info": camera in self._camera_info,
                 "has_extrinsics": self._rig is not None and camera in self._rig.cam_to_rig}))
        return array

    def _status(self, name: str, level: bytes, message: str, values: dict) -> DiagnosticStatus:
        return DiagnosticStatus(level=level, name=name, message=message[:500],
                                hardware_id=self.get_name(),
                                values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])

    def destroy_node(self) -> None:
        self._worker.stop()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Entry point of ``capture_node`` / ``ros2 run threer_ros capture_node``."""
    rclpy.init(args=args)
    node = None
    executor = SingleThreadedExecutor()
    try:
        node = CaptureNode()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ValueError as exc:
        print(f"capture_node: {exc}", file=sys.stderr)
        return 2
    finally:
        # The executor first: a stop signal can leave its wait generator suspended holding
        # the node's handle, and destroying the node would then wait for it forever.
        executor.shutdown()
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
