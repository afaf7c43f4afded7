"""``threer-ros latency``: the capture node's latency over real ROS 2 topics, measured.

    threer-ros latency --device cuda --width 1100 --working-width 512 --sets 20
    threer-ros latency --backend pow3r --param checkpoint:=pow3r.pth --param pair_batch:=68

Starts the synthetic rig and the capture node in their own processes (as ``threer-ros demo``
does) and reads the node's ``/diagnostics`` after each reconstruction: ``end_to_end_latency_s``
(from the callback of a set's last image to its cloud, poses and TF being published),
``node_overhead_s`` (that latency minus the backend's own time: decoding and resizing the last
image, synchronisation, the hand-off to the worker thread, building and publishing the
PointCloud2) and the backend's stages. The first ``--warmup`` reconstructions (CUDA start-up,
compilation) are left out; the report gives the median, minimum and maximum of each value over
the next ``--sets``, as a table and optionally as JSON. Keep ``--rate`` below the node's
reconstruction rate, or the latency includes the wait behind the previous set.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from threer_ros.bench import environment
from threer_ros.cli import command_parser
from threer_ros.config import read_parameters
from threer_ros.ros.node import PIPELINE_STATUS
from threer_ros.ros.session import synthetic_session

#: The pipeline status values reported (besides the backend's ``stage_*_s``), in seconds.
LATENCY_KEYS = ("end_to_end_latency_s", "node_overhead_s")


def parse_parameters(items: list[str]) -> dict[str, str]:
    """``NAME:=VALUE`` strings (as after ``ros2 run ... -p``) as a dict.

    Raises:
        ValueError: an item without ``:=``, or a name the node does not declare.
    """
    known = read_parameters()
    parameters = {}
    for item in items:
        name, sep, value = item.partition(":=")
        if not sep:
            raise ValueError(f"--param {item!r}: expected NAME:=VALUE, e.g. pair_batch:=68")
        if name not in known:
            raise ValueError(f"--param {item!r}: the capture node has no parameter {name!r} "
                             "(see config/capture.yaml)")
        parameters[name] = value
    return parameters


class ReconstructionLog:
    """The pipeline values of each reconstruction of the node, told apart by the
    ``reconstructions`` counter of its diagnostics (published once a second, so a node that
    reconstructs faster is sampled)."""

    def __init__(self) -> None:
        self.by_count: dict[int, dict[str, float]] = {}

    def update(self, diagnostics: list) -> int:
        """Take the pipeline statuses of ``diagnostics`` (newest last) that describe a
        complete set; returns how many reconstructions are logged."""
        for array in diagnostics:
            for status in array.status:
                if status.name != PIPELINE_STATUS:
                    continue
                values = {kv.key: kv.value for kv in status.values}
                count = int(values["reconstructions"])
                if count and values["missing_cameras_last_set"] == "" \
                        and count not in self.by_count:
                    self.by_count[count] = {k: float(v) for k, v in values.items()
                                            if k in LATENCY_KEYS or k.startswith("stage_")}
        return len(self.by_count)

    def samples(self) -> list[dict[str, float]]:
        """The logged values (seconds), oldest reconstruction first."""
        return [self.by_count[c] for c in sorted(self.by_count)]


def summarize(samples: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Median, minimum, maximum (seconds) and count of each value over ``samples``."""
    keys = dict.fromkeys(k for s in samples for k in s)
    return {key: {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}
            for key in keys if (v := [s[key] for s in samples if key in s])}


def _print_table(summary: dict[str, dict[str, float]]) -> None:
    print(f"{'value':>24} {'median':>10} {'min':>10} {'max':>10}   n")
    for key, row in summary.items():
        name = key.removeprefix("stage_").removesuffix("_s")
        print(f"{name:>24} " + " ".join(f"{row[s] * 1e3:8.1f}ms" for s in
                                         ("median", "min", "max")) + f"   {row['n']}")


def run_latency(args: argparse.Namespace) -> int:
    try:
        parameters = parse_parameters(args.param)
    except ValueError as exc:
        print(f"threer-ros latency: {exc}", file=sys.stderr)
        return 2
    parameters = {"backend": args.backend, "device": args.device,
                  "working_width": str(args.working_width or args.width),
                  "max_rate": "0.0", **parameters}
    log = ReconstructionLog()
    wanted = args.warmup + args.sets
    print(f"latency of the capture node: {parameters}; synthetic rig at {args.width} px, "
          f"{args.rate} Hz; {args.warmup} warm-up + {args.sets} measured reconstructions")
    with synthetic_session(args.out, args.width, args.rate, args.seed, parameters) as session:
        deadline = time.monotonic() + args.timeout
        while not session.probe.wait_for(lambda r: log.update(r.diagnostics) >= wanted,
                                         timeout=1.0):
            problem = session.exited_early()
            if problem or time.monotonic() > deadline:
                print(f"threer-ros latency: {problem or 'timed out'} after "
                      f"{len(log.by_count)} of {wanted} reconstructions", file=sys.stderr)
                return 1
    warmup, measured = log.samples()[:args.warmup], log.samples()[args.warmup:wanted]
    summary = summarize(measured)
    _print_table(summary)
    if args.json:
        report = {"environment": environment(), "command": " ".join(sys.argv),
                  "parameters": parameters, "width": args.width, "rate_hz": args.rate,
                  "summary_s": summary, "samples_s": measured, "warmup_samples_s": warmup}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``threer-ros latency``."""
    p = command_parser(subparsers, "latency",
                       "the capture node's end-to-end latency and overhead", __doc__)
    p.add_argument("--backend", default="mvs", help="the node's backend (default mvs)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--width", type=int, default=320, help="the rig's image width (pixels)")
    p.add_argument("--working-width", type=int, default=0,
                   help="the node's working_width (default: --width)")
    p.add_argument("--rate", type=float, default=0.5, help="rig trigger rate (Hz)")
    p.add_argument("--sets", type=int, default=10, help="reconstructions measured")
    p.add_argument("--warmup", type=int, default=2, help="reconstructions left out first")
    p.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                   help="another node parameter (repeatable), e.g. pair_batch:=68")
    p.add_argument("--seed", type=int, default=0, help="synthetic scene seed")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds to wait for all reconstructions")
    p.add_argument("--out", type=Path, default=Path("out/latency"),
                   help="folder for the rig's calibration")
    p.add_argument("--json", type=Path, default=None, help="also write the report here")
    p.set_defaults(func=run_latency)
