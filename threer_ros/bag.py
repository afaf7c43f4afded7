"""``threer-ros bag``: make capture bags (rosbag2) and summarise bags; no ROS installation needed.

    threer-ros bag from-nersemble --root ~/nersemble --participant 031 --sequence EXP-2-eyes \\
        --frames 0:73 --downscale 4 --out bags/p031_eyes
    threer-ros bag from-synthetic --sets 10 --rate 2 --width 192 --out bags/synthetic
    threer-ros bag info bags/p031_eyes

A capture bag holds, per camera, the images and CameraInfo on the capture node's topics (from
the parameter file, ``--config``), and the rig calibration on ``/tf_static``; every message of
frame set k is stamped t0 + k / fps. Replay it into the node with ``threer-ros replay <bag>``
(docs/bags.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from threer_ros.cli import command_parser
from threer_ros.config import read_parameters
from threer_ros.data.nersemble import FPS, NersembleError, NersembleSequence
from threer_ros.data.rosbag import STORAGES, BagError, BagReader, CaptureBagWriter, bag_info


def parse_frames(spec: str) -> tuple[int, int | None]:
    """``a:b`` -> (a, b), ``a:`` -> (a, None), ``:b`` -> (0, b), ``k`` -> (k, k + 1)."""
    try:
        if ":" not in spec:
            return int(spec), int(spec) + 1
        first, last = spec.split(":")
        start, stop = int(first or 0), int(last) if last else None
    except ValueError:
        raise argparse.ArgumentTypeError(f"frames {spec!r}: use a:b, a:, :b or k") from None
    if start < 0 or (stop is not None and stop <= start):
        raise argparse.ArgumentTypeError(f"frames {spec!r}: need 0 <= a < b")
    return start, stop


def _positive(kind):
    """argparse type: a number of ``kind`` (int or float) greater than zero."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} must be greater than zero")
        return value
    return parse


def _t0_ns(args: argparse.Namespace) -> int:
    return int(round((args.t0 if args.t0 is not None else int(time.time())) * 1e9))


def _writer(args: argparse.Namespace, cameras: tuple[str, ...]) -> CaptureBagWriter:
    params = read_parameters(args.config)
    foreign = [c for c in cameras if c not in params["cameras"]]
    if foreign:
        print(f"note: camera(s) {', '.join(foreign)} are not in the node's parameter file; "
              "give the node a config listing them", file=sys.stderr)
    compressed = args.compressed or params["image_transport"] == "compressed"
    return CaptureBagWriter(args.out, cameras, image_topic=params["image_topic"],
                            camera_info_topic=params["camera_info_topic"],
                            output_frame=params["output_frame"], compressed=compressed,
                            storage=args.storage)


def _summary(path: Path, sets: int) -> None:
    info = bag_info(path)
    print(f"wrote {path}: {sets} frame sets, {info.message_count} messages on "
          f"{len(info.topics)} topics, {info.duration_ns / 1e9:.3f} s ({info.storage})")


def _from_nersemble(args: argparse.Namespace) -> int:
    start, stop = args.frames
    serials = [s.strip().removeprefix("cam_") for s in args.cameras.split(",")] \
        if args.cameras else None
    sequence = NersembleSequence.open(args.root, args.participant, args.sequence, serials)
    t0 = _t0_ns(args)
    print(f"{sequence.layout} sequence {sequence.participant}/{sequence.name}: "
          f"{len(sequence.serials)} cameras, frames {start}:{'' if stop is None else stop}")
    count = 0
    with _writer(args, sequence.cameras) as bag:
        for frames in sequence.frame_sets(start, stop, args.downscale):
            bag.write_set(frames, t0 + frames.stamp_ns)
            count += 1
            print(f"\rframe {start + count - 1}", end="", flush=True)
    print()
    _summary(bag.path, count)
    return 0


def _from_synthetic(args: argparse.Namespace) -> int:
    from threer_ros.data.synthetic import SyntheticRig  # torch: only for this command

    params = read_parameters(args.config)
    rig = SyntheticRig.render(seed=args.seed, width=args.width, names=params["cameras"])
    t0 = _t0_ns(args)
    frames = rig.frame_set()
    with _writer(args, tuple(params["cameras"])) as bag:
        for k in range(args.sets):
            bag.write_set(frames, t0 + round(k * 1e9 / args.rate))
    _summary(bag.path, args.sets)
    return 0


