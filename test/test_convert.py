"""Message conversion: image encodings, compressed images, PointCloud2 layout, TF and CameraInfo."""

from __future__ import annotations

import array

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from threer_ros.geometry.transforms import look_at
from threer_ros.pipeline.types import CameraCalibration
from threer_ros.ros.convert import (ImageDecodeError, calibration_to_camera_info_fields,
                                    camera_info_to_calibration, decode_compressed, decode_image,
                                    encode_compressed, image_to_msg_fields, pack_cloud,
                                    unpack_cloud)

RNG = np.random.default_rng(7)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)


def _raw(pixels: np.ndarray, pad: int = 3) -> tuple[int, bytes]:
    """Row-padded bytes of an (H, W, C) array, as a driver with a row stride would send them."""
    h = pixels.shape[0]
    rows = pixels.reshape(h, -1).view(np.uint8)
    step = rows.shape[1] + pad
    padded = np.zeros((h, step), np.uint8)
    padded[:, :rows.shape[1]] = rows
    return step, padded.tobytes()


@pytest.mark.parametrize("encoding,pixels", [
    ("rgb8", RGB), ("bgr8", RGB[..., ::-1]),
    ("rgba8", np.dstack([RGB, np.full(RGB.shape[:2], 255, np.uint8)])),
    ("bgra8", np.dstack([RGB[..., ::-1], np.zeros(RGB.shape[:2], np.uint8)])),
])
def test_colour_encodings_with_row_padding(encoding, pixels):
    step, data = _raw(np.ascontiguousarray(pixels))
    out = decode_image(encoding, 5, 7, step, False, data)
    np.testing.assert_array_equal(out, RGB)


def test_mono_and_sixteen_bit_in_both_byte_orders():
    grey = RGB[..., 0]
    step, data = _raw(grey[..., None])
    np.testing.assert_array_equal(decode_image("mono8", 5, 7, step, False, data),
                                  np.dstack([grey] * 3))
    wide = RGB.astype(np.uint16) * 257
    for big in (False, True):
        step, data = _raw(wide.astype(">u2" if big else "<u2"))
        np.testing.assert_array_equal(decode_image("rgb16", 5, 7, step, big, data), RGB)


@pytest.mark.parametrize("pattern,first_row", [
    ("rggb", "RG"), ("bggr", "BG"), ("gbrg", "GB"), ("grbg", "GR")])
def test_bayer_patterns_give_back_the_colour_of_flat_patches(pattern, first_row):
    colour = {"R": 200, "G": 90, "B": 30}
    second_row = {"RG": "GB", "BG": "GR", "GB": "RG", "GR": "BG"}[first_row]
    mosaic = np.zeros((16, 16), np.uint8)
    for y in range(16):
        row = first_row if y % 2 == 0 else second_row
        for x in range(16):
            mosaic[y, x] = colour[row[x % 2]]
    out = decode_image(f"bayer_{pattern}8", 16, 16, 16, False, mosaic.tobytes())
    np.testing.assert_allclose(out[4:12, 4:12].reshape(-1, 3).mean(0), [200, 90, 30], atol=2)


def test_rclpy_and_rosbags_style_buffers_decode_the_same():
    fields = image_to_msg_fields(RGB, "bgr8")
    as_array = array.array("B", fields["data"])                 # rclpy's uint8[] type
    as_numpy = np.frombuffer(fields["data"], np.uint8)          # rosbags' uint8[] type
    for data in (fields["data"], as_array, as_numpy):
        np.testing.assert_array_equal(
            decode_image("bgr8", fields["height"], fields["width"], fields["step"], False, data),
            RGB)


@pytest.mark.parametrize("encoding,height,width,step,size,match", [
    ("32FC1", 5, 7, 21, 105, "unsupported encoding '32FC1'"),
    ("yuv422", 5, 7, 14, 70, "even width"),
    ("rgb8", 5, 7, 21, 60, "needs 105 bytes but the message has 60"),
    ("rgb8", 5, 7, 10, 105, "step 10 is smaller than one row"),
    ("rgb8", 0, 7, 21, 0, "0 pixels|7x0"),
])
def test_bad_images_are_refused_with_the_reason(encoding, height, width, step, size, match):
    with pytest.raises(ImageDecodeError, match=match):
        decode_image(encoding, height, width, step, False, bytes(size))


def test_compressed_images_round_trip_in_both_channel_orders():
    smooth = cv2.GaussianBlur(np.repeat(np.repeat(RGB, 8, 0), 8, 1), (5, 5), 0)
    png = encode_compressed(smooth, "png")
    np.testing.assert_array_equal(decode_compressed("rgb8; png compressed bgr8", png), smooth)
    ok, rgb_order = cv2.imencode(".png", smooth)                # bytes holding R, G, B
    np.testing.assert_array_equal(decode_compressed("rgb8; png compressed rgb8", rgb_order),
                                  smooth)
    jpeg = decode_compressed("jpeg", encode_compressed(smooth, "jpeg"))
    error = np.abs(jpeg.astype(int) - smooth).mean()
    swapped = np.abs(jpeg[..., ::-1].astype(int) - smooth).mean()
    assert error < 8 and swapped > 5 * error      # lossy, but the channel order is right
    with pytest.raises(ImageDecodeError, match="could not be decoded"):
        decode_compressed("jpeg", b"not an image")


