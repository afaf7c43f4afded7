"""Camera images onto the backend's device as they arrive (no ROS).

A live set's images arrive one after another over tens of milliseconds. Copying each to the GPU
when it comes, on its camera's own CUDA stream through a ring of pinned staging buffers and
without waiting for the copy, takes the host-to-device copy (16 x 5.3 MB a set at
1100 x 1604) off the reconstruction's path: the
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

from threer_ros.pipeline.backends import NETWORK_BACKENDS
from threer_ros.pipeline.types import Frame, FrameSet


def upload_device(backends: Sequence[str], device: str) -> str | None:
    """The device to upload arriving images to for ``backends`` running on the resolved
    ``device``: ``device`` when it is a GPU and every backend is a network backend, else
    None (nothing to gain: the CPU, or ``mvs``, which shrinks the host images to its working
    width first)."""
    if device.startswith("cuda") and backends and set(backends) <= NETWORK_BACKENDS:
        return device
    return None


@dataclass(frozen=True)
class DeviceImage:
    """A camera image (H x W x 3 uint8) on the backend's device.

    Attributes:
        tensor: The image there.
        copied: The CUDA event recorded when the copy was queued on its camera's stream (None
            on the CPU: ready at once); work on other streams waits for it
            (:func:`stacked_device_images`).
    """

    tensor: torch.Tensor
    copied: torch.cuda.Event | None = None


class _CameraStaging:
    """One camera's copy stream and its ring of pinned staging buffers, each with the event
    of the copy that last read it."""

    def __init__(self, device: torch.device, shape: tuple[int, ...], depth: int) -> None:
        self.stream = torch.cuda.Stream(device)
        self.buffers = [torch.empty(shape, dtype=torch.uint8, pin_memory=True)
                        for _ in range(depth)]
        self.events: list[torch.cuda.Event | None] = [None] * depth
        self.next = 0


class FrameUploader:
    """Copy frames' images to ``device`` (``cpu``, ``cuda`` or ``cuda:N``) without waiting for
    the copies: each camera has its own stream and a ring of ``depth`` pinned staging buffers.

    :meth:`upload` may be called from several threads, for one camera from one thread at a time
    (the node's executor for raw images, the camera's own thread for compressed ones).
    """

    def __init__(self, device: str, depth: int = 3) -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self._depth = depth
        self._staging: dict[str, _CameraStaging] = {}
        self._lock = threading.Lock()

    def _camera(self, camera: str, shape: tuple[int, ...]) -> _CameraStaging:
        with self._lock:
            staging = self._staging.get(camera)
            if staging is None or tuple(staging.buffers[0].shape) != shape:
                staging = self._staging[camera] = _CameraStaging(self.device, shape,
                                                                 self._depth)
            return staging

    def upload(self, frame: Frame) -> Frame:
        """``frame`` with its image also on the device (``device_image``: a
        :class:`DeviceImage`). On a GPU this returns once the image is in pinned memory (a
        host copy without the GIL) and its copy to the device is queued.

        Raises:
            torch.cuda.OutOfMemoryError: no room for the image on the GPU.
        """
        if self.device.type != "cuda":
            return replace(frame, device_image=DeviceImage(torch.from_numpy(frame.image.copy())))
        staging = self._camera(frame.camera, frame.image.shape)
        slot = staging.next
        staging.next = (slot + 1) % len(staging.buffers)
        if staging.events[slot] is not None:    # the copy that last read this buffer
            staging.events[slot].synchronize()  # (queued depth images ago: long done)
        buffer = staging.buffers[slot]
        np.copyto(buffer.numpy(), frame.image)
        with torch.cuda.stream(staging.stream):
            tensor = buffer.to(self.device, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(staging.stream)
        staging.events[slot] = copied
        return replace(frame, device_image=DeviceImage(tensor, copied))


def stacked_device_images(frames: Sequence[Frame], device: str) -> torch.Tensor | None:
    """The frames' uploaded images stacked into ``(N, H, W, 3)`` uint8 on ``device``, queued on
    its current stream after their copies; None unless every frame has one there, of one
    shape."""
    images = [f.device_image for f in frames]
    wanted = torch.device(device)
    if not images or any(d is None or d.tensor.device.type != wanted.type for d in images):
        return None
    if wanted.type == "cuda" and wanted.index is None:
        wanted = torch.device("cuda", torch.cuda.current_device())
    if any(d.tensor.device != wanted for d in images) \
            or len({tuple(d.tensor.shape) for d in images}) != 1:
        return None
    if wanted.type == "cuda":
        stream = torch.cuda.current_stream(wanted)
        for d in images:
            if d.copied is not None:
                stream.wait_event(d.copied)
            d.tensor.record_stream(stream)   # made on a camera's stream: not reused under us
    return torch.stack([d.tensor for d in images])


def host_only(frame_set: FrameSet) -> FrameSet:
    """``frame_set`` without its uploaded images (their GPU memory goes when nothing else
    holds them)."""
    if all(f.device_image is None for f in frame_set.frames):
        return frame_set
    return replace(frame_set, frames=tuple(replace(f, device_image=None)
                                           for f in frame_set.frames))
