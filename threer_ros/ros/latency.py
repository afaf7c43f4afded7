"""``threer-ros latency``: the capture node's latency over real ROS 2 topics, measured.

    threer-ros latency --device cuda --width 1100 --working-width 512 --sets 20
    threer-ros latency --backend pow3r --param checkpoint:=pow3r.pth --param pair_batch:=68

Starts the synthetic rig and the capture node in their own processes (as ``threer-ros demo``
does), then measures two things:

* the stream, as a subscriber sees it: every cloud's trigger-to-cloud latency (receipt time
  minus the set's stamp, which is the rig's trigger time on the same host's clock), p50 and p99,
  sets reconstructed per second, and the fraction of the triggered sets that came out;
* the node's ``/diagnostics`` (published once a second, so at higher rates a sample of the
  sets): ``end_to_end_latency_s`` (from the callback of a set's last image to its cloud, poses
  and TF being published), ``node_overhead_s`` (that latency minus the backend's own time:
  decoding and resizing the last image, synchronisation, the hand-off to the worker thread,
  building and publishing the PointCloud2), the backend's stages, and the GPU memory.

The first ``--warmup`` clouds (CUDA start-up, compilation) are left out and the next ``--sets``
measured (or, with ``--duration``, every cloud of that many seconds: a soak); the report is a
table and optionally JSON (with every cloud's stamp and receipt time, for latency-over-time
plots, and the node's memory at every status). ``--compressed`` has the rig send JPEG
``CompressedImage``; ``--workers N`` starts N capture nodes that share the sets (one per GPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from threer_ros.bench import environment
from threer_ros.cli import command_parser
from threer_ros.config import read_parameters
from threer_ros.ros.node import PIPELINE_STATUS
from threer_ros.ros.session import SyntheticSession, synthetic_session

#: The pipeline status values reported (besides the backend's ``stage_*_s``): seconds, and
#: the device memory in MiB where the backend runs on a GPU.
LATENCY_KEYS = ("end_to_end_latency_s", "node_overhead_s", "gpu_memory_allocated_mib",
                "gpu_memory_reserved_mib", "host_memory_rss_mib")


#: The node's pipeline values printed when the measurement fails (what it did with the sets).
DIAGNOSIS = ("state", "sets_completed", "sets_partial", "sets_dropped_sync", "sets_dropped_busy",
             "sets_rate_limited", "reconstructions", "reconstruction_failures",
             "missing_cameras_last_set", "frames_late", "sync_resets")


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


def memory_series(diagnostics: list) -> list[dict[str, float]]:
    """The node's memory at every pipeline status of ``diagnostics`` (one a second, whatever
    its sets): ``stamp_ns`` (the status's stamp, the node host's clock) and each ``*_mib``
    value, oldest first; for memory over a long run."""
    series = []
    for array in diagnostics:
        for status in array.status:
            if status.name != PIPELINE_STATUS:
                continue
            point = {kv.key: float(kv.value) for kv in status.values
                     if kv.key.endswith("_mib") and kv.value}
            if point:
                stamp = array.header.stamp
                series.append({"stamp_ns": stamp.sec * 1_000_000_000 + stamp.nanosec, **point})
    return series


def summarize(samples: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Median, minimum, maximum (seconds) and count of each value over ``samples``."""
    keys = dict.fromkeys(k for s in samples for k in s)
    return {key: {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}
            for key in keys if (v := [s[key] for s in samples if key in s])}


def stream_report(arrivals: list[tuple[int, int]], rate_hz: float) -> dict[str, float]:
    """Throughput and latency of a stream of clouds as a subscriber saw them.

    Args:
        arrivals: ``(stamp_ns, received_ns)`` of each cloud, in order of receipt; the stamp is
            the set's trigger time, the receipt time is the same host's wall clock.
        rate_hz: The rig's trigger rate.

    Returns:
        ``clouds``, ``sets_per_s`` (clouds over the time between the first and the last receipt),
        ``sets_triggered`` (triggers between the first and the last cloud's stamp),
        ``fraction_reconstructed``, and the trigger-to-cloud latency's ``latency_p50_s``,
        ``latency_p99_s`` and ``latency_max_s``.
    """
    if len(arrivals) < 2:
        raise ValueError(f"a stream report needs at least 2 clouds, got {len(arrivals)}")
    stamps = np.array([a[0] for a in arrivals], np.int64)
    received = np.array([a[1] for a in arrivals], np.int64)
    latency = (received - stamps) * 1e-9
    triggered = int(round((stamps.max() - stamps.min()) * 1e-9 * rate_hz)) + 1
    return {"clouds": len(arrivals),
            "sets_per_s": (len(arrivals) - 1) / ((received[-1] - received[0]) * 1e-9),
            "sets_triggered": triggered,
            "fraction_reconstructed": min(1.0, len(arrivals) / triggered),
            "latency_p50_s": float(np.percentile(latency, 50)),
            "latency_p99_s": float(np.percentile(latency, 99)),
            "latency_max_s": float(latency.max())}


