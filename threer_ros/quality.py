"""``threer-ros bench quality``: how close each network backend's reconstruction comes to the
truth when its network errs like a real one.

The synthetic rig (:class:`~threer_ros.data.synthetic.SyntheticRig`) is reconstructed by each
network backend with a ground-truth "network" that makes realistic errors
(:func:`~threer_ros.pipeline.realistic.realistic`), over a grid of focal-length errors, in the
calibrated ``fast`` and ``full`` alignment modes, with the backend's default settings. Reported
per case:

* accuracy: median and mean distance (metres) of the cloud's points to the true surface, over
  the points inside the capture volume (:data:`VOLUME_RADIUS` about the rig origin: the
  backdrop far behind the head is what an operator crops, not an error of the head);
* completeness: the fraction of true surface points within 2 mm and 5 mm of the cloud;
* with ``full`` alignment (and ``none``: full alignment without using the calibration): the
  cameras' disagreement with the calibration after the Sim(3) (rotation in degrees, centre in
  metres, maxima over cameras) and the median relative error of the estimated focal lengths
  (0 when the calibrated ones are used).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from threer_ros.pipeline.backends import NETWORK_BACKENDS

#: Radius (metres) about the rig origin inside which points are scored (the head is ~0.25 m).
VOLUME_RADIUS = 0.3
#: The focal-length errors of the default grid.
FOCAL_ERRORS = (0.0, 0.03, 0.05, 0.10)


@dataclass(frozen=True)
class QualityRow:
    """One reconstructed case (distances in metres, fractions in [0, 1])."""

    backend: str
    alignment: str
    focal_error: float
    median: float
    mean: float
    completeness_2mm: float
    completeness_5mm: float
    points: int
    rotation_max_deg: float = float("nan")
    centre_max_m: float = float("nan")
    focal_error_estimated: float = float("nan")


def oracle_backend(name: str, frames, options, perturbation, unit: float = 0.4):
    """Backend ``name`` built from ``options`` as the node builds it, with a ground-truth
    network of ``frames`` making the errors of ``perturbation``."""
    from threer_ros.pipeline.fast3r import Fast3RReconstructor
    from threer_ros.pipeline.oracle import OracleFast3R, OraclePairNetwork
    from threer_ros.pipeline.pairwise import (MASt3RReconstructor, PairSettings,
                                              Pow3RReconstructor)

    settings = options.network_settings(name)
    if name == "fast3r":
        return Fast3RReconstructor(OracleFast3R(frames, settings.image_size, unit,
                                                perturbation, settings.device), settings)
    network = OraclePairNetwork(frames, settings.image_size, unit, perturbation,
                                descriptors=name == "mast3r", device=settings.device)
    cls = MASt3RReconstructor if name == "mast3r" else Pow3RReconstructor
    return cls(network, settings, PairSettings.from_options(options))


def score(recon, true_K: np.ndarray, true_poses: np.ndarray, truth: np.ndarray,
          focal_error: float, backend: str, alignment: str) -> QualityRow:
    """The :class:`QualityRow` of ``recon`` against the rig's ``truth`` surface points, true
    intrinsics ``true_K`` (network pixels) and camera-to-rig poses ``true_poses``; an
    uncalibrated reconstruction is first brought into the rig frame by the Sim(3) of its
    camera centres onto the true ones."""
    from threer_ros.geometry.fusion import accuracy_completeness
    from threer_ros.geometry.registration import align_to_reference

    points, info = recon.points, dict(recon.info)
    if not recon.poses_from_calibration:
        to_rig, disagreement = align_to_reference(recon.cam_to_rig, true_poses)
        points = to_rig.apply(points)
        info.update(disagreement.summary())
    points = points[np.linalg.norm(points, axis=1) < VOLUME_RADIUS]
    near = accuracy_completeness(points, truth, 0.002)
    far = accuracy_completeness(points, truth, 0.005)
    row = QualityRow(backend, alignment, focal_error, near.median, near.mean,
                     near.completeness, far.completeness, len(points))
    if "pose_rotation_max_deg" in info:
        focal = np.median(np.abs(recon.intrinsics[:, 0, 0] / true_K[:, 0, 0] - 1))
        row = replace(row, rotation_max_deg=info["pose_rotation_max_deg"],
                      centre_max_m=info["pose_centre_max_m"],
                      focal_error_estimated=float(focal))
    return row


def run_grid(backends, alignments, focal_errors, cameras: int = 8, size: int = 128,
             seed: int = 0, iterations: int = 300, device: str = "cpu",
             shared_focal: bool = True) -> list[QualityRow]:
    """Every backend x alignment (``fast``, ``full``, or ``none``: full without the
    calibration) x focal error on one synthetic rig (images twice the network size, so that
    the network sees downscaled frames as with a real camera); ``shared_focal`` as the node
    parameter."""
    from threer_ros.data.synthetic import SyntheticRig
    from threer_ros.pipeline.backends import BackendOptions
    from threer_ros.pipeline.network import prepare_network_images
    from threer_ros.pipeline.realistic import realistic

    rig = SyntheticRig.render(seed=seed, width=round(2 * size / 1.4582), count=cameras)
    truth = rig.surface_points()
    frames = rig.frame_set(0)
    images = prepare_network_images(frames, size, "cpu")
    rows = []
    for backend in backends:
        for alignment in alignments:
            for error in focal_errors:
                options = BackendOptions(device=device, network_size=size,
                                         alignment="full" if alignment == "none" else alignment,
                                         use_calibration=alignment != "none",
                                         alignment_iterations=iterations,
                                         shared_focal=shared_focal)
                perturbation = realistic(seed, focal_error=error,
                                         focal_spread=0.01 if error else 0.0)
                recon = oracle_backend(backend, frames, options, perturbation) \
                    .reconstruct(frames)
                rows.append(score(recon, images.intrinsics, images.cam_to_rig, truth, error,
                                  backend, alignment))
                print(format_row(rows[-1]), flush=True)
    return rows


def format_row(row: QualityRow) -> str:
    """One Markdown table row (millimetres, percent, degrees)."""
    def mm(v: float) -> str:
        return "-" if not np.isfinite(v) else f"{1e3 * v:.2f}"

    pose = "-" if not np.isfinite(row.rotation_max_deg) else (
        f"{row.rotation_max_deg:.2f} / {mm(row.centre_max_m)} / "
        f"{100 * row.focal_error_estimated:.1f}")
    return (f"| {row.backend} | {row.alignment} | {100 * row.focal_error:.0f} % | "
            f"{mm(row.median)} | {mm(row.mean)} | {100 * row.completeness_2mm:.1f} | "
            f"{100 * row.completeness_5mm:.1f} | {pose} |")


TABLE_HEADER = ("| backend | alignment | focal error | median mm | mean mm | complete 2 mm % | "
                "complete 5 mm % | rotation max deg / centre max mm / focal error % |\n"
                "|---|---|---|---|---|---|---|---|")


def svg_plot(rows: list[QualityRow], before: list[QualityRow] | None = None) -> str:
    """An SVG line plot of the median error (mm) against the focal error, one line per backend
    and alignment (dashed: ``before``)."""
    width, height, left, bottom = 560, 320, 50, 40
    series: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    for tag, group in (("after", rows), ("before", before or [])):
        for r in group:
            series.setdefault((r.backend, r.alignment, tag), []).append(
                (r.focal_error, 1e3 * r.median))
    xs = [x for s in series.values() for x, _ in s] or [0.1]
    ys = [y for s in series.values() for _, y in s if np.isfinite(y)] or [1.0]
    x_max, y_max = max(xs) or 0.1, max(ys) * 1.1

    def at(x: float, y: float) -> str:
        return (f"{left + x / x_max * (width - left - 130):.1f},"
                f"{height - bottom - min(y, y_max) / y_max * (height - bottom - 10):.1f}")

    colours = {"fast3r": "#1f77b4", "mast3r": "#d62728", "pow3r": "#2ca02c"}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="11">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<polyline points="{at(0, y_max)} {at(0, 0)} {at(x_max, 0)}" fill="none" '
             f'stroke="black"/>',
             f'<text x="{left}" y="{height - 8}">focal error (0 .. {100 * x_max:.0f} %)</text>',
             f'<text x="4" y="14">median error, mm (top {y_max:.1f})</text>']
    for k, ((backend, alignment, tag), points) in enumerate(sorted(series.items())):
        dash = ' stroke-dasharray="4,3"' if tag == "before" else ""
        width_px = 2 if alignment == "fast" else 1
        parts.append(f'<polyline points="{" ".join(at(x, y) for x, y in sorted(points))}" '
                     f'fill="none" stroke="{colours.get(backend, "grey")}" '
                     f'stroke-width="{width_px}"{dash}/>')
        parts.append(f'<text x="{width - 125}" y="{20 + 13 * k}" fill="'
                     f'{colours.get(backend, "grey")}">{backend} {alignment} {tag}</text>')
    return "\n".join(parts + ["</svg>"])


def run(args: argparse.Namespace, device: str) -> int:
    """``bench quality``: the grid, printed as a Markdown table, optionally JSON and SVG."""
    print(TABLE_HEADER, flush=True)
    rows = run_grid([b for b in args.backends if b in NETWORK_BACKENDS], args.alignments,
                    args.focal_errors, args.cameras[0], args.network_size, args.seed,
                    args.iterations, device, args.shared_focal)
    if args.json:
        args.json.write_text(json.dumps({"shared_focal": args.shared_focal,
                                         "rows": [asdict(r) for r in rows]}, indent=1))
    if args.plot:
        before = None
        if args.before:
            before = [QualityRow(**r) for r in json.loads(args.before.read_text())["rows"]]
        args.plot.write_text(svg_plot(rows, before))
    return 0