def _describe(bag: BagReader, topic: str) -> str:
    """A few words on the first message of ``topic`` (size, encoding, transforms, points)."""
    msg = next(bag.messages([topic]), None)
    if msg is None:
        return ""
    m = msg.deserialize()
    kind = msg.msgtype.rsplit("/", 1)[-1]
    if kind in ("Image", "CameraInfo"):
        return f"{m.width}x{m.height}" + (f" {m.encoding}" if kind == "Image" else "")
    if kind == "CompressedImage":
        return m.format
    if kind == "TFMessage":
        parents = sorted({t.header.frame_id for t in m.transforms})
        return f"{len(m.transforms)} frames under {', '.join(parents)}"
    if kind == "PointCloud2":
        return f"{m.width * m.height} points in {m.header.frame_id}"
    return ""


def _info(args: argparse.Namespace) -> int:
    info = bag_info(args.bag)
    print(f"bag:      {info.path} ({info.storage})")
    print(f"messages: {info.message_count}")
    print(f"duration: {info.duration_ns / 1e9:.3f} s  (log time {info.start_ns / 1e9:.9f} .. "
          f"{info.end_ns / 1e9:.9f})")
    width = max((len(t.name) for t in info.topics), default=5)
    with BagReader(info.path) as bag:             # opened once for every topic's description
        for t in info.topics:
            latched = " latched" if t.latched else ""
            print(f"  {t.name:<{width}}  {t.msgtype:<32} {t.count:>6}{latched:>8}  "
                  f"{_describe(bag, t.name)}")
    return 0


def _guarded(command):
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (NersembleError, BagError) as exc:
            print(f"threer-ros bag: {exc}", file=sys.stderr)
            return 2
    return run


def _output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True,
                   help="bag to create: a folder NAME/ (NAME.mcap or NAME.db3 also name the "
                        "folder NAME/ and choose the storage)")
    p.add_argument("--storage", choices=STORAGES, default=None,
                   help="storage plugin (default: from --out, else mcap)")
    p.add_argument("--compressed", action="store_true",
                   help="JPEG CompressedImage on <image_topic>/compressed (default: as the "
                        "config's image_transport)")
    p.add_argument("--config", type=Path, default=None,
                   help="the node's parameter file: camera names, topics, output frame "
                        "(default: the installed config/capture.yaml)")
    p.add_argument("--t0", type=float, default=None, metavar="SECONDS",
                   help="stamp of frame 0 in seconds since the epoch (default: now)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``threer-ros bag`` and its sub-commands."""
    bag = command_parser(subparsers, "bag", "make capture bags (rosbag2) and summarise bags",
                         __doc__)
    sub = bag.add_subparsers(dest="bag_command", required=True, metavar="BAG_COMMAND")

    p = sub.add_parser("from-nersemble", help="convert a sequence of a NeRSemble download",
                       description="Decode frames a:b of every camera of a NeRSemble sequence "
                                   f"(v2 videos, benchmark, v1 PNGs) into a capture bag; "
                                   f"frame k is stamped t0 + k / {FPS:g} s.")
    p.add_argument("--root", type=Path, required=True, help="the download folder")
    p.add_argument("--participant", required=True, help="participant id, e.g. 031")
    p.add_argument("--sequence", required=True, help="sequence name, e.g. EXP-2-eyes")
    p.add_argument("--frames", type=parse_frames, default=(0, None), metavar="A:B",
                   help="timesteps a <= k < b (default: all)")
    p.add_argument("--downscale", type=_positive(int), default=1,
                   help="shrink the images by this integer factor (default 1)")
    p.add_argument("--cameras", default="",
                   help="comma-separated serials to convert (default: every calibrated camera)")
    _output_options(p)
    p.set_defaults(func=_guarded(_from_nersemble))

    p = sub.add_parser("from-synthetic", help="record the synthetic 16-camera rig",
                       description="Render the synthetic rig once and write it as N frame sets "
                                   "at RATE sets per second.")
    p.add_argument("--sets", type=_positive(int), default=10, help="frame sets (default 10)")
    p.add_argument("--rate", type=_positive(float), default=2.0,
                   help="sets per second (default 2)")
    p.add_argument("--width", type=_positive(int), default=192,
                   help="image width in pixels (default 192)")
    p.add_argument("--seed", type=int, default=0, help="scene seed (default 0)")
    _output_options(p)
    p.set_defaults(func=_guarded(_from_synthetic))

    p = sub.add_parser("info", help="topics, message counts and duration of a bag")
    p.add_argument("bag", type=Path, help="bag folder, or a .mcap / .db3 file")
    p.set_defaults(func=_guarded(_info))
