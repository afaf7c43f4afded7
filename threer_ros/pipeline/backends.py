"""Choose a reconstruction backend by name (what the node's ``backend`` parameter selects)."""

from __future__ import annotations

from dataclasses import dataclass

from threer_ros.pipeline.types import Reconstructor

#: Backends and what they need, as shown in error messages and ``--help``.
BACKENDS = {
    "mvs": "weight-free calibrated plane-sweep stereo (needs intrinsics and extrinsics)",
}


@dataclass(frozen=True)
class BackendOptions:
    """Settings shared by all backends.

    Attributes:
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        checkpoint: Weights file or folder of a network backend ("" = default cache entry).
        working_width: Images are resized to this width (pixels) before reconstruction.
        voxel_size: Voxel size (metres) of the fused cloud's down-sampling; 0 disables it.
        confidence_threshold: Points below this confidence are dropped.
    """

    device: str = "auto"
    checkpoint: str = ""
    working_width: int = 320
    voxel_size: float = 0.002
    confidence_threshold: float = 0.0


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


def make_reconstructor(name: str, options: BackendOptions) -> Reconstructor:
    """Build the backend ``name`` (see :data:`BACKENDS`)."""
    if name == "mvs":
        from threer_ros.pipeline.mvs import PlaneSweepReconstructor
        return PlaneSweepReconstructor.from_options(options)
    raise ValueError(f"unknown backend {name!r}; available: "
                     + "; ".join(f"{k} ({v})" for k, v in BACKENDS.items()))