def drift_report(arrivals: list[tuple[int, int]], samples: list[dict[str, float]]
                 ) -> dict[str, float]:
    """What changed over a long run (a soak): the first and the last quarter's median of the
    trigger-to-cloud latency (seconds, from ``arrivals`` as in :func:`stream_report`) and of
    each memory value of the node's ``samples`` (``*_mib``), keyed ``<name>_first`` and
    ``<name>_last``; quarters of fewer than 2 items give nothing."""
    def quarters(values: list[float]) -> dict[str, float]:
        q = len(values) // 4
        return {"first": statistics.median(values[:q]), "last": statistics.median(values[-q:])} \
            if q >= 2 else {}

    latency = [(received - stamp) * 1e-9 for stamp, received in arrivals]
    series = {"latency_p50_s": latency}
    series.update({key: [s[key] for s in samples if key in s]
                   for key in dict.fromkeys(k for s in samples for k in s) if key.endswith("_mib")})
    return {f"{name}_{part}": value for name, values in series.items()
            for part, value in quarters(values).items()}


def _print_table(summary: dict[str, dict[str, float]]) -> None:
    print(f"{'value':>24} {'median':>10} {'min':>10} {'max':>10}   n")
    for key, row in summary.items():
        if key.endswith("_mib"):
            print(f"{key.removesuffix('_mib'):>24} " + " ".join(
                f"{row[s]:6.0f} MiB" for s in ("median", "min", "max")) + f"   {row['n']}")
            continue
        name = key.removeprefix("stage_").removesuffix("_s")
        print(f"{name:>24} " + " ".join(f"{row[s] * 1e3:8.1f}ms" for s in
                                         ("median", "min", "max")) + f"   {row['n']}")


def _counters(session: SyntheticSession) -> str:
    """The node's set and frame counters (:data:`DIAGNOSIS`) from its newest status: how many
    sets came complete, partial, were dropped, and why."""
    values = session.pipeline_values()
    return ", ".join(f"{k} {values[k]}" for k in DIAGNOSIS if k in values)


def _wait_for_clouds(session: SyntheticSession, count: int, deadline: float) -> bool:
    """Wait until the probe has seen ``count`` clouds; False, with the reason printed, when a
    child exits first or the monotonic ``deadline`` passes."""
    while not session.probe.wait_for(lambda r: len(r.cloud_arrivals) >= count, timeout=1.0):
        problem = session.exited_early()
        if problem or time.monotonic() > deadline:
            print(f"threer-ros latency: {problem or 'timed out'} after "
                  f"{len(session.probe.recorded.cloud_arrivals)} of {count} clouds; the "
                  f"node's last status: {_counters(session) or 'none received'}",
                  file=sys.stderr)
            return False
    return True


