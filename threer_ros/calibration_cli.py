"""``threer-ros calibration``: bring a rig calibration from Kalibr, OpenCV or COLMAP, write one
back, check one (alone or against a bag), or write the synthetic rig's; no ROS needed.

    threer-ros calibration import --from kalibr camchain-rig.yaml --out rig.yaml \\
        --names-from-topics --rig-frame mean
    threer-ros calibration import --from opencv pair12.yml pair23.yml --out rig.yaml \\
        --names left,centre,right --scale 0.001
    threer-ros calibration import --from colmap sparse/0 --out rig.yaml \\
        --baseline cam_a cam_b 0.30
    threer-ros calibration export --to kalibr rig.yaml --out camchain-rig.yaml
    threer-ros calibration check rig.yaml --bag bags/synthetic
    threer-ros calibration synthetic --width 192 --out synthetic_rig.yaml

The rig file is docs/calibration.md's YAML: camera-to-rig poses of the optical frames in
metres (what ``rig -> <camera>_optical_frame`` TF carries) and intrinsics in ROS conventions.
docs/calibration.md says, per tool, what is read and how its conventions are converted.
``check`` exits with status 1 when it finds errors, 0 otherwise (warnings included).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from threer_ros.cli import command_parser
from threer_ros.config import read_parameters
from threer_ros.data.calibration import (CalibrationError, RigCalibration,
                                         load_rig_calibration, write_rig_calibration)
from threer_ros.data.calibration_check import Report, bag_report, rig_report
from threer_ros.data.calibration_formats import (FILE_FRAME, MEAN_FRAME, READERS, WRITERS,
                                                 Baseline, build_rig, parse_names, read_source)
from threer_ros.data.rosbag import BagError
from threer_ros.pipeline.types import CameraCalibration


def _image_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give WIDTHxHEIGHT, e.g. 1920x1080") from None
    if width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the size must be positive")
    return width, height


def _writable(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise CalibrationError(f"{path} exists; choose another --out or add --force")


def _print_report(report: Report) -> None:
    for line in report.lines:
        print(line)
    for message in report.warnings:
        print(f"warning: {message}")
    for message in report.errors:
        print(f"error: {message}")


def _import(args: argparse.Namespace) -> int:
    options = {}
    if args.fisheye or args.image_size:
        if args.format != "opencv":
            raise CalibrationError("--fisheye and --image-size are for --from opencv only")
        options = {"fisheye": args.fisheye, "image_size": args.image_size}
    _writable(args.out, args.force)
    source = read_source(args.format, args.files, **options)
    baseline = None
    if args.baseline:
        first, second, metres = args.baseline
        try:
            baseline = Baseline(first, second, float(metres))
        except ValueError:
            raise CalibrationError(f"--baseline: {metres!r} is not a distance in metres") \
                from None
    rig, notes = build_rig(source, names=parse_names(args.names) if args.names else None,
                           names_from_topics=args.names_from_topics, rig_frame=args.rig_frame,
                           scale=args.scale, baseline=baseline, frame_id=args.frame_id)
    for note in notes:
        print(f"note: {note}")
    report = rig_report(rig, str(args.out))
    for message in report.warnings:
        print(f"warning: {message}")
    if report.errors:
        for message in report.errors:
            print(f"error: {message}")
        print(f"not written: {args.out} would not be usable")
        return 1
    write_rig_calibration(args.out, rig)
    print(f"wrote {args.out}: {len(rig.cam_to_rig)} cameras ({', '.join(rig.cam_to_rig)}) in "
          f"frame {rig.frame_id!r}, {len(rig.intrinsics)} with intrinsics")
    return 0


def _export(args: argparse.Namespace) -> int:
    rig = load_rig_calibration(args.rig)
    _writable(args.out, args.force)
    options = {}
    if args.format == "kalibr":
        options["image_topic"] = read_parameters(args.config)["image_topic"]
    elif args.format == "colmap":
        options["image_name"] = args.image_name
    WRITERS[args.format](rig, args.out, **options)
    print(f"wrote {args.out}: {len(rig.cam_to_rig)} cameras in {args.format}'s layout")
    return 0


def _check(args: argparse.Namespace) -> int:
    try:
        rig = load_rig_calibration(args.rig)
    except CalibrationError as exc:
        print(f"error: {exc}")
        return 1
    params = read_parameters(args.config)
    explicit = args.config is not None
    report = rig_report(rig, str(args.rig), params["output_frame"] if explicit else None,
                        params["cameras"] if explicit else None)
    if args.bag is not None:
        report.extend(bag_report(rig, args.bag, params))
    _print_report(report)
    verdict = f"{len(report.errors)} error(s), {len(report.warnings)} warning(s)"
    print(f"{'FAILED' if report.errors else 'OK'}: {verdict}")
    return 1 if report.errors else 0


def _synthetic(args: argparse.Namespace) -> int:
    from threer_ros.data.synthetic import intrinsics, rig_poses  # torch: only for this command

    if args.width <= 0:
        raise CalibrationError(f"--width must be positive, got {args.width}")
    params = read_parameters(args.config)
    _writable(args.out, args.force)
    K, height = intrinsics(args.width)
    names = list(params["cameras"])
    poses = dict(zip(names, rig_poses(len(names))))
    write_rig_calibration(args.out, RigCalibration(
        params["output_frame"], poses,
        {n: CameraCalibration(K.copy(), args.width, height) for n in names}))
    print(f"wrote {args.out}: the synthetic rig's {len(names)} cameras, {args.width}x{height} "
          "images (as threer-ros bag from-synthetic and replay --synthetic render them)")
    return 0


def _guarded(command):
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (CalibrationError, BagError, OSError) as exc:
            print(f"threer-ros calibration: {exc}", file=sys.stderr)
            return 1
    return run


def _common(p: argparse.ArgumentParser, out_help: str) -> None:
    p.add_argument("--out", type=Path, required=True, help=out_help)
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``threer-ros calibration`` and its sub-commands."""
    cal = command_parser(subparsers, "calibration",
                         "import, export and check rig calibrations (Kalibr, OpenCV, COLMAP)",
                         __doc__)
    sub = cal.add_subparsers(dest="calibration_command", required=True,
                             metavar="CALIBRATION_COMMAND")

    p = sub.add_parser("import", help="a Kalibr, OpenCV or COLMAP calibration -> rig YAML",
                       description="Read another tool's calibration and write our rig file "
                                   "(metres, camera-to-rig poses; docs/calibration.md).")
    p.add_argument("--from", dest="format", choices=sorted(READERS), required=True)
    p.add_argument("files", type=Path, nargs="+",
                   help="kalibr: the camchain YAML; opencv: FileStorage files (.yml/.xml); "
                        "colmap: the model folder (or its cameras and images files)")
    _common(p, "rig calibration YAML to write")
    p.add_argument("--names", default="",
                   help="rig camera names: a,b,c (the file's cameras in order) or "
                        "cam0=a,cam1=b (a mapping; unmapped cameras keep their names)")
    p.add_argument("--names-from-topics", action="store_true",
                   help="kalibr: name each camera after its rostopic's namespace "
                        "(/cam_a/image_raw -> cam_a)")
    p.add_argument("--rig-frame", default=None, metavar=f"CAMERA|{MEAN_FRAME}|{FILE_FRAME}",
                   help=f"the rig frame: a camera's optical frame; {MEAN_FRAME}: mean camera "
                        f"centre and chordal mean orientation; {FILE_FRAME}: the file's own "
                        "frame (COLMAP's world). Default: the first camera")
    p.add_argument("--frame-id", default="rig", help="name of the rig frame (default: rig, "
                   "the node's default output_frame)")
    p.add_argument("--scale", type=float, default=None,
                   help="metres per file unit (0.001 for a pattern measured in millimetres; "
                        "COLMAP needs this or --baseline)")
    p.add_argument("--baseline", nargs=3, metavar=("CAM_A", "CAM_B", "METRES"),
                   help="measured distance between two camera centres; sets the scale")
    p.add_argument("--fisheye", action="store_true",
                   help="opencv: 4 distortion coefficients are cv2.fisheye's (ROS equidistant)")
    p.add_argument("--image-size", type=_image_size, default=None, metavar="WxH",
                   help="opencv: image size of cameras whose file gives none")
    p.set_defaults(func=_guarded(_import))

    p = sub.add_parser("export", help="rig YAML -> a Kalibr, OpenCV or COLMAP calibration",
                       description="Write the rig file in another tool's layout (every camera "
                                   "needs intrinsics).")
    p.add_argument("--to", dest="format", choices=sorted(WRITERS), required=True)
    p.add_argument("rig", type=Path, help="rig calibration YAML")
    _common(p, "kalibr: camchain YAML; opencv: .yml or .xml; colmap: model folder")
    p.add_argument("--config", type=Path, default=None,
                   help="kalibr: the node's parameter file, for the rostopic template")
    p.add_argument("--image-name", default="{camera}.png",
                   help="colmap: image name template (default {camera}.png)")
    p.set_defaults(func=_guarded(_export))

    p = sub.add_parser("check", help="print and sanity-check a rig calibration",
                       description="Cameras, intrinsics, baselines and the rig's geometry, with "
                                   "errors (exit status 1) and warnings.")
    p.add_argument("rig", type=Path, help="rig calibration YAML")
    p.add_argument("--bag", type=Path, default=None,
                   help="also check a capture bag's images, CameraInfo and /tf_static")
    p.add_argument("--config", type=Path, default=None,
                   help="the node's parameter file: topics for --bag; when given, also compare "
                        "its cameras and output_frame with the file")
    p.set_defaults(func=_guarded(_check))

    p = sub.add_parser("synthetic", help="write the synthetic rig's calibration",
                       description="The calibration of the synthetic rig that `threer-ros bag "
                                   "from-synthetic` and `replay --synthetic` render (cameras "
                                   "from the config, frame = its output_frame).")
    _common(p, "rig calibration YAML to write")
    p.add_argument("--width", type=int, default=192, help="image width (default 192, as "
                   "bag from-synthetic)")
    p.add_argument("--config", type=Path, default=None, help="the node's parameter file")
    p.set_defaults(func=_guarded(_synthetic))
