"""What the network backends share: loading their network, and turning a frame set into the
network's input tensors with matching intrinsics and colours (no ROS).

Network images follow the official preprocessing (:mod:`threer_ros.models.preprocess`): the long
side is resized to ``size`` and the image centre-cropped to multiples of the patch size. Every
per-pixel output of a network (points, confidences, descriptors) is at that resolution; the
intrinsics here are the calibrated ones mapped to it (pixels of the network image).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from threer_ros.geometry.fusion import FusionSettings, fuse_points, view_confidence_mask
from threer_ros.geometry.registration import Similarity, align_to_reference
from threer_ros.models.preprocess import network_intrinsics, prepare_images_torch
from threer_ros.pipeline.types import FrameSet, Reconstruction
from threer_ros.pipeline.upload import stacked_device_images

#: Backend name -> (weights entry of ``threer-ros weights``, accepted network class names).
NETWORK_CLASSES = {
    "fast3r": ("fast3r", ("Fast3R",)),
    "mast3r": ("mast3r", ("AsymmetricStereo",)),
    "pow3r": ("pow3r", ("Pow3R",)),
}


#: ``precision`` values: name -> (trunk dtype, heads in float32). ``tf32`` is ``fp32`` whose
#: matrix products run on TF32 tensor cores and attention on bfloat16 ones (CUDA;
#: :func:`float32_matmul`, :func:`attention_dtype`).
PRECISIONS = {"fp32": (torch.float32, False), "tf32": (torch.float32, False),
              "bf16-trunk": (torch.bfloat16, True), "bf16": (torch.bfloat16, False),
              "fp16": (torch.float16, False)}


@contextmanager
def float32_matmul(precision: str) -> Iterator[None]:
    """Run the block's float32 matrix products on TF32 tensor cores when ``precision`` is
    ``tf32`` (CUDA GPUs from Ampere on: inputs rounded to a 10-bit mantissa, float32
    accumulation; no effect on the CPU), exactly otherwise; the process-wide setting is
    restored on exit, so the alignment after the forward stays in full float32."""
    if precision != "tf32":
        yield
        return
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved)


def attention_dtype(precision: str, device: str) -> torch.dtype | None:
    """The dtype the attention kernels of a ``precision`` model run in on ``device``:
    bfloat16 for ``tf32`` on CUDA (float32 attention has no tensor-core kernel; the official
    Fast3R's fp32 mode does the same), else None (the tokens' own dtype)."""
    return torch.bfloat16 if precision == "tf32" and device.startswith("cuda") else None


def network_precision(precision: str, device: str) -> tuple[torch.dtype, bool]:
    """(trunk dtype, heads in float32) of ``precision``: ``auto`` is ``bf16-trunk`` on CUDA
    (encoder and decoder in bfloat16, the heads and MASt3R's descriptors in float32, as the
    official code runs them) and ``fp32`` on the CPU; ``bf16`` casts the heads too (faster,
    less exact: docs/backends.md)."""
    if precision == "auto":
        precision = "bf16-trunk" if device.startswith("cuda") else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use auto, "
                         f"{', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


def set_precision(model: nn.Module, precision: str, device: str) -> nn.Module:
    """``model`` cast to ``precision`` (:func:`network_precision`, :func:`attention_dtype`),
    in place."""
    from threer_ros.models import heads_to_float32
    from threer_ros.models.blocks import set_attention_dtype

    dtype, float_heads = network_precision(precision, device)
    model.to(dtype=dtype)
    if float_heads:
        heads_to_float32(model)
    return set_attention_dtype(model, attention_dtype(precision, device))


def load_network(backend: str, settings: "NetworkSettings") -> nn.Module:
    """Load the network of ``backend`` from ``settings.checkpoint`` ("" = the cached released
    weights) onto its device in its precision, with its blocks and heads compiled
    (:func:`threer_ros.models.compile_blocks`) when ``settings.compile_network``.

    Raises:
        WeightsError: no weights (the message says how to get them).
        CheckpointError: unreadable checkpoint.
        ValueError: the checkpoint holds another network than the backend needs.
    """
    from threer_ros.models import compile_blocks, load_model
    from threer_ros.weights import resolve_checkpoint

    entry, classes = NETWORK_CLASSES[backend]
    path = resolve_checkpoint(entry, settings.checkpoint)
    model = set_precision(load_model(path, device=settings.device), settings.precision,
                          settings.device)
    if type(model).__name__ not in classes:
        raise ValueError(f"checkpoint {path} holds a {type(model).__name__} network; the "
                         f"{backend} backend needs {' or '.join(classes)} weights")
    if backend == "mast3r" and not hasattr(model.downstream_head1, "desc_dim"):
        raise ValueError(f"checkpoint {path} is a DUSt3R network without descriptors; the "
                         "mast3r backend needs MASt3R weights")
    if settings.compile_network:
        compile_blocks(model)
    return model


@dataclass(frozen=True)
class NetworkImages:
    """A frame set as network input.

    Attributes:
        cameras: Camera names, in input order.
        img: ``(N, 3, h, w)`` images normalised to [-1, 1], on the network's device, float32.
        true_shape: ``(N, 2)`` int32 ``(h, w)`` per image (CPU), as the official views carry.
        colors: ``(N, h, w, 3)`` uint8 RGB of the network images, on their device.
        intrinsics: ``(N, 3, 3)`` float64 calibrated intrinsics in network pixels, or ``None``
            when some camera has no intrinsics.
        cam_to_rig: ``(N, 4, 4)`` float64 calibrated camera-to-rig poses (metres), or ``None``
            when some camera has no extrinsics.
    """

    cameras: tuple[str, ...]
    img: torch.Tensor
    true_shape: torch.Tensor
    colors: torch.Tensor
    intrinsics: np.ndarray | None
    cam_to_rig: np.ndarray | None

    def view(self, index: torch.Tensor | list[int]) -> dict:
        """Official view dict (``img``, ``true_shape``, ``idx``, ``instance``) of a batch of the
        images at ``index``."""
        idx = [int(i) for i in index]
        return {"img": self.img[idx], "true_shape": self.true_shape[idx], "idx": idx,
                "instance": [self.cameras[i] for i in idx]}


def prepare_network_images(frames: FrameSet, size: int, device: str) -> NetworkImages:
    """Resize and crop every frame as the official ``load_images(size)`` does, on ``device``
    (from the frames' ``device_image`` when they were all uploaded there as they arrived).

    Raises:
        ValueError: the frames do not share one image size.
    """
    shapes = {f.image.shape for f in frames.frames}
    if len(shapes) != 1:
        raise ValueError(f"all images of a set must have one size, got {sorted(shapes)}")
    height, width = frames.frames[0].image.shape[:2]
    images = stacked_device_images(frames.frames, device)
    if images is None:
        images = torch.from_numpy(np.stack([f.image for f in frames.frames])).to(device)
    img, true_shape = prepare_images_torch(images, size)
    colors = ((img.permute(0, 2, 3, 1) * 0.5 + 0.5) * 255).round().byte()
    intrinsics = None
    if all(f.calibration is not None for f in frames.frames):
        intrinsics = network_intrinsics(np.stack([f.calibration.K for f in frames.frames]),
                                        width, height, size)
    cam_to_rig = np.stack([f.calibration.cam_to_rig for f in frames.frames]) \
        if frames.is_calibrated else None
    return NetworkImages(frames.cameras, img, true_shape, colors, intrinsics, cam_to_rig)


@dataclass(frozen=True)
class NetworkSettings:
    """Settings of the network backends (node parameters of the same names).

    Attributes:
        device: ``cpu``, ``cuda`` or ``cuda:N`` (already resolved).
        checkpoint: Weights file or folder ("" = the cached released weights).
        image_size: Long side of the network images in pixels (512 for the released models).
        precision: ``auto`` (CUDA: ``bf16-trunk``; CPU: ``fp32``), ``fp32``, ``tf32`` (fp32
            with TF32 matrix products and, on CUDA, bf16 attention), ``bf16-trunk`` (heads
            in fp32), ``bf16`` or ``fp16`` (:func:`network_precision`).
        use_calibration: Use known intrinsics/extrinsics (priors, Sim(3) into the rig frame).
        alignment: ``fast`` keeps calibrated poses fixed and fits only depth scales; ``full``
            estimates every pose and then fits a Sim(3) to the calibration; ``auto`` is
            ``fast`` when the set is calibrated.
        fusion: Confidence threshold, voxel size and outlier removal of the fused cloud.
        compile_network: ``torch.compile`` the network's blocks and heads (faster sets after
            a slow first one per input shape; docs/benchmarks.md).
    """

    device: str = "cpu"
    checkpoint: str = ""
    image_size: int = 512
    precision: str = "auto"
    use_calibration: bool = True
    alignment: str = "auto"
    fusion: FusionSettings = FusionSettings()
    compile_network: bool = False

    def __post_init__(self) -> None:
        if self.alignment not in ("auto", "fast", "full"):
            raise ValueError(f"alignment {self.alignment!r}: use auto, fast or full")
        if self.image_size < 16 or self.image_size % 16:
            raise ValueError(f"image_size {self.image_size} must be a positive multiple of 16")

    def fast_path(self, images: NetworkImages) -> bool:
        """Whether to keep calibrated poses fixed for this set."""
        calibrated = self.use_calibration and images.cam_to_rig is not None \
            and images.intrinsics is not None
        if self.alignment == "fast" and not calibrated:
            raise ValueError("alignment 'fast' needs intrinsics and extrinsics for every camera "
                             "(CameraInfo and rig_calibration) and use_calibration true")
        return calibrated and self.alignment in ("auto", "fast")


def update_network_fusion(self, options) -> None:
    """``update_fusion`` of the network reconstructors (a method of theirs): filter the fused
    cloud as ``options`` (:class:`~threer_ros.pipeline.backends.BackendOptions`) say for this
    backend, from the next set on."""
    self.settings = replace(self.settings, fusion=options.fusion_settings(self.name))


def calibration_check(cam_to_world: np.ndarray, cam_to_rig: np.ndarray
                      ) -> tuple[Similarity, dict[str, float]]:
    """The calibration check of a full alignment: the Sim(3) taking the estimated camera
    centres onto the calibrated ones (network frame and unit -> rig frame, metres) and what
    ``info`` reports of it (the cameras' remaining disagreement, ``pose_*`` in degrees and
    metres, and ``rig_scale``, metres per network unit).

    Args:
        cam_to_world: ``(N, 4, 4)`` estimated camera-to-world poses.
        cam_to_rig: ``(N, 4, 4)`` calibrated camera-to-rig poses.
    """
    if len(cam_to_world) < 3:
        raise ValueError("bringing an estimate into the rig frame needs at least 3 cameras; "
                         "use alignment fast for 2 cameras")
    to_rig, disagreement = align_to_reference(np.asarray(cam_to_world), cam_to_rig)
    return to_rig, dict(disagreement.summary(), rig_scale=to_rig.scale)


def assemble(images: NetworkImages, points: torch.Tensor, confidence: torch.Tensor,
             cam_to_world: np.ndarray, intrinsics: np.ndarray, stamp_ns: int,
             settings: NetworkSettings, timings: dict[str, float], from_calibration: bool,
             info: dict[str, float] | None = None) -> Reconstruction:
    """Fuse per-view pointmaps into a :class:`Reconstruction` in the rig frame (after the
    per-view confidence rules of ``settings.fusion``).

    Args:
        points: ``(N, h, w, 3)`` points of every network pixel, in the frame of ``cam_to_world``.
        confidence: ``(N, h, w)`` their confidences.
        cam_to_world: ``(N, 4, 4)`` camera poses in the same frame.
        intrinsics: ``(N, 3, 3)`` intrinsics in network pixels.
        from_calibration: True when ``cam_to_world`` are the calibrated poses (rig frame).
            Otherwise, with a calibrated set and ``use_calibration``, points and poses are taken
            into the rig frame by the Sim(3) of estimated onto calibrated camera centres, and
            the remaining pose disagreement goes into ``info``; else into the first camera's
            frame (its pose the identity).
    """
    info = dict(info or {})
    t0 = time.perf_counter()
    pts = points.double().reshape(-1, 3)
    poses = cam_to_world
    if not from_calibration and settings.use_calibration and images.cam_to_rig is not None:
        to_rig, check = calibration_check(poses, images.cam_to_rig)
        pts = to_rig.apply(pts)
        poses, from_calibration = images.cam_to_rig, True
        info.update(check)
    elif not from_calibration:        # the first camera's frame, as documented: pin it
        to_first = np.linalg.inv(np.asarray(poses[0], dtype=np.float64))
        pts = pts @ torch.as_tensor(to_first[:3, :3].T, device=pts.device) \
            + torch.as_tensor(to_first[:3, 3], device=pts.device)
        poses = to_first @ np.asarray(poses, dtype=np.float64)
    kept = view_confidence_mask(confidence, settings.fusion).reshape(-1).to(pts.device)
    pts = torch.where(kept[:, None], pts, float("nan"))
    colors = images.colors.reshape(-1, 3).to(pts.device)
    fused = fuse_points(pts, colors, confidence.float().reshape(-1), settings.fusion)
    timings["fusion"] = time.perf_counter() - t0
    return Reconstruction(*fused, cameras=images.cameras, cam_to_rig=np.asarray(poses),
                          intrinsics=np.asarray(intrinsics, dtype=np.float64), stamp_ns=stamp_ns,
                          poses_from_calibration=from_calibration, timings_s=timings, info=info)
