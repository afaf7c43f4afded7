"""The capture node: N camera topics in, a fused PointCloud2, camera TF frames and diagnostics out.

A thin adapter (DESIGN.md): messages -> :class:`Frame` -> synchroniser -> a backend on a worker
thread -> :class:`Reconstruction` -> messages. All settings are ROS parameters whose defaults
and descriptions come from ``config/capture.yaml`` (see :mod:`threer_ros.ros.parameters`).

A managed (lifecycle) node: configure loads the calibration and the backend (network weights)
and, as ``warmup_on_configure`` says, warms the backend up on a synthetic set of the rig's
cameras and image sizes (compiling and GPU start-up done before the first live set; nothing
published, not counted), activate subscribes to the cameras, deactivate unsubscribes and
lets the GPU idle, cleanup and shutdown release the backend. With ``autostart: true``
(default) it configures and activates itself at start-up, as a plain node.

Topics (names from the parameters):

* in: ``<camera>/image_raw`` (``Image``, or ``CompressedImage`` on ``.../compressed``) and
  ``<camera>/camera_info``, sensor-data QoS; ``/tf`` and ``/tf_static``;
* out (reliable): ``points`` (PointCloud2 in ``output_frame``: x, y, z, rgb, confidence),
  ``camera_poses`` (PoseArray), ``/tf`` or ``/tf_static`` (``output_frame`` -> each camera's
  frame, the ``frame_id`` of its images; static when the poses are the calibration; a frame
  that another publisher already gives a parent is never published), ``/diagnostics``.

Services under the node's name: ``~/reconstruct_now`` and ``~/reconstruct_at`` (a buffered
set, see ``set_buffer``), ``~/save_cloud`` (PLY), ``~/start_session`` / ``~/stop_session``
(record clouds and poses), ``~/reload_calibration``.

With ``rig_calibration: tf`` each camera's pose is the chain ``output_frame -> ... -> camera
frame`` over ``/tf_static`` and ``/tf`` (e.g. a URDF's rig -> cam_link -> cam_optical_frame).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header, String
from std_srvs.srv import Trigger
from tf2_msgs.msg import TFMessage

try:
    from threer_ros_interfaces.srv import ReconstructAt, SaveCloud, StartSession
except ImportError as exc:   # the one interface package of our own: built, not from a registry
    raise ImportError("threer_ros_interfaces (the capture node's services) is not installed: "
                      "run scripts/setup_env.sh, or build interfaces/threer_ros_interfaces "
                      "with colcon and source its install/setup.sh") from exc

from threer_ros.data.calibration import RigCalibration, load_rig_calibration
from threer_ros.data.ply import write_ply
from threer_ros.pipeline.backends import (BackendOptions, device_memory_mib, host_memory_mib,
                                         is_out_of_memory, make_reconstructor,
                                         release_device_memory, resolve_device)
from threer_ros.pipeline.compare import Comparison, CompareReconstructor
from threer_ros.pipeline.frames import FramePreparer
from threer_ros.pipeline.types import (CameraCalibration, Frame, FrameSet, Reconstruction,
                                       Reconstructor)
from threer_ros.pipeline.upload import FrameUploader, host_only, upload_device
from threer_ros.pipeline.warmup import (Warmup, WarmupGeometryError, warm_up,
                                        warmup_frame_set, warmup_wanted)
from threer_ros.ros import parameters
from threer_ros.ros.await_future import wait_for_future
from threer_ros.ros.camera_queues import CameraQueues
from threer_ros.ros.convert import (ImageDecodeError, camera_info_to_calibration, cloud_from_msg,
                                    filtered_cloud_msg, image_from_msg, pose_array_msg,
                                    transform_msgs)
from threer_ros.ros.recording import Recording
from threer_ros.ros.sync import FrameSynchronizer
from threer_ros.ros.tf_listener import TfListener, latched_qos
from threer_ros.ros.worker import LatestSetWorker, WorkerStats

#: The node's default name; its statuses in /diagnostics are named after its full name.
NODE_NAME = "threer_capture"
#: Seconds in which a rejected message keeps a camera's status at WARN.
REJECTION_WINDOW_S = 10.0


def pipeline_status_name(node: str) -> str:
    """Name of the pipeline status (counters, stage timings, latency) of the node whose fully
    qualified name is ``node``."""
    return f"{node}: pipeline"


def camera_status_name(node: str, camera: str) -> str:
    """Name of a camera's status of the node ``node`` (fully qualified name)."""
    return f"{node}: camera {camera}"


#: The pipeline status of a node started with the default name in the root namespace.
PIPELINE_STATUS = pipeline_status_name("/" + NODE_NAME)

#: A job of the worker: the set, its arrival (monotonic s), and the future of a service that
#: asked for it (completed with the number of points published) or None.
Job = tuple[FrameSet, float, "Future[int] | None"]


