"""``threer-ros demo``: the synthetic rig and the capture node over real ROS 2 topics.

Three processes talk over DDS: the synthetic rig publisher (``threer-ros replay --synthetic``),
the capture node (``mvs`` backend) and this command, which subscribes like RViz, waits for the
first fused cloud of all cameras, writes it as PLY with a PNG preview, and prints its accuracy
against the synthetic ground truth and the node's stage timings.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from threer_ros.cli import command_parser
from threer_ros.config import read_parameters
from threer_ros.data.ply import write_ply
from threer_ros.data.preview import render_points, save_preview
from threer_ros.geometry.fusion import accuracy_completeness
from threer_ros.ros.convert import cloud_from_msg
from threer_ros.ros.probe import Recorded
from threer_ros.ros.session import SyntheticSession, synthetic_session


def run_demo(args: argparse.Namespace) -> int:
    out: Path = args.out
    cameras = len(read_parameters()["cameras"])
    print(f"rendering the synthetic {cameras}-camera rig at {args.width} px ...")
    started = time.monotonic()
    with synthetic_session(out, args.width, args.rate, args.seed,
                           {"device": args.device}) as session:
        # a set with every camera (the first may miss some while DDS discovery settles), and
        # diagnostics that describe that set
        got = session.probe.wait_for(
            lambda r: (cloud := _complete_cloud(r, cameras)) is not None
            and session.pipeline_values().get("points_published") == str(cloud.width)
            and len(r.tf_static) >= cameras, timeout=args.timeout)
        problem = session.exited_early()
        if problem:
            print(f"demo: {problem}", file=sys.stderr)
            return 1
        if not got:
            print(f"demo: no reconstruction within {args.timeout:.0f} s", file=sys.stderr)
            return 1
        return _report(session, out, time.monotonic() - started)


def _complete_cloud(recorded: Recorded, cameras: int):
    """The newest cloud whose set had every camera (matched to its PoseArray by stamp)."""
    full = {(p.header.stamp.sec, p.header.stamp.nanosec) for p in recorded.poses
            if len(p.poses) == cameras}
    for cloud in reversed(recorded.clouds):
        if (cloud.header.stamp.sec, cloud.header.stamp.nanosec) in full:
            return cloud
    return None


def _report(session: SyntheticSession, out: Path, wall_s: float) -> int:
    probe, rig = session.probe, session.rig
    cloud = _complete_cloud(probe.recorded, len(rig.views))
    points, colors, confidence = cloud_from_msg(cloud)
    write_ply(out / "cloud.ply", points, colors, confidence)
    front = rig.views[len(rig.views) // 4]                   # upper row, near the middle
    height, width = front.image.shape[:2]
    view = front.calibration.scaled_to(2 * width, 2 * height)  # a preview twice the input size
    rendered = render_points(points, colors, view.cam_to_rig, view.K, (2 * height, 2 * width),
                             splat=5)
    save_preview(out / "preview.png", [front.image, rendered])
    metrics = accuracy_completeness(points, rig.surface_points(), threshold=0.005)
    values = session.pipeline_values()
    print(f"\nfused cloud: {len(points)} points from {len(rig.views)} cameras in frame "
          f"'{cloud.header.frame_id}', {len(probe.recorded.tf_static)} camera frames on "
          "/tf_static")
    print("accuracy against the synthetic ground truth:")
    print(f"  distance to the true surface: mean {metrics.mean * 1e3:.2f} mm, "
          f"median {metrics.median * 1e3:.2f} mm")
    print(f"  completeness (true surface within 5 mm): {metrics.completeness * 100:.1f} %")
    print("node timings (this set):")
    for key, value in values.items():
        if key.startswith("stage_") or key in ("end_to_end_latency_s", "node_overhead_s"):
            print(f"  {key.removeprefix('stage_').removesuffix('_s'):>22}: "
                  f"{float(value) * 1e3:8.1f} ms")
    print(f"wrote {out / 'cloud.ply'} and {out / 'preview.png'} ({wall_s:.1f} s after start)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``threer-ros demo``."""
    p = command_parser(subparsers, "demo",
                       "synthetic rig -> capture node -> PLY + preview", __doc__)
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder")
    p.add_argument("--width", type=int, default=192, help="image width in pixels")
    p.add_argument("--rate", type=float, default=1.0, help="rig trigger rate in Hz")
    p.add_argument("--seed", type=int, default=0, help="synthetic scene seed")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for a cloud")
    p.set_defaults(func=run_demo)
