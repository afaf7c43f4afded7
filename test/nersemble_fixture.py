"""A tiny NeRSemble download made from the synthetic rig, for the reader, bag and replay tests.

Same folder layouts, ``camera_params.json`` schema and file types as the real dataset (v2 and
benchmark: one MPEG-4 video per camera; v1: one PNG per camera and frame), 16 cameras named by
the NeRSemble serials, images 66 x 96 pixels (MPEG-4 needs even sizes). Frame k of camera c is
the synthetic rig's image of c brightened by ``BRIGHTEN * k`` grey levels, so frames differ.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from threer_ros.config import read_parameters
from threer_ros.data.nersemble import FULL_WIDTH
from threer_ros.data.synthetic import SyntheticRig

WIDTH = 66
PARTICIPANT = "031"
SEQUENCE = "EXP-2-eyes"
BRIGHTEN = 12
CAMERAS = tuple(read_parameters()["cameras"])           # cam_<serial>, the config's order
SERIALS = tuple(c.removeprefix("cam_") for c in CAMERAS)


def render(seed: int = 0) -> SyntheticRig:
    """The synthetic rig seen by the 16 NeRSemble cameras (metres, rig = NeRSemble world)."""
    return SyntheticRig.render(seed=seed, width=WIDTH, names=CAMERAS)


def frame_image(rig: SyntheticRig, camera: int, k: int) -> np.ndarray:
    """RGB image of camera index ``camera`` at timestep ``k``."""
    image = rig.views[camera].image.astype(np.int16) + BRIGHTEN * k
    return np.clip(image, 0, 255).astype(np.uint8)


def camera_params(rig: SyntheticRig, per_camera: bool = False) -> dict:
    """``camera_params.json`` content: world-to-camera poses and the intrinsics, shared for
    the full 2200-pixel-wide sensor (v1, v2) or per serial at the images' size (benchmark)."""
    K = rig.views[0].calibration.K
    full = K.copy()
    full[:2] *= FULL_WIDTH / WIDTH
    return {
        "world_2_cam": {s: np.linalg.inv(v.calibration.cam_to_rig).tolist()
                        for s, v in zip(SERIALS, rig.views)},
        "intrinsics": {s: K.tolist() for s in SERIALS} if per_camera else full.tolist(),
    }


def write_video_download(root: Path, rig: SyntheticRig, frames: int = 3,
                         benchmark: bool = False) -> Path:
    """The v2 raw layout (or the benchmark's under ``nvs/``); returns the participant folder."""
    participant = (root / "nvs" if benchmark else root) / PARTICIPANT
    (participant / "calibration").mkdir(parents=True)
    (participant / "calibration" / "camera_params.json").write_text(
        json.dumps(camera_params(rig, per_camera=benchmark)))
    videos = participant / "sequences" / SEQUENCE / "images"
    videos.mkdir(parents=True)
    height = rig.views[0].image.shape[0]
    for index, camera in enumerate(CAMERAS):
        writer = cv2.VideoWriter(str(videos / f"{camera}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"),
                                 73.0, (WIDTH, height))
        assert writer.isOpened(), "OpenCV cannot write MPEG-4 video here"
        for k in range(frames):
            writer.write(np.ascontiguousarray(frame_image(rig, index, k)[..., ::-1]))
        writer.release()
    return participant


def write_png_download(root: Path, rig: SyntheticRig, frames: int = 3) -> Path:
    """The v1 layout (per-frame PNGs); returns the participant folder."""
    participant = root / PARTICIPANT
    participant.mkdir(parents=True)
    (participant / "camera_params.json").write_text(json.dumps(camera_params(rig)))
    for k in range(frames):
        folder = participant / "sequences" / SEQUENCE / f"frame_{k:05d}" / "images-2x-73fps"
        folder.mkdir(parents=True)
        for index, camera in enumerate(CAMERAS):
            cv2.imwrite(str(folder / f"{camera}.png"), frame_image(rig, index, k)[..., ::-1])
    return participant
