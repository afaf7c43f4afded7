"""``threer-ros reconstruct``: images in, one reconstruction per backend out (no ROS needed).

    threer-ros reconstruct views/ --backend fast3r --backend mast3r --backend pow3r --out out/
    threer-ros reconstruct a.png b.png c.png --backend mast3r --weights mast3r.pth --out out/
    threer-ros reconstruct views/ --calibration rig.yaml --backend pow3r --out out/
    threer-ros reconstruct --nersemble ~/nersemble --participant 031 --sequence EXP-2-eyes \
        --frame 0 --backend fast3r --backend mast3r --backend pow3r --out out/p031

Images (PNG/JPEG files, or folders of them, sorted by name) are one synchronized set; each
image's file stem is its camera name. ``--nersemble`` takes the set instead from timestep
``--frame`` of every camera of a NeRSemble download, with the dataset's calibration (the seed
experiment: participant 031, frame 0; docs/bags.md). With ``--calibration`` (the rig
calibration YAML of ``docs/calibration.md``, with intrinsics) the clouds are metric and in the
rig frame, else in the network's frame and unit. For every backend the output folder gets
``<backend>.ply`` (x, y, z, rgb, confidence), ``<backend>_poses.json`` (camera-to-frame poses,
intrinsics, timings, diagnostics) and ``<backend>_preview.png`` (an input image beside the
cloud seen from that camera); with several backends also ``comparison.json`` (timings, pose and
cloud differences against the first backend). Settings not given here come from the node's
parameter file (``--config``), so offline and live runs agree.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from threer_ros.cli import command_parser
from threer_ros.config import read_parameters
from threer_ros.data.calibration import load_rig_calibration
from threer_ros.data.ply import write_ply
from threer_ros.data.preview import render_points, save_preview
from threer_ros.pipeline.backends import (BACKENDS, make_reconstructor, options_from_parameters,
                                          resolve_device)
from threer_ros.pipeline.compare import CompareReconstructor, Comparison
from threer_ros.pipeline.frames import FramePreparer, resize_frame
from threer_ros.pipeline.types import FrameSet, Reconstruction

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def image_files(paths: list[Path]) -> list[Path]:
    """The image files named by ``paths`` (files, or folders whose images are taken sorted)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ValueError(f"{path}: no {'/'.join(IMAGE_SUFFIXES)} images in this folder")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"{path}: no such file or folder")
    names = [f.stem for f in files]
    if len(set(names)) != len(names):
        raise ValueError("two images share a file name (the camera name): "
                         f"{sorted(n for n in names if names.count(n) > 1)}")
    return files


def load_frame_set(files: list[Path], calibration: Path | None) -> FrameSet:
    """Read ``files`` as one set (stamp 0), with the calibration file's cameras if given,
    undistorted, at their size."""
    from PIL import Image

    rig = load_rig_calibration(calibration) if calibration else None
    preparer = FramePreparer()
    frames = []
    for path in files:
        try:
            rgb = np.array(Image.open(path).convert("RGB"))
        except OSError as exc:
            raise ValueError(f"{path}: not a readable image ({exc})") from None
        camera = path.stem
        calib = None
        if rig is not None:
            calib = rig.calibration_for(camera, None)
            if calib is None:
                raise ValueError(f"{calibration}: no intrinsics for camera {camera!r} (the "
                                 f"file stem of {path.name}); add K, width and height")
        frames.append(preparer.prepare(camera, rgb, 0, calib))
    return FrameSet(tuple(frames), 0)


def nersemble_frame_set(root: Path, participant: str, sequence: str, frame: int
                        ) -> FrameSet:
    """Timestep ``frame`` of every camera of a NeRSemble sequence, calibrated (rig = the
    dataset's world frame, metres), undistorted, at their size."""
    from threer_ros.data.nersemble import NersembleSequence

    raw = next(NersembleSequence.open(root, participant, sequence).frame_sets(frame, frame + 1))
    preparer = FramePreparer()
    return FrameSet(tuple(preparer.prepare(f.camera, f.image, f.stamp_ns, f.calibration)
                          for f in raw.frames), raw.stamp_ns)


def poses_document(backend: str, recon: Reconstruction, frame: str) -> dict:
    """What ``<backend>_poses.json`` holds."""
    return {
        "backend": backend, "frame": frame, "metric": recon.poses_from_calibration,
        "cameras": {name: {"cam_to_frame": recon.cam_to_rig[i].tolist(),
                           "K": recon.intrinsics[i].tolist()}
                    for i, name in enumerate(recon.cameras)},
        "points": len(recon.points), "timings_s": recon.timings_s, "info": recon.info,
    }


def preview(recon: Reconstruction, frames: FrameSet, working_width: int, zoom: int = 2
            ) -> list[np.ndarray]:
    """The rig's middle camera: its input image (shrunk to ``working_width``) beside the cloud
    seen from that camera (at ``zoom`` times the backend's working resolution)."""
    index = len(recon.cameras) // 2
    K = recon.intrinsics[index].copy()
    height, width = round(2 * K[1, 2] + 1), round(2 * K[0, 2] + 1)   # centred principal point
    K[:2] *= zoom
    K[:2, 2] += 0.5 * (zoom - 1)                                       # pixel centres
    render = render_points(recon.points, recon.colors, recon.cam_to_rig[index], K,
                           (zoom * height, zoom * width), splat=zoom + 1)
    return [resize_frame(frames.frames[index], working_width).image, render]


