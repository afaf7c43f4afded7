"""The capture node's ROS parameters: declared with descriptors, checked, and changed live.

Defaults and descriptions come from ``config/capture.yaml`` (its comments are the
descriptions); this module adds the one table of what the file cannot say: which parameters
may change while the node runs (:data:`LIVE`; every other one is read-only) and the ranges of
the numeric ones (:data:`RANGES`). Decimal parameters accept whole numbers (a YAML ``0`` or
``ros2 param set ... 0``): they are declared with dynamic typing and checked here instead.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from functools import lru_cache
from typing import Any, Mapping

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import ParameterException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from threer_ros.config import parameter_descriptions, read_parameters
from threer_ros.pipeline.backends import BackendOptions, options_from_parameters
from threer_ros.pipeline.sharing import SetSharing
from threer_ros.pipeline.warmup import WARMUP_MODES

#: Parameters that take effect while the node runs; all others are read-only.
LIVE = frozenset({"max_rate", "sync_tolerance", "sync_max_delay", "min_cameras",
                  "confidence_threshold", "voxel_size", "outlier_neighbours",
                  "outlier_std_ratio", "max_points", "image_bit_depth"})

#: Inclusive (lowest, highest) of the numeric parameters (seconds, metres, pixels, counts).
RANGES: dict[str, tuple[float, float]] = {
    "sync_tolerance": (1e-6, 1.0), "sync_max_delay": (0.0, 10.0), "min_cameras": (1, 1024),
    "max_rate": (0.0, 1000.0), "set_buffer": (1, 64), "worker_count": (1, 256),
    "worker_index": (0, 255), "trigger_rate": (0.0, 1000.0), "image_bit_depth": (9, 16),
    "working_width": (16, 8192), "network_size": (16, 4096), "graph_neighbours": (1, 64),
    "pair_batch": (1, 4096), "alignment_iterations": (0, 100_000), "alignment_lr": (0.0, 1.0),
    "confidence_threshold": (-1.0, 1e6), "voxel_size": (0.0, 1.0),
    "outlier_neighbours": (0, 256), "outlier_std_ratio": (0.0, 100.0),
    "max_points": (1, 100_000_000), "service_timeout": (0.1, 3600.0),
}

#: The fused cloud's filtering: what a live change hands to the running backend.
FUSION = frozenset({"confidence_threshold", "voxel_size", "outlier_neighbours",
                    "outlier_std_ratio", "max_points"})


@dataclass(frozen=True)
class NodeSettings:
    """The node's parameters (documented in ``config/capture.yaml``)."""

    autostart: bool
    warmup_on_configure: str
    cameras: tuple[str, ...]
    image_topic: str
    camera_info_topic: str
    image_transport: str
    image_reliability: str
    rig_calibration: str
    image_bit_depth: int
    sync_tolerance: float
    sync_max_delay: float
    min_cameras: int
    max_rate: float
    worker_count: int
    worker_index: int
    trigger_rate: float
    set_buffer: int
    backend: str
    compare_backends: str
    output_frame: str
    cloud_topic: str
    poses_topic: str
    service_timeout: float
    options: BackendOptions = BackendOptions()

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> "NodeSettings":
        """Settings from parameter values by name (backend options by their field names);
        raises ``ValueError`` naming the parameter when a value is unusable."""
        own = {f.name for f in fields(cls)} - {"options"}
        settings = cls(**{name: values[name] for name in own},
                       options=options_from_parameters(values))
        settings = replace(settings, cameras=tuple(settings.cameras))
        settings.validate()
        return settings

    def updated(self, changes: Mapping[str, Any]) -> "NodeSettings":
        """A copy with ``changes`` (parameter name -> value) applied and validated."""
        own = {f.name for f in fields(self)} - {"options"}
        settings = replace(self, **{k: v for k, v in changes.items() if k in own},
                           options=replace(self.options, **{k: v for k, v in changes.items()
                                                            if k not in own}))
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise ``ValueError`` naming the parameter when a value is unusable."""
        if self.warmup_on_configure not in WARMUP_MODES:
            raise ValueError(f"parameter 'warmup_on_configure' is {self.warmup_on_configure!r}: "
                             f"use {', '.join(WARMUP_MODES)}")
        if not self.cameras or len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"parameter 'cameras' must list distinct names, got {self.cameras}")
        if self.image_transport not in ("raw", "compressed"):
            raise ValueError(f"parameter 'image_transport' is {self.image_transport!r}: "
                             "use raw or compressed")
        if self.image_reliability not in ("best_effort", "reliable"):
            raise ValueError(f"parameter 'image_reliability' is {self.image_reliability!r}: "
                             "use best_effort or reliable")
        if not 0 <= self.worker_index < self.worker_count:
            raise ValueError(f"parameter 'worker_index' = {self.worker_index} must be below "
                             f"'worker_count' = {self.worker_count}")
        if not 1 <= self.min_cameras <= len(self.cameras):
            raise ValueError(f"parameter 'min_cameras' = {self.min_cameras} must be between 1 "
                             f"and the number of cameras ({len(self.cameras)})")

    @property
    def backends(self) -> list[str]:
        """The primary backend, then the compared ones (``compare_backends``)."""
        extra = [b.strip() for b in self.compare_backends.split(",") if b.strip()]
        return [self.backend] + [b for b in extra if b != self.backend]

    def sharing(self) -> SetSharing:
        """This worker's share of the rig's sets."""
        return SetSharing.from_rate(self.worker_index, self.worker_count, self.trigger_rate)

    def topic(self, template: str, camera: str) -> str:
        return template.replace("{camera}", camera)

    def camera_qos(self) -> QoSProfile:
        """QoS of the image and CameraInfo subscriptions: best effort (sensor data) or, with
        ``image_reliability: reliable``, reliable; keep last 5, volatile.

        Five images a camera ride out a burst in which the executor falls behind: with one,
        each camera independently lost the image the next one overwrote, so that most sets
        came out partial (docs/benchmarks.md, "Image queue depth"); a node that is slower
        than the rig drops whole sets in the worker instead."""
        return QoSProfile(depth=5,
                          history=HistoryPolicy.KEEP_LAST,
                          durability=DurabilityPolicy.VOLATILE,
                          reliability=ReliabilityPolicy.RELIABLE
                          if self.image_reliability == "reliable"
                          else ReliabilityPolicy.BEST_EFFORT)


def _descriptor(name: str, default: Any, description: str) -> ParameterDescriptor:
    descriptor = ParameterDescriptor(name=name, description=description,
                                     read_only=name not in LIVE)
    low, high = RANGES.get(name, (None, None))
    if isinstance(default, float):
        descriptor.dynamic_typing = True       # whole numbers accepted, checked by check_value
        descriptor.additional_constraints = "a number (decimal or whole)"
        if low is not None:
            descriptor.floating_point_range = [FloatingPointRange(from_value=float(low),
                                                                  to_value=float(high))]
    elif isinstance(default, int) and not isinstance(default, bool) and low is not None:
        descriptor.integer_range = [IntegerRange(from_value=int(low), to_value=int(high))]
    return descriptor


@lru_cache(maxsize=1)
def _defaults() -> dict[str, Any]:
    return read_parameters()


def check_value(name: str, value: Any) -> tuple[Any, str]:
    """``(value, "")`` with whole numbers of decimal parameters made float, or ``(None,
    reason)`` when ``value`` has the wrong type or lies outside :data:`RANGES`."""
    if isinstance(_defaults()[name], float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None, f"parameter '{name}' must be a number, got {value!r}"
        value = float(value)
    low, high = RANGES.get(name, (None, None))
    if low is not None and not low <= value <= high:
        return None, f"parameter '{name}' = {value} is outside [{low}, {high}]"
    return value, ""


def declare(node: Node) -> NodeSettings:
    """Declare every parameter on ``node`` (defaults, descriptions and ranges from the config
    file and the tables above) and return the settings; ``ValueError`` names a bad value."""
    defaults = _defaults()
    descriptions = parameter_descriptions()
    values: dict[str, Any] = {}
    names = [f.name for f in fields(NodeSettings) if f.name != "options"] + \
        [f.name for f in fields(BackendOptions)]
    for name in names:
        try:
            declared = node.declare_parameter(name, defaults[name],
                                              _descriptor(name, defaults[name],
                                                          descriptions.get(name, ""))).value
        except ParameterException as exc:       # a value of the wrong type or out of range
            raise ValueError(f"parameter '{name}': {exc}") from None
        values[name], reason = check_value(name, declared)
        if reason:
            raise ValueError(reason)
    return NodeSettings.from_values(values)