@dataclass
class CameraStats:
    """Per-camera input counters for /diagnostics (times: monotonic seconds)."""

    received: int = 0
    rejected: int = 0
    last_error: str = ""
    arrivals: list[float] = field(default_factory=list)    # last 30
    rejections: list[float] = field(default_factory=list)  # last 30

    def arrived(self, now: float) -> None:
        self.received += 1
        self.arrivals.append(now)
        del self.arrivals[:-30]

    def rejected_one(self, now: float, message: str) -> None:
        self.rejected += 1
        self.last_error = message
        self.rejections.append(now)
        del self.rejections[:-30]

    def recent_rejections(self, now: float, window_s: float = REJECTION_WINDOW_S) -> int:
        """Messages rejected in the last ``window_s`` seconds."""
        return sum(1 for t in self.rejections if now - t <= window_s)

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


class CaptureNode(LifecycleNode):
    """Reconstruction node; see the module docstring for topics, frames and services."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.settings = parameters.declare(self)
        s = self.settings
        self._lock = threading.Lock()
        self._state = "unconfigured"
        self._rig: RigCalibration | None = None
        self._poses_from_tf = s.rig_calibration == "tf"
        self._camera_info: dict[str, CameraCalibration] = {}
        self._frame_ids: dict[str, str] = {}     # camera -> frame_id of its images
        self._stats = {c: CameraStats() for c in s.cameras}
        self._preparer = FramePreparer()
        self._sync = FrameSynchronizer(s.cameras, tolerance_ns=int(s.sync_tolerance * 1e9),
                                       min_cameras=s.min_cameras,
                                       max_delay_ns=int(s.sync_max_delay * 1e9))
        self._sets: deque[FrameSet] = deque(maxlen=s.set_buffer)   # newest usable sets
        self._sharing = s.sharing()
        #: Sets that other workers reconstruct: counted by trigger as their images arrive (and
        #: are passed over) when sharing by trigger period, else as complete sets.
        self._sets_other_workers = 0
        self._other_triggers: deque[int] = deque(maxlen=64)     # the newest ones counted
        self._camera_subscriptions: list = []
        self._last_recon: Reconstruction | None = None
        self._last_cloud: PointCloud2 | None = None
        self._last_missing: tuple[str, ...] = ()
        self._last_latency_s = float("nan")
        self._last_overhead_s = float("nan")     # latency minus the backend's own time
        self._published_points = 0
        self._static: dict[str, object] = {}   # child frame -> TransformStamped sent latched
        self._own_frames: set[str] = set()      # camera frames this node publishes
        self._warned: set[tuple[str, str]] = set()
        self._backend_error = ""
        self._device = s.options.device
        self._reconstructor = None
        self._uploader: FrameUploader | None = None     # images to the GPU as they arrive
        self._pair_batch = s.options.pair_batch   # pairs a batch the backend last reported
        self._warmup: Warmup | None = None      # the last configure's warm-up, if one ran
        self._warmup_note = ""                  # else why none ran
        self._comparison: Comparison | None = None
        self._recording: Recording | None = None
        #: Why the last configure could not read the rig calibration ("" when it could). A
        #: node that configures itself (``autostart``) stops on it, as on a bad parameter; a
        #: managed one stays unconfigured (missing weights never stop it: /diagnostics says).
        self.calibration_error = ""

        reliable = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE,
                              history=HistoryPolicy.KEEP_LAST)
        self._cloud_pub = self.create_publisher(PointCloud2, s.cloud_topic, reliable)
        self._poses_pub = self.create_publisher(PoseArray, s.poses_topic, reliable)
        self._tf_pub = self.create_publisher(TFMessage, "/tf", QoSProfile(depth=100))
        self._tf_static_pub = self.create_publisher(TFMessage, "/tf_static", latched_qos(1))
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics",
                                               QoSProfile(depth=10))
        self._compare_pubs = {
            name: self.create_publisher(PointCloud2, f"{s.cloud_topic}/{name}", reliable)
            for name in s.backends[1:]}
        self._comparison_pub = self.create_publisher(String, "comparison", reliable) \
            if self._compare_pubs else None
        self._tf = TfListener(self)
        #: Compressed images are decoded (and uploaded to the GPU) on one thread per camera
        #: (camera_queues.py), keeping as many waiting as the image QoS does; the synchroniser
        #: is fed under this lock.
        self._decoders = CameraQueues(depth=s.camera_qos().depth,
                                      on_error=self._decoding_failed)
        self._intake_lock = threading.Lock()
        self._worker: LatestSetWorker = LatestSetWorker(
            self._reconstruct, self._publish, self._report_failure, max_rate=s.max_rate)
        # The services wait for the worker as suspended tasks (await_future): in a group of
        # their own, so that the images (default group) and the wake-up keep being served.
        services = MutuallyExclusiveCallbackGroup()
        self._wake = self.create_guard_condition(lambda: None)
        for srv_type, name, handler in (
                (Trigger, "~/reconstruct_now", self._srv_reconstruct_now),
                (ReconstructAt, "~/reconstruct_at", self._srv_reconstruct_at),
                (SaveCloud, "~/save_cloud", self._srv_save_cloud),
                (StartSession, "~/start_session", self._srv_start_session),
                (Trigger, "~/stop_session", self._srv_stop_session),
                (Trigger, "~/reload_calibration", self._srv_reload_calibration)):
            self.create_service(srv_type, name, handler, callback_group=services)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.create_timer(1.0, self._on_timer)

    # --- lifecycle ------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load the rig calibration, build the backend (network weights) and warm it up
        (:meth:`_warm_up`; the transition answers when it is done); FAILURE (the node stays
        unconfigured, the reason in the log and /diagnostics) when the calibration or the
        backend cannot be loaded. A failing warm-up is reported and the node configures."""
        s = self.settings
        try:
            rig = load_rig_calibration(s.rig_calibration) \
                if s.rig_calibration and not self._poses_from_tf else None
        except (ValueError, OSError) as exc:
            self._backend_error = f"rig calibration {s.rig_calibration!r} unusable: {exc}"
            self.calibration_error = self._backend_error
            self.get_logger().error(self._backend_error)
            return TransitionCallbackReturn.FAILURE
        self.calibration_error = ""
        try:
            options = replace(s.options, device=resolve_device(s.options.device))
            built = {name: make_reconstructor(name, options) for name in s.backends}
        except (ValueError, OSError, RuntimeError) as exc:
            self._backend_error = f"backend {', '.join(s.backends)} unavailable: {exc}"
            self.get_logger().error(self._backend_error)
            return TransitionCallbackReturn.FAILURE
        upload_to = upload_device(s.backends, options.device)
        with self._lock:
            self._rig, self._device, self._backend_error = rig, options.device, ""
            self._uploader = FrameUploader(upload_to) if upload_to else None
        reconstructor = built[s.backend] if len(built) == 1 else CompareReconstructor(built)
        self._warm_up(reconstructor, options)
        with self._lock:
            self._reconstructor = reconstructor
            self._pair_batch = options.pair_batch
        self._state = "inactive"
        self.get_logger().info(
            f"configured: backend {s.backend!r} on {options.device}, {len(s.cameras)} cameras "
            f"into frame {s.output_frame!r}; calibration: {s.rig_calibration or 'CameraInfo only'}"
            f"; warm-up: {self._warmup_values()['warmup']}")
        return TransitionCallbackReturn.SUCCESS

    def _warm_up(self, reconstructor: Reconstructor, options: BackendOptions) -> None:
        """Reconstruct a synthetic set of the rig's cameras and image sizes once, as
        ``warmup_on_configure`` asks (:mod:`threer_ros.pipeline.warmup`), so that the first live
        set finds the network compiled and the GPU started; its result is thrown away (nothing
        published, no reconstruction counted). Logs the time it took, or why there was none,
        and keeps it for /diagnostics."""
        s, log = self.settings, self.get_logger()
        self._warmup = None
        if not warmup_wanted(s.warmup_on_configure, options):
            self._warmup_note = "off" if s.warmup_on_configure == "never" \
                else "not needed (auto: eager on the CPU)"
            return
        frames = self._warmup_frames()
        if frames is None:
            return
        self._warmup_note = "running"
        self._diag_pub.publish(self.diagnostics())      # the timer waits for configure
        height, width = frames.frames[0].image.shape[:2]
        log.info(f"warming up {reconstructor.name} on a synthetic set of {len(frames.frames)} "
                 f"x {width}x{height} images")
        self._warmup = warm_up(reconstructor, frames)
        if self._warmup.error:
            log.error(f"warm-up failed after {self._warmup.seconds:.2f} s: "
                      f"{self._warmup.error}; the live sets will show whether it recurs")
        else:
            log.info(f"warm-up of {self._warmup.shape} done in {self._warmup.seconds:.2f} s ("
                     + ", ".join(f"{k} {v * 1e3:.0f} ms"
                                 for k, v in self._warmup.timings_s.items()) + ")")

    def _warmup_frames(self) -> FrameSet | None:
        """The warm-up set of the cameras' current calibration (rig calibration file,
        CameraInfo, TF), or None, with the reason logged and kept, when their image sizes are
        not known yet."""
        cameras = self.settings.cameras
        try:
            frames = warmup_frame_set(cameras, {c: self._calibration(c) for c in cameras},
                                      self._preparer)
            return replace(frames, frames=tuple(self._uploaded(f) for f in frames.frames))
        except WarmupGeometryError as exc:
            self._warmup_note = f"skipped: {exc}"
            self.get_logger().warning(f"no warm-up at configure: {exc}; the first set compiles "
                                      "the network and starts the GPU (it comes late)")
            return None

    def _warmup_values(self) -> dict[str, str]:
        """The last warm-up in /diagnostics: ``warmup`` (done, failed: why, skipped: why,
        off, running or "" before the first configure), ``warmup_s`` and ``warmup_set``
        (cameras x width x height)."""
        done = self._warmup
        if done is None:
            return {"warmup": self._warmup_note}
        return {"warmup": f"failed: {done.error}" if done.error else "done",
                "warmup_s": f"{done.seconds:.3f}", "warmup_set": done.shape}

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Subscribe to every camera."""
        for camera in self.settings.cameras:
            self._subscribe(camera)
        self._state = "active"
        self.get_logger().info("active: reconstructing incoming sets")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Unsubscribe, drop the pending set, wait for a running reconstruction (at most
        ``service_timeout``) and return the GPU's cached memory."""
        self._pause()
        self._state = "inactive"
        self.get_logger().info("inactive: not taking sets")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release the backend, the calibration, buffered sets and a recording session."""
        self._release()
        self._state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop whatever runs and release everything (from any state)."""
        self._pause()
        self._release()
        self._state = "finalized"
        return TransitionCallbackReturn.SUCCESS

    def _pause(self) -> None:
        for subscription in self._camera_subscriptions:
            self.destroy_subscription(subscription)
        self._camera_subscriptions.clear()
        self._decoders.wait_idle(self.settings.service_timeout)
        self._worker.discard_pending()
        self._worker.wait_idle(self.settings.service_timeout)
        with self._intake_lock:
            self._sync.reset()
        with self._lock:            # kept for ~/reconstruct_at, but not on the GPU meanwhile
            self._sets = deque((host_only(f) for f in self._sets), maxlen=self._sets.maxlen)
        release_device_memory()

    def _release(self) -> None:
        self._worker.wait_idle(self.settings.service_timeout)
        self._close_recording()
        with self._lock:
            self._reconstructor, self._rig, self._last_recon = None, None, None
            self._uploader = None
            self._sets.clear()
        self._warmup, self._warmup_note = None, ""
        self._camera_info.clear()
        release_device_memory()

    # --- parameters -----------------------------------------------------------------------
    def _on_set_parameters(self, changed: list[Parameter]) -> SetParametersResult:
        """Apply live parameters (read-only ones are refused by their descriptors first)."""
        changes: dict[str, Any] = {}
        for parameter in changed:
            if parameter.name not in parameters.LIVE:
                continue
            value, reason = parameters.check_value(parameter.name, parameter.value)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
            changes[parameter.name] = value
        if not changes:
            return SetParametersResult(successful=True)
        try:
            settings = self.settings.updated(changes)
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self.settings = settings
        with self._intake_lock:
            self._sync.tolerance_ns = int(settings.sync_tolerance * 1e9)
            self._sync.max_delay_ns = int(settings.sync_max_delay * 1e9)
            self._sync.min_cameras = settings.min_cameras
        self._worker.set_max_rate(settings.max_rate)
        with self._lock:
            reconstructor = self._reconstructor
        if reconstructor is not None and changes.keys() & parameters.FUSION:
            reconstructor.update_fusion(settings.options)
        self.get_logger().info("parameters changed: " + ", ".join(
            f"{k} = {v}" for k, v in changes.items()))
        return SetParametersResult(successful=True)

    # --- inputs ---------------------------------------------------------------------------
    def _subscribe(self, camera: str) -> None:
        s = self.settings
        topic, qos = s.topic(s.image_topic, camera), s.camera_qos()
        if s.image_transport == "compressed":
            msg_type, topic = CompressedImage, topic + "/compressed"
        else:
            msg_type = Image
        self._camera_subscriptions.append(self.create_subscription(
            msg_type, topic, lambda m, c=camera: self._on_image(c, m), qos))
        if s.camera_info_topic:
            self._camera_subscriptions.append(self.create_subscription(
                CameraInfo, s.topic(s.camera_info_topic, camera),
                lambda m, c=camera: self._on_camera_info(c, m), qos))

    def _reject(self, camera: str, reason: str, message: str) -> None:
        """Count a bad message and log it (one line; repeated reasons are throttled)."""
        self._stats[camera].rejected_one(time.monotonic(), message)
        if (camera, reason) not in self._warned:
            self._warned.add((camera, reason))
            self.get_logger().error(f"dropped a message from {camera}: {message}")
        else:
            self.get_logger().warning(f"dropped a message from {camera}: {message}",
                                      throttle_duration_sec=10.0)

    def _on_camera_info(self, camera: str, msg: CameraInfo) -> None:
        if msg.header.frame_id:         # the camera's frame, like its images' (REP: same frame)
            self._frame_ids[camera] = msg.header.frame_id
        try:
            calib = camera_info_to_calibration(msg)
        except ValueError as exc:
            self._reject(camera, "camera_info", str(exc))
            return
        if calib is not None:
            self._camera_info[camera] = calib

    def _frame_id(self, camera: str) -> str:
        """The camera's frame: the ``frame_id`` of its images (or CameraInfo), else
        ``<camera>_optical_frame``."""
        return self._frame_ids.get(camera) or f"{camera}_optical_frame"

    def _extrinsics(self, camera: str) -> np.ndarray | None:
        """Camera-to-``output_frame`` pose (4x4, metres) from the calibration file or TF."""
        if self._poses_from_tf:
            return self._tf.lookup(self.settings.output_frame, self._frame_id(camera))
        rig = self._rig
        return rig.cam_to_rig.get(camera) if rig is not None else None

    def _calibration(self, camera: str) -> CameraCalibration | None:
        info = self._camera_info.get(camera)
        if self._poses_from_tf:
            pose = self._extrinsics(camera)
            rig = RigCalibration(self.settings.output_frame,
                                 {camera: pose} if pose is not None else {}, {})
        else:
            rig = self._rig
        return rig.calibration_for(camera, info) if rig is not None else info

    def _on_image(self, camera: str, msg: Image | CompressedImage) -> None:
        now = time.monotonic()
        self._stats[camera].arrived(now)
        self._frame_ids[camera] = msg.header.frame_id
        stamp_ns = _stamp_ns(msg.header.stamp)
        if self._sharing.by_image and not self._sharing.owns(stamp_ns):
            self._pass_over(stamp_ns)
            return
        if isinstance(msg, CompressedImage):    # milliseconds of decoding: the camera's thread
            self._decoders.submit(camera, lambda: self._take(camera, msg, stamp_ns, now))
        else:           # here, in order: a thread hop would let cameras overtake each other
            self._take(camera, msg, stamp_ns, now)

    def _pass_over(self, stamp_ns: int) -> None:
        """An image of another worker's set (sharing by trigger period): not decoded or
        synchronised here; its set is counted once."""
        trigger = self._sharing.trigger(stamp_ns)
        if trigger not in self._other_triggers:
            self._other_triggers.append(trigger)
            self._sets_other_workers += 1

    def _take(self, camera: str, msg: Image | CompressedImage, stamp_ns: int,
              arrival: float) -> None:
        """Decode and prepare one image, upload it to the GPU when the backend runs there, and
        give it to the synchroniser (on the executor thread for raw images, on the camera's
        decoding thread for compressed ones). Other workers' images never come here when the
        sets are shared by trigger period (:meth:`_on_image`); shared by hashed stamps, a set's
        owner is known only once it is complete, so every image is uploaded."""
        try:
            rgb = image_from_msg(msg, self.settings.image_bit_depth)
            frame = self._preparer.prepare(camera, rgb, stamp_ns, self._calibration(camera))
        except (ImageDecodeError, ValueError) as exc:
            self._reject(camera, type(exc).__name__, str(exc))
            return
        frame = self._uploaded(frame)
        with self._intake_lock:
            for synced in self._sync.add(camera, stamp_ns, frame):
                self._submit(synced, arrival)

    def _uploaded(self, frame: Frame) -> Frame:
        """``frame`` with its image on the GPU (:mod:`threer_ros.pipeline.upload`) when the
        backend takes it there; as it is otherwise, or when the upload fails (the backend then
        copies the image when it runs; an error other than a full GPU also turns the uploads
        off until the next configure, with the reason in the log)."""
        uploader = self._uploader
        if uploader is None:
            return frame
        try:
            return uploader.upload(frame)
        except Exception as exc:  # noqa: BLE001 - the set goes on from the host image
            if is_out_of_memory(exc):
                self.get_logger().warning(f"no GPU memory to upload an image of {frame.camera}"
                                          " as it arrived; the backend copies it when it runs",
                                          throttle_duration_sec=10.0)
            else:
                self._uploader = None
                self.get_logger().error(f"uploading images as they arrive failed "
                                        f"({type(exc).__name__}: {exc}); the backend copies "
                                        "them when it runs from now on")
            return frame

    def _decoding_failed(self, camera: str, exc: Exception) -> None:
        """An unexpected error on a camera's decoding thread: counted as a rejected image."""
        self._reject(camera, type(exc).__name__, f"decoding failed: {type(exc).__name__}: {exc}")

    def _submit(self, synced, arrival: float) -> None:
        frames = tuple(synced.items[c] for c in self.settings.cameras if c in synced.items)
        frames = self._consistent_resolution(frames)
        missing = tuple(c for c in self.settings.cameras if c not in {f.camera for f in frames})
        if len(frames) < self.settings.min_cameras:
            return
        self._last_missing = missing
        frame_set = FrameSet(frames, synced.stamp_ns, missing)
        with self._lock:
            self._sets.append(frame_set)
            configured = self._reconstructor is not None
        if not self._sharing.owns(synced.stamp_ns):     # another worker's set
            self._sets_other_workers += 1
            return
        if configured:
            self._worker.submit((frame_set, arrival, None))

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

    # --- services (own callback group: they wait for the worker, never for the executor) --
    async def _reconstruct_on_request(self, frame_set: FrameSet | None, not_found: str
                                      ) -> tuple[bool, str, int]:
        """Have the worker reconstruct and publish ``frame_set`` next; (success, message,
        points published), waiting at most ``service_timeout`` while the executor goes on
        receiving images; ``not_found`` is the answer when there is no set."""
        with self._lock:
            configured = self._reconstructor is not None
        if not configured:
            return False, f"the node is {self._state}: configure it first", 0
        if frame_set is None:
            return False, not_found, 0
        future: Future[int] = Future()
        self._worker.submit((frame_set, time.monotonic(), future), requested=True)
        timeout = self.settings.service_timeout
        if not await wait_for_future(future, self._wake, timeout):
            return False, (f"the set at {frame_set.stamp_ns} ns is still being reconstructed "
                           f"after {timeout:g} s; its cloud is published when done"), 0
        try:
            points = future.result()
        except Exception as exc:  # noqa: BLE001 - the reason goes back to the caller
            return False, f"reconstruction of the set at {frame_set.stamp_ns} ns failed: " \
                          f"{type(exc).__name__}: {exc}", 0
        return True, (f"published {points} points from {len(frame_set.frames)} cameras, set "
                      f"at {frame_set.stamp_ns} ns"), points

    async def _srv_reconstruct_now(self, request: Trigger.Request, response: Trigger.Response
                                   ) -> Trigger.Response:
        with self._lock:
            newest = self._sets[-1] if self._sets else None
        response.success, response.message, _ = await self._reconstruct_on_request(
            newest, "no complete set received yet")
        return response

    async def _srv_reconstruct_at(self, request: ReconstructAt.Request,
                                  response: ReconstructAt.Response) -> ReconstructAt.Response:
        wanted = _stamp_ns(request.stamp)
        tolerance = int(self.settings.sync_tolerance * 1e9)
        with self._lock:
            stamps = [f.stamp_ns for f in self._sets]
            match = min(self._sets, key=lambda f: abs(f.stamp_ns - wanted), default=None)
        if match is not None and abs(match.stamp_ns - wanted) > tolerance:
            match = None
        response.success, response.message, response.points = await self._reconstruct_on_request(
            match, f"no buffered set within {tolerance} ns of {wanted} ns; buffered stamps: "
                   f"{stamps or 'none'}")
        return response

    def _srv_save_cloud(self, request: SaveCloud.Request, response: SaveCloud.Response
                        ) -> SaveCloud.Response:
        with self._lock:
            cloud = self._last_cloud
        if cloud is None:
            response.success, response.message = False, "no cloud published yet"
        elif not request.path:
            response.success, response.message = False, "give the PLY file's path"
        else:
            path = Path(request.path).expanduser().resolve()
            try:
                points, colors, confidence = cloud_from_msg(cloud)
                write_ply(path, points, colors, confidence)
                response.success = True
                response.message = (f"wrote {len(points)} points (frame "
                                    f"{cloud.header.frame_id!r}) to {path}")
            except OSError as exc:
                response.success, response.message = False, f"cannot write {path}: {exc}"
        return response

    def _srv_start_session(self, request: StartSession.Request,
                           response: StartSession.Response) -> StartSession.Response:
        with self._lock:
            busy = self._recording
        if busy is not None:
            response.success = False
            response.message = f"a session is recording into {busy.directory}; stop it first"
            return response
        topics = {"sensor_msgs/msg/PointCloud2": self._cloud_pub.topic_name,
                  "geometry_msgs/msg/PoseArray": self._poses_pub.topic_name,
                  "tf2_msgs/msg/TFMessage": "/tf"}
        try:
            recording = Recording(request.directory, request.format or "folder", topics)
        except (ValueError, OSError) as exc:
            response.success, response.message = False, f"cannot start the session: {exc}"
            return response
        with self._lock:
            self._recording = recording
        response.success = True
        response.message = f"recording every reconstruction into {recording.directory} " \
                           f"({recording.format})"
        return response

    def _srv_stop_session(self, request: Trigger.Request, response: Trigger.Response
                          ) -> Trigger.Response:
        summary = self._close_recording()
        response.success = summary is not None
        response.message = summary or "no session is recording"
        return response

    def _close_recording(self) -> str | None:
        """Close the recording session, if any; its summary."""
        with self._lock:
            recording, self._recording = self._recording, None
            return recording.close() if recording is not None else None

    def _srv_reload_calibration(self, request: Trigger.Request, response: Trigger.Response
                                ) -> Trigger.Response:
        path = self.settings.rig_calibration
        if self._poses_from_tf:
            response.success, response.message = True, "poses follow /tf and /tf_static live"
        elif not path:
            response.success = False
            response.message = "no rig_calibration file is set (poses are estimated)"
        elif self._state not in ("inactive", "active"):
            response.success = False
            response.message = f"the node is {self._state}: configure it first"
        else:
            try:
                rig = load_rig_calibration(path)
            except (ValueError, OSError) as exc:
                response.success, response.message = False, f"{path} unusable: {exc}"
                return response
            with self._lock:
                self._rig = rig
            response.success = True
            response.message = f"reloaded {len(rig.cam_to_rig)} camera poses from {path}"
        return response

    # --- worker thread --------------------------------------------------------------------
    def _reconstruct(self, item: Job) -> tuple[Reconstruction, Comparison | None, float]:
        """The set's reconstruction (and comparison), and the seconds the backend(s) took."""
        with self._lock:
            reconstructor = self._reconstructor
        if reconstructor is None:
            raise RuntimeError("the node was cleaned up; configure it again")
        started = time.monotonic()
        if isinstance(reconstructor, CompareReconstructor):
            comparison = reconstructor.compare_set(item[0])
            recon = comparison.reconstructions[reconstructor.primary]
        else:
            recon, comparison = reconstructor.reconstruct(item[0]), None
        return recon, comparison, time.monotonic() - started

    def _report_failure(self, item: Job, exc: BaseException) -> None:
        if item[2] is not None and not item[2].done():
            item[2].set_exception(exc)
        if not self.context.ok():  # shutting down: nothing to report to
            return
        hint = ""
        if is_out_of_memory(exc):          # the next set gets the memory this one cached
            release_device_memory()
            hint = ("; the GPU's cached memory was handed back (the pairwise backends also "
                    "halve pair_batch); if it recurs, lower network_size or the cameras")
        self.get_logger().error(f"reconstruction of the set at {item[0].stamp_ns} ns failed: "
                                f"{type(exc).__name__}: {exc}{hint}", throttle_duration_sec=5.0)

    def _cloud_msg(self, header: Header, recon: Reconstruction) -> tuple[PointCloud2, int]:
        """The cloud message of ``recon`` (confidence-filtered, within ``max_points``: the
        network backends' fusion keeps both already, on the GPU; checked here for every
        backend) and its number of points."""
        options = self.settings.options
        msg = filtered_cloud_msg(header, recon.points, recon.colors, recon.confidence,
                                 options.confidence_threshold, options.max_points,
                                 seed=recon.stamp_ns)
        return msg, msg.width

    def _publish(self, item: Job, result: tuple[Reconstruction, Comparison | None, float]
                 ) -> None:
        """Publish the cloud, poses and camera frames; a requesting service learns the number
        of points published."""
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
        poses = pose_array_msg(header, recon.cam_to_rig)
        self._poses_pub.publish(poses)
        tf = self._publish_frames(recon, header)
        recon.timings_s["publish"] = time.perf_counter() - started
        with self._lock:
            self._last_recon, self._last_cloud = recon, cloud
            self._published_points = published
            self._last_latency_s = time.monotonic() - item[1]
            self._last_overhead_s = self._last_latency_s - backend_s
            self._comparison = comparison
            if self._recording is not None:
                self._recording.write(recon.stamp_ns, {
                    "sensor_msgs/msg/PointCloud2": cloud, "geometry_msgs/msg/PoseArray": poses,
                    "tf2_msgs/msg/TFMessage": tf}, recon.cameras, recon.cam_to_rig,
                    s.output_frame)
        self.get_logger().info(
            f"published {published} points from {len(recon.cameras)} cameras; "
            + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in recon.timings_s.items()))
        self._warn_lowered_pair_batch(recon)
        if item[2] is not None:
            item[2].set_result(published)

    def _warn_lowered_pair_batch(self, recon: Reconstruction) -> None:
        """Say when a pairwise backend lowered its ``pair_batch`` after the GPU ran out of
        memory (it keeps the lower one for every later set)."""
        used = recon.info.get("pair_batch")
        if used is None or int(used) >= self._pair_batch:
            return
        self.get_logger().warning(
            f"the GPU ran out of memory decoding {self._pair_batch} pairs a batch; the backend "
            f"now decodes {int(used)} (set pair_batch:={int(used)} to start there)")
        self._pair_batch = int(used)

    def _publish_frames(self, recon: Reconstruction, header: Header) -> TFMessage:
        """Camera frames ``output_frame -> frame`` at the set's stamp: latched on
        ``/tf_static`` when they are the calibration, else on ``/tf``; frames that another
        publisher already gives a parent are left alone. Returns what was sent."""
        frames = [self._frame_id(c) for c in recon.cameras]
        parents = {frame: self._foreign_parent(frame) for frame in frames}
        chosen = [(frame, pose) for frame, pose in zip(frames, recon.cam_to_rig)
                  if parents[frame] is None]
        skipped = [f"{frame} (parent {parent})" for frame, parent in parents.items()
                   if parent is not None and ("tf", frame) not in self._warned]
        if skipped:
            self._warned.update(("tf", frame) for frame, p in parents.items() if p is not None)
            self.get_logger().info("not publishing camera frames that another publisher "
                                   f"already places: {', '.join(skipped)}")
        transforms = transform_msgs(header.frame_id, [f for f, _ in chosen],
                                    np.array([p for _, p in chosen]).reshape(-1, 4, 4),
                                    header.stamp)
        if recon.poses_from_calibration:
            self._latch_static(transforms)
        elif transforms:
            self._tf_pub.publish(TFMessage(transforms=transforms))
        return TFMessage(transforms=transforms)

    def _foreign_parent(self, frame: str) -> str | None:
        """The parent another publisher gives ``frame``, or None when it has none (then this
        node owns the frame from now on) or this node published it."""
        if frame in self._own_frames:
            return None
        parent = self._tf.parent(frame)
        if parent is None:
            self._own_frames.add(frame)
        return parent

    def _publish_comparison(self, header: Header, comparison: Comparison) -> None:
        """Each compared backend's cloud on ``<cloud_topic>/<backend>`` and the summary (JSON)
        on ``comparison``."""
        for name, publisher in self._compare_pubs.items():
            if name in comparison.reconstructions:
                publisher.publish(self._cloud_msg(header, comparison.reconstructions[name])[0])
        primary = self._reconstructor.primary
        summary = {"stamp_ns": comparison.reconstructions[primary].stamp_ns,
                   "primary": primary, "backends": comparison.summary,
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
        self._diag_pub.publish(self.diagnostics())

    def _pipeline_level(self, work: WorkerStats, recon: Reconstruction | None
                        ) -> tuple[bytes, str]:
        if self._backend_error:
            return DiagnosticStatus.ERROR, self._backend_error
        if self._state != "active":
            return DiagnosticStatus.WARN, f"{self._state} (ros2 lifecycle set to change)"
        if work.failed and recon is None:
            return DiagnosticStatus.ERROR, "every reconstruction failed so far"
        if recon is None and self._warmup is not None and self._warmup.error:
            return DiagnosticStatus.WARN, f"warm-up failed: {self._warmup.error}"
        if recon is None:
            return DiagnosticStatus.WARN, "waiting for images: no set reconstructed yet"
        if self._last_missing:
            return DiagnosticStatus.WARN, f"missing cameras: {', '.join(self._last_missing)}"
        return DiagnosticStatus.OK, "reconstructing"

    def diagnostics(self) -> DiagnosticArray:
        """Current status: one pipeline entry and one entry per camera, named after the node's
        fully qualified name; a camera's hardware_id is its name."""
        now = time.monotonic()
        node = self.get_fully_qualified_name()
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        sync, work = self._sync.stats, self._worker.stats
        with self._lock:
            recon, latency = self._last_recon, self._last_latency_s
            overhead, buffered = self._last_overhead_s, len(self._sets)
            recording = self._recording
        values = {
            "state": self._state, "backend": self.settings.backend,
            "sets_completed": sync.completed, "sets_partial": sync.partial,
            "sets_dropped_sync": sync.dropped, "sets_dropped_busy": work.dropped,
            "frames_duplicate": sync.duplicates, "frames_late": sync.late,
            "sync_resets": sync.resets, "sets_buffered": buffered,
            "worker": f"{self._sharing.worker_index} of {self._sharing.worker_count}",
            "sets_other_workers": self._sets_other_workers,
            "sets_rate_limited": work.rate_limited, "reconstructions": work.completed,
            "reconstruction_failures": work.failed,
            "last_reconstruction_s": f"{work.last_duration_s:.4f}",
            "missing_cameras_last_set": ",".join(self._last_missing),
            "points_published": self._published_points,
            "end_to_end_latency_s": f"{latency:.4f}",
            "node_overhead_s": f"{overhead:.4f}",
            "recording": recording.directory if recording is not None else "",
            **self._warmup_values(),
        }
        if recon is not None:
            values.update({f"stage_{k}_s": f"{v:.4f}" for k, v in recon.timings_s.items()})
            values.update({k: f"{v:.6g}" for k, v in recon.info.items()})
        memory = {**device_memory_mib(self._device), **host_memory_mib()}
        values.update({k: f"{v:.1f}" for k, v in memory.items()})
        level, message = self._pipeline_level(work, recon)
        array.status.append(self._status(pipeline_status_name(node), level, message,
                                         self._device, values))
        for camera, st in self._stats.items():
            rate, recent = st.rate_hz(now), st.recent_rejections(now)
            level = DiagnosticStatus.OK if rate > 0 and not recent else DiagnosticStatus.WARN
            msg = "receiving" if rate > 0 else "no images"
            if recent:
                msg = (f"{recent} messages rejected in the last {REJECTION_WINDOW_S:g} s; "
                       f"last: {st.last_error}")
            array.status.append(self._status(
                camera_status_name(node, camera), level, msg, camera,
                {"rate_hz": f"{rate:.2f}", "received": st.received, "rejected": st.rejected,
                 "dropped_decoding_behind": self._decoders.dropped(camera),
                 "last_rejection": st.last_error, "frame_id": self._frame_id(camera),
                 "has_camera_info": camera in self._camera_info,
                 "has_extrinsics": self._extrinsics(camera) is not None}))
        return array

    def _status(self, name: str, level: bytes, message: str, hardware_id: str,
                values: dict) -> DiagnosticStatus:
        return DiagnosticStatus(level=level, name=name, message=message[:500],
                                hardware_id=hardware_id,
                                values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])

    def destroy_node(self) -> None:
        if hasattr(self, "_worker"):      # not when a bad parameter stopped the constructor
            self._decoders.close(timeout_s=10.0)
            self._worker.stop()
            self._close_recording()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Entry point of ``capture_node`` / ``ros2 run threer_ros capture_node``."""
    rclpy.init(args=args)
    node = None
    # One thread: rclpy's MultiThreadedExecutor costs the image callbacks (measured in
    # docs/benchmarks.md); services that wait for the worker suspend instead of blocking.
    executor = SingleThreadedExecutor()
    try:
        node = CaptureNode()
        if node.settings.autostart:
            if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                node.trigger_activate()
            elif node.calibration_error:    # a mistyped file, like a bad parameter: stop
                raise ValueError(node.calibration_error)
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
