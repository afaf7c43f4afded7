"""``threer-ros bench mvs-quality``: the ``mvs`` backend against the ground truth of every
synthetic scene variant (:data:`~threer_ros.data.synthetic.VARIANTS`).

Per variant, one set of 16 cameras is rendered (seeded), reconstructed with the settings of
``config/capture.yaml`` (or ``--config``) and compared with the exact surfaces in view:

* error: distance (metres) from each cloud point to the nearest ground-truth point of any
  surface the cameras see, subject or wall (a wall reconstructed where it is counts as right;
  one fused in front of it does not);
* inliers: fraction of cloud points with an error of at most ``threshold`` (5 mm);
* completeness: fraction of the subject's visible surface within ``threshold`` of the cloud
  (the wall is not required; its completeness is reported as ``wall_completeness``).

The ground truth is sampled from the rendered depth maps (every pixel of every camera, up to
400 000 points), so distances carry up to about half a pixel footprint of sampling error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from threer_ros.data.synthetic import VARIANTS, SyntheticRig, backproject_depth
from threer_ros.geometry.fusion import accuracy_completeness
from threer_ros.pipeline.types import Reconstruction, Reconstructor

#: Ground-truth points sampled per variant.
TRUTH_POINTS = 400_000


def evaluate(rig: SyntheticRig, recon: Reconstruction, threshold: float = 0.005
             ) -> dict[str, float]:
    """Quality of ``recon`` against ``rig``'s ground truth (see the module docstring): the
    median and mean error in metres, inliers and completeness as fractions."""
    truth = rig.surface_points(TRUTH_POINTS)
    subject = rig.surface_points(TRUTH_POINTS, subject_only=True)
    m = accuracy_completeness(recon.points, truth, threshold, visible=subject)
    values = {"points": float(len(recon.points)), "median_m": m.median, "mean_m": m.mean,
              "inliers": m.inliers, "completeness": m.completeness}
    if rig.scene.wall > 0:
        wall = np.concatenate([_wall_points(rig, i) for i in range(len(rig.views))])
        values["wall_completeness"] = accuracy_completeness(
            recon.points, truth, threshold, visible=wall[::max(1, len(wall) // TRUTH_POINTS)]
        ).completeness
    return values


def _wall_points(rig: SyntheticRig, index: int) -> np.ndarray:
    """Rig-frame points of the wall seen by camera ``index``."""
    view = rig.views[index]
    return backproject_depth(np.where(view.subject, np.nan, view.depth), view.calibration)


def error_colours(rig: SyntheticRig, points: np.ndarray, colors: np.ndarray,
                  threshold: float = 0.005) -> np.ndarray:
    """The cloud's colours, red where a point is farther than ``threshold`` from the truth."""
    from scipy.spatial import cKDTree

    distance, _ = cKDTree(rig.surface_points(TRUTH_POINTS)).query(points)
    colours = colors.copy()
    colours[distance > threshold] = (255, 0, 0)
    return colours


def measure(backend: Reconstructor, variant: str, width: int, seed: int = 0
            ) -> tuple[SyntheticRig, Reconstruction, dict[str, float]]:
    """Render ``variant`` at ``width`` pixels, reconstruct it with ``backend`` and evaluate;
    the values include ``cpu_s`` and ``wall_s`` of the reconstruction."""
    rig = SyntheticRig.render(seed=seed, width=width, scene=variant)
    frames = rig.frame_set(0)
    cpu, wall = time.process_time(), time.perf_counter()
    recon = backend.reconstruct(frames)
    timing = {"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall}
    return rig, recon, {**evaluate(rig, recon), **timing}


def preview(rig: SyntheticRig, clouds: list[tuple[np.ndarray, np.ndarray]], zoom: int = 2
            ) -> list[np.ndarray]:
    """Panels: the upper-row middle camera's image, then each cloud (points, colours) rendered
    from that camera at ``zoom`` times its size, red where a point is more than 5 mm off."""
    from threer_ros.data.preview import render_points

    view = rig.views[len(rig.views) // 4]
    height, width = view.image.shape[:2]
    seen = view.calibration.scaled_to(zoom * width, zoom * height)
    return [view.image] + [render_points(points, error_colours(rig, points, colors),
                                         seen.cam_to_rig, seen.K, (zoom * height, zoom * width),
                                         splat=zoom + 1) for points, colors in clouds]


def format_row(variant: str, width: int, values: dict[str, float]) -> str:
    """One line of the table: variant, width, median error (mm), inliers and completeness
    (%), CPU and wall seconds."""
    return (f"{variant:12s} {width:4d} px  median {values['median_m'] * 1e3:6.2f} mm  "
            f"within 5 mm {values['inliers'] * 100:5.1f} %  completeness "
            f"{values['completeness'] * 100:5.1f} %  ({int(values['points'])} points, "
            f"cpu {values['cpu_s']:.1f} s, wall {values['wall_s']:.1f} s)")


def run(args: argparse.Namespace) -> int:
    """``bench mvs-quality``: the table over ``args.variants`` x ``args.widths``."""
    from threer_ros.config import read_parameters
    from threer_ros.pipeline.backends import (make_reconstructor, options_from_parameters,
                                              resolve_device)

    options = options_from_parameters(read_parameters(args.config))
    backend = make_reconstructor("mvs", replace(options, device=resolve_device(args.device)))
    rows = []
    for width in args.widths:
        for variant in args.variants:
            rig, recon, values = measure(backend, variant, width, args.seed)
            rows.append({"variant": variant, "width": width, **values})
            print(format_row(variant, width, values), flush=True)
            if args.previews:
                from threer_ros.data.preview import save_preview

                args.previews.mkdir(parents=True, exist_ok=True)
                save_preview(args.previews / f"mvs_{variant}_{width}.png",
                             preview(rig, [(recon.points, recon.colors)]), palette=64)
    if args.json:
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows},
                                        indent=2))
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``bench``'s options of ``mvs-quality``."""
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                   help="mvs-quality: scene variants (default: all)")
    p.add_argument("--previews", type=Path, default=None,
                   help="mvs-quality: write a preview PNG per variant into this folder")
    p.add_argument("--config", type=Path, default=None,
                   help="mvs-quality: parameter file of the mvs settings (default: "
                        "config/capture.yaml)")