def run_latency(args: argparse.Namespace) -> int:
    try:
        parameters = parse_parameters(args.param)
    except ValueError as exc:
        print(f"threer-ros latency: {exc}", file=sys.stderr)
        return 2
    parameters = {"backend": args.backend, "device": args.device,
                  "working_width": str(args.working_width or args.width),
                  "max_rate": "0.0",
                  "image_transport": "compressed" if args.compressed else "raw", **parameters}
    log = ReconstructionLog()
    measured_for = f"{args.duration:g} s" if args.duration > 0 else f"{args.sets} clouds"
    print(f"latency of the capture node: {parameters}"
          + (f", {args.workers} workers" if args.workers > 1 else "")
          + f"; synthetic rig at {args.width} px, {args.rate} Hz"
          f"{', JPEG' if args.compressed else ''}; {args.warmup} warm-up clouds, then "
          f"measured for {measured_for}")
    with synthetic_session(args.out, args.width, args.rate, args.seed, parameters,
                           compressed=args.compressed, workers=args.workers) as session:
        deadline = time.monotonic() + args.timeout
        if args.duration > 0:
            if not _wait_for_clouds(session, args.warmup, deadline):
                return 1
            end = time.monotonic() + args.duration
            while (left := end - time.monotonic()) > 0:     # a measurement of fixed length
                if problem := session.exited_early():
                    print(f"threer-ros latency: {problem}", file=sys.stderr)
                    return 1
                time.sleep(min(1.0, left))
            wanted = len(session.probe.recorded.cloud_arrivals)
        else:
            wanted = args.warmup + args.sets
            if not _wait_for_clouds(session, wanted, deadline):
                return 1
        arrivals = list(session.probe.recorded.cloud_arrivals[args.warmup:wanted])
        # the node's diagnostics come once a second: wait for the one after the last cloud
        session.probe.wait_for(lambda r: log.update(r.diagnostics) >= 0
                               and max(log.by_count, default=0) >= wanted, timeout=3.0)
        counters = _counters(session)
        first_measured = arrivals[0][0] if arrivals else 0
        memory = [m for m in memory_series(session.probe.recorded.diagnostics)
                  if m["stamp_ns"] >= first_measured]
    stream = stream_report(arrivals, args.rate)
    samples = log.samples()
    warmup = [s for c, s in zip(sorted(log.by_count), samples) if c <= args.warmup]
    measured = [s for c, s in zip(sorted(log.by_count), samples) if args.warmup < c <= wanted]
    summary = summarize(measured)
    drift = drift_report(arrivals, measured)
    print(f"{stream['clouds']} clouds at {stream['sets_per_s']:.2f} sets/s, "
          f"{stream['fraction_reconstructed']:.0%} of {stream['sets_triggered']} triggered sets; "
          f"trigger-to-cloud latency p50 {stream['latency_p50_s'] * 1e3:.1f} ms, "
          f"p99 {stream['latency_p99_s'] * 1e3:.1f} ms, max {stream['latency_max_s'] * 1e3:.1f} ms")
    print(f"the node's sets so far: {counters}")
    if drift:
        print("first -> last quarter of the run: " + ", ".join(
            f"{name} {drift[name + '_first']:.4g} -> {drift[name + '_last']:.4g}"
            for name in dict.fromkeys(k.rsplit("_", 1)[0] for k in drift)))
    print(f"the node's diagnostics (sampled at 1 Hz: {len(measured)} of the measured sets):")
    _print_table(summary)
    if args.json:
        report = {"environment": environment(), "command": " ".join(sys.argv),
                  "parameters": parameters, "width": args.width, "rate_hz": args.rate,
                  "compressed": args.compressed, "workers": args.workers,
                  "duration_s": args.duration, "stream": stream,
                  "node_counters": counters, "drift": drift,
                  "cloud_arrivals_ns": arrivals, "summary_s": summary, "samples_s": measured,
                  "memory_series": memory,
                  "warmup_samples_s": warmup}
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
    p.add_argument("--duration", type=float, default=0.0,
                   help="measure for this many seconds after the warm-up instead of --sets "
                        "clouds (soaks; a rate the node cannot keep up with)")
    p.add_argument("--warmup", type=int, default=2, help="reconstructions left out first")
    p.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                   help="another node parameter (repeatable), e.g. pair_batch:=68")
    p.add_argument("--seed", type=int, default=0, help="synthetic scene seed")
    p.add_argument("--workers", type=int, default=1,
                   help="capture nodes sharing the rig's sets (with --device cuda, one per GPU: "
                        "cuda:0, cuda:1, ...); the diagnostics are the first worker's")
    p.add_argument("--compressed", action="store_true",
                   help="the rig publishes JPEG CompressedImage (the node decodes them)")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds to wait for all reconstructions (with --duration: for the "
                        "warm-up ones)")
    p.add_argument("--out", type=Path, default=Path("out/latency"),
                   help="folder for the rig's calibration")
    p.add_argument("--json", type=Path, default=None, help="also write the report here")
    p.set_defaults(func=run_latency)
