"""Choose a reconstruction backend by name (what the node's ``backend`` parameter selects)."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from threer_ros.geometry.fusion import FusionSettings
from threer_ros.pipeline.types import Reconstructor

#: Backends and what they need, as shown in error messages and ``--help``.
BACKENDS = {
    "mvs": "weight-free calibrated plane-sweep stereo (needs intrinsics and extrinsics)",
    "fast3r": "Fast3R network, all views in one forward (weights: threer-ros weights download "
              "fast3r)",
    "mast3r": "MASt3R network on image pairs + global alignment (weights: threer-ros weights "
              "download mast3r)",
    "pow3r": "Pow3R network on image pairs with calibration priors + global alignment (weights: "
             "threer-ros weights download pow3r)",
}

#: The backends that run a network (all but ``mvs``): they take their images through
#: ``prepare_network_images`` at the network's size, and need weights.
NETWORK_BACKENDS = frozenset({"fast3r", "mast3r", "pow3r"})

#: Backend name -> "module:class" of its reconstructor (imported when chosen).
_IMPLEMENTATIONS = {
    "mvs": "threer_ros.pipeline.mvs:PlaneSweepReconstructor",
    "fast3r": "threer_ros.pipeline.fast3r:Fast3RReconstructor",
    "mast3r": "threer_ros.pipeline.pairwise:MASt3RReconstructor",
    "pow3r": "threer_ros.pipeline.pairwise:Pow3RReconstructor",
}


#: What ``confidence_threshold: -1`` means per backend: the official demos' confidence rules
#: (DUSt3R / Pow3R demos: 3; MASt3R's: 1.5; Fast3R's: the least confident 10 % of each view
#: and views whose best confidence is under 1.5), as ``FusionSettings`` fields.
OFFICIAL_CONFIDENCE = {
    "mvs": {"confidence_threshold": 0.0},
    "fast3r": {"confidence_threshold": 0.0, "view_quantile": 0.1, "min_view_confidence": 1.5},
    "mast3r": {"confidence_threshold": 1.5},
    "pow3r": {"confidence_threshold": 3.0},
}


@dataclass(frozen=True)
class BackendOptions:
    """Settings shared by all backends.

    Attributes:
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        checkpoint: Weights file or folder of a network backend ("" = default cache entry).
        working_width: The ``mvs`` backend (and previews) shrink images to this width
            (pixels); the network backends make their network images from the originals.
        voxel_size: Voxel size (metres) of the fused cloud's down-sampling; 0 disables it.
        confidence_threshold: Points below this confidence are dropped; -1: the backend's
            official rule (:data:`OFFICIAL_CONFIDENCE`).
        network_size: Long side (pixels) of the network images (512 for released weights).
        precision: ``auto`` (CUDA: bf16 trunk with fp32 heads; CPU: fp32), ``fp32``,
            ``bf16-trunk``, ``bf16`` (heads too: faster, less exact) or ``fp16``.
        use_calibration: Use known intrinsics/extrinsics in the network backends.
        alignment: ``auto`` | ``fast`` (calibrated poses fixed) | ``full`` (estimate all).
        pair_graph: Pairs of the pairwise backends: ``complete``, ``knn`` (each camera with its
            ``graph_neighbours`` nearest by rig position, or by index without extrinsics) or
            ``reference`` (every camera with the first).
        graph_neighbours: k of the ``knn`` graph.
        pose_priors: Pow3R's full alignment also gets the calibrated relative poses as priors
            (they partly hide a moved camera; the fast path always gets them).
        shared_focal: Full alignment without known intrinsics estimates one focal length for
            all cameras (a rig of identical cameras and lenses; MASt3R's official
            ``shared_intrinsics``, off upstream) instead of one per camera, unless the
            network's own focal estimates of the views differ by more than
            :data:`~threer_ros.pipeline.pairwise.SHARED_FOCAL_SPREAD` (different lenses).
        clean_depth: MASt3R / Pow3R with ``full`` alignment: drop points that lie in front of
            what another view sees and are less confident (the official demos' depth
            cleaning; :mod:`threer_ros.geometry.depth_cleaning`): ``calibrated`` (on sets whose
            calibration is used), ``always`` or ``never``.
        pair_batch: Pairs per network batch.
        alignment_iterations: Optimisation steps of the full global alignment.
        alignment_lr: Adam learning rate of the full global alignment.
        outlier_neighbours: Neighbours of the statistical outlier removal (0 = off).
        outlier_std_ratio: Its threshold, in standard deviations.
        max_points: Point budget of the fused cloud (0 = none): a stratified subset, taken
            where the cloud is fused (on the GPU) before it is copied to the host.
        compile_network: ``torch.compile`` the network's blocks and heads.
        compile_alignment: ``torch.compile`` the full global alignment's losses (MASt3R,
            Pow3R).
        mvs_depth_range: ``mvs``: near and far depth (metres along each camera's axis) of the
            search; ``(0, 0)``: from the calibration (see :mod:`threer_ros.pipeline.mvs`).
    """

    device: str = "auto"
    checkpoint: str = ""
    working_width: int = 320
    voxel_size: float = 0.002
    confidence_threshold: float = -1.0
    network_size: int = 512
    precision: str = "auto"
    use_calibration: bool = True
    alignment: str = "auto"
    pair_graph: str = "knn"
    graph_neighbours: int = 4
    pose_priors: bool = False
    shared_focal: bool = True
    clean_depth: str = "calibrated"
    pair_batch: int = 16
    alignment_iterations: int = 300
    alignment_lr: float = 0.01
    outlier_neighbours: int = 16
    outlier_std_ratio: float = 2.0
    max_points: int = 0
    compile_network: bool = False
    compile_alignment: bool = False
    mvs_depth_range: tuple[float, float] = (0.0, 0.0)

    def fusion_settings(self, backend: str) -> FusionSettings:
        """The fused cloud's filtering settings for ``backend``."""
        confidence = OFFICIAL_CONFIDENCE[backend] if self.confidence_threshold < 0 \
            else {"confidence_threshold": self.confidence_threshold}
        return FusionSettings(voxel_size=self.voxel_size,
                              outlier_neighbours=self.outlier_neighbours,
                              outlier_std_ratio=self.outlier_std_ratio,
                              max_points=self.max_points, **confidence)

    def network_settings(self, backend: str):
        """Settings of the network backend ``backend`` (:class:`~threer_ros.pipeline.network.
        NetworkSettings`)."""
        from threer_ros.pipeline.network import NetworkSettings

        return NetworkSettings(resolve_device(self.device), self.checkpoint, self.network_size,
                               self.precision, self.use_calibration, self.alignment,
                               self.fusion_settings(backend), self.compile_network)


def options_from_parameters(parameters: Mapping[str, Any]) -> BackendOptions:
    """The :class:`BackendOptions` held in a parameter file's values (``config/capture.yaml``
    names each option like its field)."""
    return BackendOptions(**{f.name: parameters[f.name] for f in fields(BackendOptions)})


def resolve_device(device: str) -> str:
    """Turn ``auto`` into ``cuda`` or ``cpu``; reject CUDA requests without a GPU, clearly."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but PyTorch sees no CUDA GPU "
                         f"(torch {torch.__version__}); use device:=cpu or install a CUDA build")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")
    return device


def device_memory_mib(device: str) -> dict[str, float]:
    """Memory that PyTorch holds on ``device`` (MiB): ``gpu_memory_allocated_mib`` (in tensors)
    and ``gpu_memory_reserved_mib`` (by its caching allocator); empty off CUDA or before CUDA
    was first used, so that asking never starts CUDA."""
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_initialized():
        return {}
    return {"gpu_memory_allocated_mib": torch.cuda.memory_allocated(device) / 2**20,
            "gpu_memory_reserved_mib": torch.cuda.memory_reserved(device) / 2**20}


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the GPU running out of memory (PyTorch's CUDA allocator)."""
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError)


def host_memory_mib() -> dict[str, float]:
    """This process's resident host memory (MiB) as ``host_memory_rss_mib``; empty where
    ``/proc/self/statm`` is not there (not Linux)."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return {}
    return {"host_memory_rss_mib": resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20}


def make_reconstructor(name: str, options: BackendOptions) -> Reconstructor:
    """Build the backend ``name`` (see :data:`BACKENDS`).

    Raises:
        ValueError: unknown backend or unusable options.
        WeightsError, CheckpointError: the backend's network weights are missing or unreadable
            (the message says how to get them).
    """
    if name not in _IMPLEMENTATIONS:
        raise ValueError(f"unknown backend {name!r}; available: "
                         + "; ".join(f"{k} ({v})" for k, v in BACKENDS.items()))
    module, cls = _IMPLEMENTATIONS[name].split(":")
    return getattr(importlib.import_module(module), cls).from_options(options)


def release_device_memory() -> None:
    """Hand the GPU memory PyTorch caches but no tensor uses back to the driver (a paused
    node); nothing to do without CUDA."""
    import torch

    if torch.cuda.is_initialized():     # never starts CUDA
        torch.cuda.empty_cache()