def write_outputs(out: Path, backend: str, recon: Reconstruction, frames: FrameSet,
                  frame: str, working_width: int) -> None:
    """``<backend>.ply``, ``<backend>_poses.json`` and ``<backend>_preview.png`` (input shrunk
    to ``working_width``) in ``out``."""
    write_ply(out / f"{backend}.ply", recon.points, recon.colors, recon.confidence)
    (out / f"{backend}_poses.json").write_text(
        json.dumps(poses_document(backend, recon, frame), indent=1))
    save_preview(out / f"{backend}_preview.png", preview(recon, frames, working_width))


def run(args: argparse.Namespace) -> int:
    params = read_parameters(args.config)
    backends = args.backend or [params["backend"]]
    options = replace(options_from_parameters(params),
                      device=resolve_device(args.device or params["device"]),
                      checkpoint=args.weights or "",
                      **({"alignment": args.alignment} if args.alignment else {}))
    if args.weights and len(backends) > 1:
        raise ValueError("--weights names one checkpoint: give one --backend, or put the "
                         "weights where `threer-ros weights download` does")
    if args.nersemble is not None:
        if args.images or args.calibration:
            raise ValueError("--nersemble brings its own images and calibration: give no image "
                             "files and no --calibration with it")
        if not (args.participant and args.sequence):
            raise ValueError("--nersemble needs --participant and --sequence")
        frames = nersemble_frame_set(args.nersemble, args.participant, args.sequence,
                                     args.frame)
    elif args.images:
        frames = load_frame_set(image_files(args.images), args.calibration)
    else:
        raise ValueError("give image files or folders, or --nersemble ROOT")
    print(f"{len(frames.frames)} images: {', '.join(frames.cameras)}")
    built = {name: make_reconstructor(name, options) for name in backends}
    with tqdm(total=len(built), unit="backend", desc="reconstructing") as bar:
        if len(built) == 1:
            comparison = Comparison({backends[0]: built[backends[0]].reconstruct(frames)})
            bar.update()
        else:
            comparison = CompareReconstructor(built).compare_set(
                frames, done=lambda name: (bar.set_postfix_str(name), bar.update()))
    args.out.mkdir(parents=True, exist_ok=True)
    frame = params["output_frame"] if frames.is_calibrated else "network"
    for name, recon in comparison.reconstructions.items():
        write_outputs(args.out, name, recon, frames, frame, options.working_width)
        stages = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in recon.timings_s.items())
        print(f"{name}: {len(recon.points)} points ({stages}) -> {args.out / (name + '.ply')}")
    for name, error in comparison.errors.items():
        print(f"{name}: failed: {error}", file=sys.stderr)
    if len(backends) > 1:
        (args.out / "comparison.json").write_text(json.dumps(
            {"primary": backends[0], "backends": comparison.summary,
             "errors": comparison.errors}, indent=1))
    return 1 if comparison.errors else 0


def _main(args: argparse.Namespace) -> int:
    from threer_ros.models.checkpoint import CheckpointError
    from threer_ros.weights import WeightsError

    try:
        return run(args)
    except (ValueError, WeightsError, CheckpointError) as exc:
        print(f"threer-ros reconstruct: {exc}", file=sys.stderr)
        return 2


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``threer-ros reconstruct``."""
    p = command_parser(subparsers, "reconstruct",
                       "images in, PLY + poses + preview per backend out (offline)", __doc__)
    p.add_argument("images", type=Path, nargs="*", help="image files or folders of images")
    p.add_argument("--backend", action="append", choices=sorted(BACKENDS),
                   help="backend to run; repeat to compare several (default: the config's)")
    p.add_argument("--weights", default="", help="checkpoint of the (single) network backend "
                   "(default: the weights cache)")
    p.add_argument("--calibration", type=Path, default=None,
                   help="rig calibration YAML with intrinsics (metric cloud in the rig frame)")
    p.add_argument("--alignment", choices=("auto", "fast", "full"), default=None,
                   help="override the config's alignment")
    p.add_argument("--device", default="", help="auto, cpu, cuda (default: the config's)")
    p.add_argument("--config", type=Path, default=None,
                   help="parameter file with the other settings (default: config/capture.yaml)")
    p.add_argument("--out", type=Path, default=Path("out/reconstruct"), help="output folder")
    nersemble = p.add_argument_group("a NeRSemble download instead of image files")
    nersemble.add_argument("--nersemble", type=Path, default=None, metavar="ROOT",
                           help="the download folder (docs/bags.md)")
    nersemble.add_argument("--participant", default="", help="participant id, e.g. 031")
    nersemble.add_argument("--sequence", default="", help="sequence name, e.g. EXP-2-eyes")
    nersemble.add_argument("--frame", type=int, default=0, help="timestep (default 0)")
    p.set_defaults(func=_main)
