"""``threer-ros bench models``: time the released network architectures on random weights.

Fast3R runs one forward over N views; MASt3R / Pow3R / DUSt3R run a batch of P image pairs.
Inputs are random images of the given size. Each configuration is warmed up, then timed with
CUDA events (wall clock on CPU); the report gives the median and the peak GPU memory, as a table
and as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from threer_ros.models import build_model
from threer_ros.models.released import RELEASED

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class BenchResult:
    """One measured configuration (times in milliseconds, memory in GiB)."""

    model: str
    dtype: str
    views: int
    pairs: int
    height: int
    width: int
    median_ms: float
    min_ms: float
    peak_gib: float
    repeats: int


def _views(n: int, batch: int, height: int, width: int, device: torch.device,
           dtype: torch.dtype, generator: torch.Generator) -> list[dict]:
    shape = torch.tensor([[height, width]] * batch, dtype=torch.int32)
    return [{"img": (torch.rand(batch, 3, height, width, generator=generator) * 2 - 1)
             .to(device=device, dtype=dtype), "true_shape": shape} for _ in range(n)]


def _forward(name: str, model: torch.nn.Module, views: list[dict]):
    if name == "fast3r":
        return model(views)
    return model(views[0], views[1])


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def bench_model(name: str, dtype: str, views: int, pairs: int, height: int, width: int,
                device: torch.device, repeats: int = 10, warmup: int = 3) -> BenchResult:
    """Build ``RELEASED[name]`` with random weights on ``device`` and time its forward."""
    torch.manual_seed(0)
    with device:
        model = build_model(RELEASED[name])
    model = model.to(dtype=DTYPES[dtype]).eval()
    g = torch.Generator().manual_seed(0)
    inputs = (_views(views, 1, height, width, device, DTYPES[dtype], g) if name == "fast3r"
              else _views(2, pairs, height, width, device, DTYPES[dtype], g))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            ms = _timed(lambda: _forward(name, model, inputs), device)
            if i >= warmup:
                times.append(ms)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    del model, inputs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return BenchResult(name, dtype, views if name == "fast3r" else 2,
                       0 if name == "fast3r" else pairs, height, width,
                       statistics.median(times), min(times), peak, repeats)


def environment() -> dict[str, str]:
    """Device and versions, recorded with every benchmark."""
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d")}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
        info["cuda"] = str(torch.version.cuda)
    else:
        info["device"] = f"CPU ({platform.processor() or platform.machine()})"
    return info


def _run(args: argparse.Namespace) -> int:
    device = torch.device(args.device if args.device != "auto" else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    height, width = (int(v) for v in args.size.lower().split("x")[::-1])
    results = []
    for name in args.models:
        counts = args.views if name == "fast3r" else [args.pairs]
        for dtype in args.dtypes:
            for n in counts:
                r = bench_model(name, dtype, n, args.pairs, height, width, device,
                                repeats=args.repeats, warmup=args.warmup)
                results.append(r)
                what = f"{r.views} views" if name == "fast3r" else f"{r.pairs} pairs"
                print(f"{name:7s} {dtype:5s} {what:>9s} {width}x{height}: median "
                      f"{r.median_ms:8.1f} ms  min {r.min_ms:8.1f} ms  peak {r.peak_gib:6.2f} GiB",
                      flush=True)
    report = {"environment": environment(), "command": " ".join(sys.argv),
              "results": [asdict(r) for r in results]}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``threer-ros bench``."""
    p = subparsers.add_parser("bench", help="time the networks (random weights)",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["models"], help="what to benchmark")
    p.add_argument("--models", nargs="+", default=["fast3r", "mast3r", "pow3r"],
                   choices=sorted(RELEASED))
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    p.add_argument("--views", nargs="+", type=int, default=[16],
                   help="Fast3R view counts (default 16)")
    p.add_argument("--pairs", type=int, default=16, help="pairs per batch for pairwise models")
    p.add_argument("--size", default="512x384", help="image WIDTHxHEIGHT (multiples of 16)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path, default=None, help="also write the report here")
    p.set_defaults(func=_run)
