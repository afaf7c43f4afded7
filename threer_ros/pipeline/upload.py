"""Camera images onto the backend's device as they arrive (no ROS).

A live set's images arrive one after another over tens of milliseconds. Copying each to the GPU
when it comes, on its camera's own CUDA stream through a pinned staging buffer, takes the
host-to-device copy (16 x 5.3 MB a set at 1100 x 1604) off the reconstruction's path: the
network backends stack the set's device images
(:func:`threer_ros.pipeline.network.prepare_network_images`) instead of stacking host arrays and
copying them from pageable memory while the worker waits. Only the network backends on a GPU
gain from it (:func:`upload_device`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch

from threer_ros.pipeline.types import Frame, FrameSet

#: Backends that take their images through ``prepare_network_images`` (``mvs`` shrinks the
#: host images to its working width first).
NETWORK_BACKENDS = frozenset({"fast3r", "mast3r", "pow3r"})


def upload_device(backends: Sequence[str], device: str) -> str | None:
    """The device to upload arriving images to for ``backends`` running on the resolved
    ``device``: ``device`` when it is a GPU and every backend is a network backend, else
    None (nothing to gain: the CPU, or ``mvs``)."""
    if device.startswith("cuda") and backends and set(backends) <= NETWORK_BACKENDS:
        return device
    return None


@dataclass
class _CameraSlot:
    """One camera's copy stream and pinned staging buffer (``None`` on the CPU)."""

    stream: torch.cuda.Stream | None
    staging: torch.Tensor


class FrameUploader:
    """Copy frames' images to ``device`` (``cpu``, ``cuda`` or ``cuda:N``).

    :meth:`upload` may be called from several threads, one camera per thread at a time (the
    node's per-camera threads): each camera has its own stream and staging buffer.
    """

    def __init__(self, device: str) -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self._slots: dict[str, _CameraSlot] = {}
        self._lock = threading.Lock()

    def _slot(self, camera: str, shape: tuple[int, ...]) -> _CameraSlot:
        with self._lock:
            slot = self._slots.get(camera)
            if slot is None or tuple(slot.staging.shape) != shape:
                on_gpu = self.device.type == "cuda"
                slot = _CameraSlot(torch.cuda.Stream(self.device) if on_gpu else None,
                                   torch.empty(shape, dtype=torch.uint8, pin_memory=on_gpu))
                self._slots[camera] = slot
            return slot

    def upload(self, frame: Frame) -> Frame:
        """``frame`` with its image also on the device (``device_image``, H x W x 3 uint8);
        returns once the copy is done, so the camera's staging buffer is free again.

        Raises:
            torch.cuda.OutOfMemoryError: no room for the image on the GPU.
        """
        slot = self._slot(frame.camera, frame.image.shape)
        np.copyto(slot.staging.numpy(), frame.image)
        if slot.stream is None:
            return replace(frame, device_image=slot.staging.clone())
        with torch.cuda.stream(slot.stream):
            on_device = slot.staging.to(self.device, non_blocking=True)
        slot.stream.synchronize()
        return replace(frame, device_image=on_device)


def stacked_device_images(frames: Sequence[Frame], device: str) -> torch.Tensor | None:
    """The frames' uploaded images stacked into ``(N, H, W, 3)`` uint8 on ``device``, ready
    for work on its current stream; None unless every frame has one there of one shape."""
    images = [f.device_image for f in frames]
    wanted = torch.device(device)
    if not images or any(t is None or t.device.type != wanted.type for t in images):
        return None
    if wanted.type == "cuda":
        index = wanted.index if wanted.index is not None else torch.cuda.current_device()
        if any(t.device.index != index for t in images):
            return None
        stream = torch.cuda.current_stream(wanted)
        for t in images:            # made on a camera's stream: not to be reused under us
            t.record_stream(stream)
    if len({tuple(t.shape) for t in images}) != 1:
        return None
    return torch.stack(images)


def host_only(frame_set: FrameSet) -> FrameSet:
    """``frame_set`` without its uploaded images (their GPU memory goes when nothing else
    holds them)."""
    if all(f.device_image is None for f in frame_set.frames):
        return frame_set
    return replace(frame_set, frames=tuple(replace(f, device_image=None)
                                           for f in frame_set.frames))
