"""Preprocessing reproduces the official ``load_images`` (shape, crop, pixels)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from threer_ros.models.preprocess import (network_intrinsics, prepare_images, prepare_images_torch,
                                         stack_views)

PREPROCESS = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "parity" / "preprocess"
CASES = json.loads((PREPROCESS / "fixture.json").read_text())["cases"]
#: Difference of the batched torch path from PIL, in grey levels, measured on the public
#: fixture images (antialiased bicubic vs Lanczos): at most 13 at isolated edge pixels,
#: mean 0.12-0.18. Bounds with margin for other images:
TORCH_MAX_GREY_LEVELS = 20
TORCH_MEAN_GREY_LEVELS = 0.5


def _load(case: dict) -> tuple[np.ndarray, np.lib.npyio.NpzFile]:
    rgb = np.array(Image.open(PREPROCESS / case["image"]).convert("RGB"))
    return rgb, np.load(PREPROCESS / case["file"])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_matches_official_load_images(case):
    rgb, expected = _load(case)
    view = prepare_images([rgb], case["load_images_size"])[0]
    assert view["true_shape"].tolist() == expected["true_shape"].tolist()
    assert view["true_shape"].dtype == torch.int32
    ours = torch.round((view["img"][0] * 0.5 + 0.5) * 255).to(torch.int16)
    diff = (ours - torch.from_numpy(expected["img_uint8_chw"]).to(torch.int16)).abs()
    assert int(diff.max()) <= 1
    assert view["img"].min() >= -1 and view["img"].max() <= 1


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_batched_torch_path_has_the_same_geometry_and_close_pixels(case):
    rgb, expected = _load(case)
    img, shape = prepare_images_torch(torch.from_numpy(rgb)[None].repeat(2, 1, 1, 1),
                                      case["load_images_size"])
    assert shape.tolist() == expected["true_shape"].tolist() * 2
    grey = (img[0] * 0.5 + 0.5) * 255
    diff = (grey - torch.from_numpy(expected["img_uint8_chw"]).float()).abs()
    assert float(diff.max()) <= TORCH_MAX_GREY_LEVELS
    assert float(diff.mean()) <= TORCH_MEAN_GREY_LEVELS


def test_views_of_one_size_stack_into_a_batch_and_bad_input_is_named():
    rgb = np.zeros((480, 640, 3), np.uint8)
    batch = stack_views(prepare_images([rgb, rgb], 512))
    assert batch["img"].shape == (2, 3, 384, 512) and batch["instance"] == ["0", "1"]
    with pytest.raises(ValueError, match="image 0: expected H x W x 3 uint8"):
        prepare_images([np.zeros((10, 10), np.uint8)], 512)


@pytest.mark.parametrize("width, height", [(480, 700), (854, 480), (300, 200)])
def test_network_intrinsics_follow_the_resize_and_crop(width, height):
    """A bright spot projected with the camera's K lands, in the network image, where the
    network intrinsics project the same ray (resize, pixel centres and crop together)."""
    K = np.array([[0.9 * width, 0, 0.47 * width], [0, 0.9 * width, 0.55 * height], [0, 0, 1]])
    ray = np.array([0.08, -0.05, 1.0])
    u, v = (K @ ray)[:2]
    ys, xs = np.mgrid[0:height, 0:width]
    spot = np.exp(-((xs - u) ** 2 + (ys - v) ** 2) / (2 * (0.012 * width) ** 2))
    image = np.repeat((255 * spot).round().astype(np.uint8)[..., None], 3, axis=2)
    img = prepare_images([image], size=512)[0]["img"][0, 0].numpy() * 0.5 + 0.5
    weights = np.where(img > 0.2, img, 0.0)
    ys, xs = np.mgrid[0:img.shape[0], 0:img.shape[1]]
    found = np.array([(xs * weights).sum(), (ys * weights).sum()]) / weights.sum()
    K_net = network_intrinsics(K, width, height, size=512)
    expected = (K_net @ ray)[:2]
    assert np.abs(found - expected).max() < 0.1
    assert np.allclose(network_intrinsics(K[None].repeat(2, 0), width, height, 512),
                       K_net[None].repeat(2, 0))
    with pytest.raises(ValueError, match="K must be"):
        network_intrinsics(np.eye(4), width, height, 512)
