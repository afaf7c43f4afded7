"""4:2:2 YUV (UYVY and YUYV) and 12-bit-in-16 images decode to the right RGB."""

from __future__ import annotations

import numpy as np
import pytest

from threer_ros.ros.convert import decode_image


def _yuv422(y: np.ndarray, u: int, v: int, order: str) -> bytes:
    """Bytes of a 4:2:2 image with luma ``y`` (H, W, W even) and one flat chroma."""
    h, w = y.shape
    out = np.empty((h, w // 2, 4), np.uint8)
    y0, y1 = y[:, 0::2], y[:, 1::2]
    if order == "uyvy":
        out[..., 0], out[..., 1], out[..., 2], out[..., 3] = u, y0, v, y1
    else:
        out[..., 0], out[..., 1], out[..., 2], out[..., 3] = y0, u, y1, v
    return out.tobytes()


@pytest.mark.parametrize("encoding, order", [("yuv422", "uyvy"), ("yuv422_yuy2", "yuyv")])
def test_yuv422_byte_orders(encoding, order):
    y = np.tile(np.array([[60, 200, 60, 200]], np.uint8), (2, 1))
    grey = decode_image(encoding, 2, 4, 8, False, _yuv422(y, 128, 128, order))
    assert grey.shape == (2, 4, 3)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    assert (grey[:, 0::2, 0] < 80).all() and (grey[:, 1::2, 0] > 180).all()  # luma per pixel
    reddish = decode_image(encoding, 2, 4, 8, False, _yuv422(np.full((2, 4), 128, np.uint8),
                                                             100, 200, order))
    assert (reddish[..., 0] > reddish[..., 1]).all() and (reddish[..., 0] > reddish[..., 2]).all()


def test_yuv422_needs_two_bytes_per_pixel():
    with pytest.raises(ValueError, match="needs"):
        decode_image("yuv422", 2, 4, 8, False, bytes(8))


@pytest.mark.parametrize("bit_depth, value, expected", [(16, 0xFFFF, 255), (16, 0x0FFF, 15),
                                                        (12, 0x0FFF, 255), (12, 0x0800, 128),
                                                        (12, 0x2000, 255), (10, 0x0200, 128)])
def test_sixteen_bit_images_use_their_significant_bits(bit_depth, value, expected):
    data = np.full((2, 2), value, "<u2").tobytes()
    rgb = decode_image("mono16", 2, 2, 4, False, data, bit_depth=bit_depth)
    assert (rgb == expected).all()
