"""Images uploaded as they arrive (pipeline/upload.py): the network images made from them are
the ones made from the host images, on the CPU here and on a GPU where there is one."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from threer_ros.pipeline.network import prepare_network_images
from threer_ros.pipeline.types import Frame, FrameSet
from threer_ros.pipeline.upload import (FrameUploader, host_only, stacked_device_images,
                                        upload_device)

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _frames(count: int = 4, height: int = 90, width: int = 60, seed: int = 0) -> FrameSet:
    rng = np.random.default_rng(seed)
    return FrameSet(tuple(Frame(f"cam{i}", rng.integers(0, 256, (height, width, 3), np.uint8),
                                1_000 + i) for i in range(count)), 1_003)


def _uploaded(frames: FrameSet, uploader: FrameUploader) -> FrameSet:
    return FrameSet(tuple(uploader.upload(f) for f in frames.frames), frames.stamp_ns)


def test_upload_device_is_the_gpu_for_network_backends_only():
    assert upload_device(["fast3r"], "cuda:1") == "cuda:1"
    assert upload_device(["mast3r", "pow3r"], "cuda") == "cuda"
    assert upload_device(["fast3r"], "cpu") is None
    assert upload_device(["mvs"], "cuda") is None
    assert upload_device(["fast3r", "mvs"], "cuda") is None      # mvs shrinks host images
    assert upload_device([], "cuda") is None


def test_an_uploaded_image_keeps_its_pixels_when_the_camera_sends_the_next():
    uploader = FrameUploader("cpu")
    frames = _frames(count=1).frames + _frames(count=1, seed=1).frames   # one camera, twice
    first = uploader.upload(frames[0])
    second = uploader.upload(frames[1])
    np.testing.assert_array_equal(first.device_image.tensor.numpy(), frames[0].image)
    np.testing.assert_array_equal(second.device_image.tensor.numpy(), frames[1].image)
    assert first.image is frames[0].image and first.stamp_ns == frames[0].stamp_ns


def test_network_images_from_uploads_equal_those_from_host_images():
    frames = _frames()
    host = prepare_network_images(frames, 64, "cpu")
    uploaded = prepare_network_images(_uploaded(frames, FrameUploader("cpu")), 64, "cpu")
    torch.testing.assert_close(uploaded.img, host.img, rtol=0, atol=0)
    torch.testing.assert_close(uploaded.colors, host.colors, rtol=0, atol=0)
    assert uploaded.colors.shape == (4, *host.img.shape[2:], 3)


def test_a_set_with_a_frame_not_uploaded_is_stacked_from_the_host():
    frames = _uploaded(_frames(), FrameUploader("cpu"))
    assert stacked_device_images(frames.frames, "cpu") is not None
    assert stacked_device_images(frames.frames, "cuda") is None       # uploaded elsewhere
    partly = host_only(FrameSet(frames.frames[:1], 1_000)).frames + frames.frames[1:]
    assert stacked_device_images(partly, "cpu") is None
    assert all(f.device_image is None for f in host_only(frames).frames)
    assert [f.image is g.image for f, g in zip(host_only(frames).frames, frames.frames)] == \
        [True] * 4


@CUDA
def test_uploads_from_camera_threads_make_the_host_images_network_images():
    """Eight cameras upload five images each from their own threads, more than the staging
    ring holds: every copy lands intact although none is waited for on the host."""
    sets = [_frames(count=8, height=480, width=320, seed=seed) for seed in range(5)]
    uploader = FrameUploader("cuda", depth=3)
    uploaded: dict[tuple[int, str], Frame] = {}

    def camera(index: int) -> None:
        for k, frames in enumerate(sets):
            frame = frames.frames[index]
            uploaded[k, frame.camera] = uploader.upload(frame)

    threads = [threading.Thread(target=camera, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, frames in enumerate(sets):
        on_gpu = FrameSet(tuple(uploaded[k, f.camera] for f in frames.frames), frames.stamp_ns)
        assert all(f.device_image.tensor.is_cuda for f in on_gpu.frames)
        host = prepare_network_images(frames, 128, "cuda")
        from_uploads = prepare_network_images(on_gpu, 128, "cuda")
        torch.testing.assert_close(from_uploads.img, host.img, rtol=0, atol=0)
        torch.testing.assert_close(from_uploads.colors, host.colors, rtol=0, atol=0)
