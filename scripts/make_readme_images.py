"""Make the pictures of the README's "Bring your own rig" walk-through with the project's own
code, the synthetic 16-camera rig standing in for the reader's rig:

    .venv/bin/python scripts/make_readme_images.py            # -> docs/images/*.png

1. ``rig_layout.png``: the camera frames of the rig calibration file, seen from behind the
   subject, with the camera names (what to compare with the real rig after the import).
2. ``first_reconstruction.png``: the preview that ``threer-ros reconstruct`` writes for one
   set of images saved from the cameras (input image beside the cloud seen from that camera).
3. ``rviz_view.png``: the fused cloud with the camera frames drawn as RViz draws TF axes
   (x red, y green, z blue), from a viewpoint above and beside the rig: what RViz shows with
   ``config/threer.rviz`` (rendered here with ``threer_ros.data.preview``, not a screenshot).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from threer_ros.cli import main as threer_ros
from threer_ros.config import read_parameters
from threer_ros.data.calibration import load_rig_calibration, save_rig_calibration
from threer_ros.data.ply import read_ply
from threer_ros.data.preview import render_points
from threer_ros.data.synthetic import SyntheticRig
from threer_ros.geometry.transforms import look_at

IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"
VIEW_SIZE = (420, 640)                  # (height, width) of the rendered views, pixels
#: Virtual cameras (centre, target, focal length in pixels), rig frame (x towards the
#: cameras, z up): behind the subject facing the cameras; above and beside the rig.
LAYOUT_VIEWER = ((-1.0, 0.0, 0.15), (0.6, 0.0, 0.0), 700.0)
RVIZ_VIEWER = ((1.95, -0.7, 0.85), (0.2, 0.0, -0.05), 700.0)
AXIS_COLOURS = np.array([[230, 40, 40], [40, 200, 40], [60, 90, 255]], np.uint8)


def segment(start: np.ndarray, end: np.ndarray, step: float = 0.001) -> np.ndarray:
    """Points every ``step`` metres from ``start`` to ``end`` (rig frame), to draw a line."""
    count = max(2, int(np.linalg.norm(end - start) / step))
    return start + np.linspace(0.0, 1.0, count)[:, None] * (end - start)


def camera_glyph(cam_to_rig: np.ndarray, K: np.ndarray, size: tuple[int, int],
                 axis_m: float = 0.08, depth_m: float = 0.06) -> tuple[np.ndarray, np.ndarray]:
    """Points and colours of one camera: its TF axes (x red, y green, z blue, ``axis_m``
    long) and its image frustum cut at ``depth_m`` (white). Metres, rig frame."""
    centre, axes = cam_to_rig[:3, 3], cam_to_rig[:3, :3]
    parts = [segment(centre, centre + axis_m * axes[:, i]) for i in range(3)]
    colours = [np.repeat(AXIS_COLOURS[i][None], len(p), 0) for i, p in enumerate(parts)]
    width, height = size
    corners = np.array([[0, 0, 1], [width, 0, 1], [width, height, 1], [0, height, 1]], float)
    corners = (corners @ np.linalg.inv(K).T) * depth_m @ axes.T + centre
    lines = [segment(centre, c) for c in corners] + \
        [segment(corners[i], corners[(i + 1) % 4]) for i in range(4)]
    parts += lines
    colours += [np.full((len(p), 3), 235, np.uint8) for p in lines]
    return np.concatenate(parts), np.concatenate(colours)


def viewer(centre: tuple[float, float, float], target: tuple[float, float, float],
           focal: float) -> tuple[np.ndarray, np.ndarray]:
    """(camera-to-rig pose, K) of a virtual camera at ``centre`` looking at ``target`` (z up)."""
    height, width = VIEW_SIZE
    K = np.array([[focal, 0, (width - 1) / 2], [0, focal, (height - 1) / 2], [0, 0, 1]])
    return look_at(np.array(centre), np.array(target), np.array([0.0, 0.0, 1.0])), K


def render_rig(calibration: Path, points: np.ndarray, colours: np.ndarray,
               pose: np.ndarray, K: np.ndarray, labels: list[str] | None = None) -> Image.Image:
    """The cloud and every camera of the calibration file from the virtual camera (pose, K);
    with ``labels`` (camera names in rig order), each camera's number in that order (1 = the
    first) beside its centre: above it for cameras above the rig's origin, else below."""
    rig = load_rig_calibration(calibration)
    cameras = [rig.calibration_for(name, None) for name in rig.cam_to_rig]
    glyphs = [camera_glyph(c.cam_to_rig, c.K, (c.width, c.height)) for c in cameras]
    all_points = np.concatenate([points] + [g[0] for g in glyphs])
    all_colours = np.concatenate([colours] + [g[1] for g in glyphs])
    image = Image.fromarray(render_points(all_points, all_colours, pose, K, VIEW_SIZE, splat=2))
    if labels:
        draw = ImageDraw.Draw(image)
        world_to_view = np.linalg.inv(pose)
        for name, camera in zip(rig.cam_to_rig, cameras):
            centre = camera.cam_to_rig[:3, 3]
            u, v, w = K @ (world_to_view[:3, :3] @ centre + world_to_view[:3, 3])
            draw.text((u / w - 4, v / w + (22 if centre[2] < 0 else -34)),
                      str(labels.index(name) + 1), fill=(255, 255, 160))
    return image


def make_images(out: Path, width: int, work: Path) -> None:
    """Render the synthetic rig at ``width`` pixels, reconstruct it with ``threer-ros
    reconstruct`` (backend mvs, CPU) in ``work``, and write the three PNGs into ``out``."""
    names = read_parameters()["cameras"]
    rig = SyntheticRig.render(seed=0, width=width, names=names)
    shots, calibration = work / "shots", work / "my_rig_calibration.yaml"
    shots.mkdir(parents=True)
    for view in rig.views:
        Image.fromarray(view.image).save(shots / f"{view.name}.png")
    save_rig_calibration(calibration, "rig", {v.name: v.calibration for v in rig.views})
    status = threer_ros(["reconstruct", str(shots), "--calibration", str(calibration),
                         "--backend", "mvs", "--device", "cpu", "--out", str(work / "first")])
    if status != 0:
        raise RuntimeError(f"threer-ros reconstruct failed with status {status}")
    out.mkdir(parents=True, exist_ok=True)
    # a palette of 256 colours keeps the PNG small; the preview is otherwise as written
    Image.open(work / "first" / "mvs_preview.png").quantize(256).save(
        out / "first_reconstruction.png", optimize=True)
    points, colours, _ = read_ply(work / "first" / "mvs.ply")
    render_rig(calibration, points, np.full_like(colours, 110),
               *viewer(*LAYOUT_VIEWER), labels=names).save(out / "rig_layout.png", optimize=True)
    render_rig(calibration, points, colours, *viewer(*RVIZ_VIEWER)).save(
        out / "rviz_view.png", optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=128, help="camera image width, pixels")
    parser.add_argument("--out", type=Path, default=IMAGES, help="folder of the PNGs")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        make_images(args.out, args.width, Path(work))
    print(f"wrote {', '.join(sorted(p.name for p in args.out.glob('*.png')))} in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