def test_point_cloud_layout_is_what_rviz_and_sensor_msgs_py_expect():
    points = np.array([[1.0, 2.0, 3.0]], np.float32)
    fields, step, data, dense = pack_cloud(points, np.array([[255, 0, 0]], np.uint8),
                                           np.array([0.5], np.float32))
    assert [(n, o, d, c) for n, o, d, c in fields] == [
        ("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("rgb", 12, 7, 1),
        ("confidence", 16, 7, 1)]
    assert step == 20 and len(data) == 20 and dense
    assert np.frombuffer(data[:12], "<f4").tolist() == [1.0, 2.0, 3.0]
    assert np.frombuffer(data[12:16], "<u4")[0] == 0x00FF0000   # red, as packed float bits
    assert np.frombuffer(data[16:20], "<f4")[0] == 0.5
    nan_fields = pack_cloud(np.full((1, 3), np.nan, np.float32), np.zeros((1, 3), np.uint8),
                            np.zeros(1, np.float32))
    assert nan_fields[3] is False


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 50), seed=st.integers(0, 2**31))
def test_point_cloud_round_trip(n, seed):
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(n, 3)).astype(np.float32)
    colors = rng.integers(0, 256, (n, 3), dtype=np.uint8)
    conf = rng.random(n).astype(np.float32)
    fields, step, data, _ = pack_cloud(points, colors, conf)
    p, c, f = unpack_cloud(fields, step, data)
    np.testing.assert_array_equal(p, points)
    np.testing.assert_array_equal(c, colors)
    np.testing.assert_array_equal(f, conf)


def test_unpacking_honours_other_layouts_and_big_endian():
    dtype = np.dtype({"names": ["rgb", "z", "y", "x"], "formats": [">u4", ">f4", ">f4", ">f4"],
                      "offsets": [0, 4, 8, 12], "itemsize": 24})
    rec = np.zeros(2, dtype)
    rec["x"], rec["y"], rec["z"], rec["rgb"] = [1, 2], [3, 4], [5, 6], [0x0000FF00, 0x000000FF]
    fields = [("rgb", 0, 7, 1), ("z", 4, 7, 1), ("y", 8, 7, 1), ("x", 12, 7, 1)]
    points, colors, conf = unpack_cloud(fields, 24, rec.tobytes(), is_bigendian=True)
    np.testing.assert_array_equal(points, [[1, 3, 5], [2, 4, 6]])
    np.testing.assert_array_equal(colors, [[0, 255, 0], [0, 0, 255]])
    np.testing.assert_array_equal(conf, [1, 1])
    with pytest.raises(ValueError, match="no 'rgb' field"):
        unpack_cloud(fields[1:], 24, rec.tobytes())


def test_camera_info_round_trip_binning_and_uncalibrated():
    from sensor_msgs.msg import CameraInfo as _Info

    K = np.array([[500.0, 0, 320], [0, 510.0, 240], [0, 0, 1]])
    calib = CameraCalibration(K, 640, 480, np.array([0.1, -0.05, 0, 0, 0.01]), "plumb_bob")
    back = camera_info_to_calibration(_Info(**calibration_to_camera_info_fields(calib)))
    np.testing.assert_allclose(back.K, K)
    assert (back.width, back.height, back.distortion_model) == (640, 480, "plumb_bob")
    binned = camera_info_to_calibration(_Info(**calibration_to_camera_info_fields(calib),
                                              binning_x=2, binning_y=2))
    assert (binned.width, binned.height) == (320, 240) and binned.K[0, 0] == 250
    assert camera_info_to_calibration(_Info(**{**calibration_to_camera_info_fields(calib),
                                               "k": [0.0] * 9})) is None


def test_transforms_carry_camera_centre_and_viewing_direction():
    from builtin_interfaces.msg import Time

    from threer_ros.geometry.transforms import quaternion_to_matrix
    from threer_ros.ros.convert import transform_msgs, transform_to_matrix

    pose = look_at(np.array([1.0, 0.2, 0.3]), np.zeros(3), np.array([0.0, 0.0, 1.0]))
    (t,) = transform_msgs("rig", ["cam_optical_frame"], pose[None], Time(sec=3))
    assert (t.header.frame_id, t.child_frame_id, t.header.stamp.sec) == ("rig",
                                                                         "cam_optical_frame", 3)
    centre = [t.transform.translation.x, t.transform.translation.y, t.transform.translation.z]
    np.testing.assert_allclose(centre, [1.0, 0.2, 0.3])
    q = t.transform.rotation
    R = quaternion_to_matrix(np.array([q.x, q.y, q.z, q.w]))
    np.testing.assert_allclose(R @ [0, 0, 1], -np.array([1.0, 0.2, 0.3]) / np.linalg.norm(
        [1.0, 0.2, 0.3]), atol=1e-9)   # optical z looks at the rig origin
    np.testing.assert_allclose(transform_to_matrix(t.transform), pose, atol=1e-12)
    # the message's quaternion read by an independent implementation gives the same pose
    from scipy.spatial.transform import Rotation

    np.testing.assert_allclose(Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix(),
                               pose[:3, :3], atol=1e-12)
