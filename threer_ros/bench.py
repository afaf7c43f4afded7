"""``threer-ros bench``: network speed and numerics, measured.

``bench models`` times the released architectures on random weights (or real ones,
``--weights``): Fast3R runs one forward over N views; MASt3R / Pow3R / DUSt3R run a batch of P
image pairs of random images. Each configuration is warmed up, then timed with CUDA events
(wall clock on CPU); the report gives the median and the peak GPU memory, as a table and as
JSON.

``bench backends`` runs reconstruction backends on the synthetic 16-camera rig and reports the
median time of each stage and the peak GPU memory (network backends: the released
architecture's time with random weights, the alignment of ground-truth pointmaps; see
:class:`ReleasedWithOracle`; with ``--weights`` the real network does both).

``bench mvs-quality`` measures the ``mvs`` backend against the ground truth of the synthetic
scene variants (:mod:`threer_ros.mvs_quality`).

``bench quality`` reconstructs the synthetic rig with ground-truth networks that err like real
ones and scores each network backend's cloud and cameras (:mod:`threer_ros.quality`).

``bench parity`` runs the parity fixtures on the device in fp32 and bf16 and reports the largest
error against the official outputs, relative to each output's range.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import torch

from threer_ros.cli import command_parser
from threer_ros.models import build_model, compile_blocks
from threer_ros.models.released import RELEASED
from threer_ros.mvs_quality import add_arguments as add_mvs_quality_arguments
from threer_ros.pipeline.network import float32_matmul, set_precision

#: Precision modes: name -> (parameter dtype, autocast dtype or None). ``bf16`` casts the
#: weights; ``bf16-trunk`` too, but keeps the heads (and descriptors) in fp32, as
#: ``precision: auto`` runs on CUDA; ``bf16-amp`` keeps fp32 weights and runs matrix products
#: in bf16 under autocast; ``tf32`` keeps fp32 weights and runs matrix products on TF32
#: tensor cores and, on CUDA, the attention kernels in bf16 (the node's ``precision: tf32``).
PRECISIONS = {"fp32": (torch.float32, None), "tf32": (torch.float32, None),
              "bf16": (torch.bfloat16, None),
              "bf16-trunk": (torch.bfloat16, None), "fp16": (torch.float16, None),
              "bf16-amp": (torch.float32, torch.bfloat16)}


def _cast(model: torch.nn.Module, precision: str, device: torch.device) -> torch.nn.Module:
    """``model`` cast to ``precision`` (:data:`PRECISIONS`) on ``device`` as the node casts
    it (:func:`~threer_ros.pipeline.network.set_precision`: parameters, float32 heads,
    attention dtype), in place; ``bf16-amp`` keeps float32 parameters (its autocast is
    :func:`_numerics`')."""
    if precision == "bf16-amp":
        return model.float()
    return set_precision(model, precision, device.type)


#: ``--sdpa`` choices: the attention kernels ``F.scaled_dot_product_attention`` may use
#: (``default``: PyTorch picks; on an H100/H200 in bf16 that is cuDNN's).
SDPA_KERNELS = ("default", "cudnn", "flash", "efficient", "math")


def _sdpa_kernel(choice: str):
    """Context restricting ``F.scaled_dot_product_attention`` to the kernel ``choice``."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if choice == "default":
        return contextlib.nullcontext()
    backend = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
               "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[choice]
    return sdpa_kernel([backend])


@contextlib.contextmanager
def _numerics(device: torch.device, precision: str) -> Iterator[None]:
    """The arithmetic of ``precision`` around a forward: autocast for ``bf16-amp``, TF32
    matrix products for ``tf32`` (:func:`~threer_ros.pipeline.network.float32_matmul`)."""
    amp = PRECISIONS[precision][1]
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None), \
            float32_matmul(precision):
        yield


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
    weights: str = "random"
    sdpa: str = "default"


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


def weights_path(weights: str, name: str) -> Path | None:
    """The checkpoint of network ``name`` that ``--weights`` names: ``None`` for ``random``,
    the downloaded official weights for ``released``, else the given file or folder.

    Raises:
        WeightsError: the weights are not there (the message says how to get them).
    """
    if weights == "random":
        return None
    from threer_ros.weights import resolve_checkpoint

    return resolve_checkpoint(name, "" if weights == "released" else weights)


def bench_model(name: str, dtype: str, views: int, pairs: int, height: int, width: int,
                device: torch.device, repeats: int = 10, warmup: int = 3,
                compiled: bool = False, profile_rows: int = 0,
                weights: str = "random", sdpa: str = "default") -> BenchResult:
    """Build ``RELEASED[name]`` with random weights (or load the checkpoint ``weights`` names,
    see :func:`weights_path`) on ``device`` and time its forward.

    ``compiled`` compiles its blocks and heads as the node's ``compile_network`` does
    (:func:`~threer_ros.models.compile_blocks`; the warm-up includes the compilation);
    ``profile_rows > 0`` prints the operators taking the most device time in one more forward;
    ``sdpa`` restricts attention to one kernel (:data:`SDPA_KERNELS`; an error if that kernel
    cannot run these shapes and dtypes on ``device``).
    """
    from threer_ros.models import load_model

    torch.manual_seed(0)
    param_dtype = PRECISIONS[dtype][0]
    checkpoint = weights_path(weights, name)
    if checkpoint is None:
        with device:
            model = build_model(RELEASED[name])
    else:
        model = load_model(checkpoint, device=device)
    model = _cast(model, dtype, device).eval()
    if compiled:
        compile_blocks(model)
    g = torch.Generator().manual_seed(0)
    inputs = (_views(views, 1, height, width, device, param_dtype, g) if name == "fast3r"
              else _views(2, pairs, height, width, device, param_dtype, g))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    with torch.inference_mode(), _numerics(device, dtype), _sdpa_kernel(sdpa):
        for i in range(warmup + repeats):
            ms = _timed(lambda: _forward(name, model, inputs), device)
            if i >= warmup:
                times.append(ms)
        if profile_rows > 0:
            print_profile(lambda: _forward(name, model, inputs), device, profile_rows)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    return BenchResult(name, dtype + ("+compile" if compiled else ""),
                       views if name == "fast3r" else 2, 0 if name == "fast3r" else pairs,
                       height, width, statistics.median(times), min(times), peak, repeats,
                       "random" if checkpoint is None else str(checkpoint), sdpa)


def print_profile(fn, device: torch.device, rows: int) -> None:
    """Run ``fn`` once under ``torch.profiler`` and print the ``rows`` operators with the most
    device (CUDA) or CPU time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    with profile(activities=activities) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=rows), flush=True)


def fixture_inputs(data, prefix: str, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Numeric ``<prefix>*`` arrays of a parity-fixture npz as tensors (strings skipped); floating
    arrays are cast to ``dtype``."""
    out = {}
    for key in data.files:
        if key.startswith(prefix) and data[key].dtype.kind in "fiub":
            t = torch.from_numpy(data[key]).to(device)
            out[key[len(prefix):]] = t.to(dtype) if t.is_floating_point() else t
    return out


def run_parity_case(model_name: str, model: torch.nn.Module, data,
                    device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Run one parity case; outputs keyed like the fixture's ``out.*`` arrays."""
    with torch.inference_mode():
        if model_name == "fast3r":
            n = len({k.split(".")[2] for k in data.files if k.startswith("in.views.")})
            views = [fixture_inputs(data, f"in.views.{i}.", device, dtype) for i in range(n)]
            preds = model(views, image_ids=torch.from_numpy(data["in.image_ids"]))
            return {f"out.preds.{i}.{k}": v for i, p in enumerate(preds) for k, v in p.items()}
        res1, res2 = model(fixture_inputs(data, "in.view1.", device, dtype),
                           fixture_inputs(data, "in.view2.", device, dtype))
        return {**{f"out.pred1.{k}": v for k, v in res1.items()},
                **{f"out.pred2.{k}": v for k, v in res2.items()}}


def parity_errors(fixtures: Path, device: torch.device) -> list[dict]:
    """Largest error relative to the official outputs' range, per network, case and dtype."""
    import numpy as np

    from threer_ros.models import load_model

    index = json.loads((fixtures / "index.json").read_text())
    rows = []
    for name, entry in index["models"].items():
        if name == "preprocess":
            continue
        checkpoint = fixtures / name / ("checkpoint" if name == "fast3r" else "checkpoint.pth")
        for precision, (dtype, _) in PRECISIONS.items():
            if precision == "fp16":
                continue
            model = _cast(load_model(checkpoint, device=device), precision, device)
            for case in entry["cases"]:
                data = np.load(fixtures / name / f"{case}.npz")
                with _numerics(device, precision):
                    ours = run_parity_case(name, model, data, device, dtype)
                worst: dict[str, float] = {}
                for k in (k for k in data.files if k.startswith("out.")):
                    kind = next(t for t in ("pts3d", "desc_conf", "desc", "conf")
                                if t in k.rsplit(".", 1)[1])
                    err = float((ours[k].float().cpu() - torch.from_numpy(data[k])).abs().max())
                    rel = err / max(float(np.abs(data[k]).max()), 1e-12)
                    worst[kind] = max(worst.get(kind, 0.0), rel)
                rows.append({"model": name, "case": case, "dtype": precision,
                             "max_error_relative_to_range": worst})
    return rows


class ReleasedWithOracle(torch.nn.Module):
    """The released architecture (random weights) for the time, the synthetic rig's ground
    truth for the answer: random weights give degenerate geometry, which would time the
    alignment on nonsense. Outputs come in the layout the released network would give.

    The ground truth of a set of views is computed on its first request and then reused:
    it does not change from set to set, and its cost (float64 geometry per pair) is not the
    network's, whose stage it would otherwise inflate.
    """

    def __init__(self, released: torch.nn.Module, oracle: torch.nn.Module) -> None:
        super().__init__()
        self.released, self.oracle = released, oracle
        self.landscape_only = bool(getattr(released, "landscape_only", False))
        self._answers: dict[tuple, Any] = {}     # views -> the oracle's answer
        if hasattr(released, "forward_pairs"):
            self.forward_pairs = self._forward_pairs

    def _answer(self, key: tuple, compute):
        if key not in self._answers:
            self._answers[key] = compute()
        return self._answers[key]

    def forward(self, *views):
        self.released(*views)
        listed = views[0] if len(views) == 1 else views     # Fast3R: one list; pairs: two
        return self._answer(tuple(tuple(v["instance"]) for v in listed),
                            lambda: self.oracle(*views))

    def _forward_pairs(self, view: dict, first: torch.Tensor, second: torch.Tensor, **kwargs):
        self.released.forward_pairs(view, first, second, **kwargs)
        first_, second_ = first.tolist(), second.tolist()

        def ground_truth():
            res = self.oracle(*({"instance": [view["instance"][i] for i in index]}
                                for index in (first_, second_)))
            height, width = (int(v) for v in view["true_shape"][0])
            if self.landscape_only and height > width:      # portrait given transposed
                res = tuple({k: v.transpose(1, 2) for k, v in r.items()} for r in res)
            return res

        return self._answer((tuple(view["instance"]), tuple(first_), tuple(second_)),
                            ground_truth)


def bench_backend(name: str, width: int, device: torch.device, repeats: int = 5,
                  warmup: int = 1, alignment: str = "auto", cameras: int = 16,
                  pair_graph: str = "knn", compiled: bool = False,
                  compiled_alignment: bool = False, pair_batch: int = 16,
                  weights: str = "random", profile_rows: int = 0,
                  precision: str = "auto") -> dict:
    """Median seconds per stage of backend ``name`` on the synthetic rig (``cameras`` portrait
    cameras, ``width`` pixels wide) and the peak GPU memory.

    Network backends run the released architecture with random weights in bf16 (CUDA) for the
    network stage, and align the synthetic rig's ground-truth pointmaps
    (:class:`ReleasedWithOracle`) at 512 pixels; ``compiled`` compiles its blocks and heads,
    ``compiled_alignment`` the full alignment's losses; pairwise networks decode ``pair_batch``
    pairs at a time. With real ``weights`` (:func:`weights_path`) the backend runs as the node
    runs it: the network's answers are aligned and fused.
    Also reports the growth of allocated GPU memory from the first timed set to the last, and
    the last set's ``info`` (pose disagreement with the calibration, matches, loss).
    ``profile_rows > 0`` prints the most expensive operators of one more set.
    """
    from threer_ros.data.synthetic import SyntheticRig
    from threer_ros.pipeline.backends import BackendOptions, make_reconstructor

    frames = SyntheticRig.render(seed=0, width=width, count=cameras).frame_set(0)
    options = BackendOptions(device=str(device), working_width=width, alignment=alignment,
                             pair_graph=pair_graph, compile_network=compiled,
                             compile_alignment=compiled_alignment, pair_batch=pair_batch,
                             precision=precision)
    checkpoint = None if name == "mvs" else weights_path(weights, name)
    if name == "mvs" or checkpoint is not None:
        backend = make_reconstructor(name, replace(options, checkpoint=str(checkpoint or "")))
    else:
        backend = _network_backend(name, frames, options, device)
    stages: dict[str, list[float]] = {}
    allocated: list[int] = []          # bytes after the first and the last timed set
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        recon = backend.reconstruct(frames)
        total = time.perf_counter() - t0
        if i >= warmup:
            for stage, seconds in {**recon.timings_s, "total": total}.items():
                stages.setdefault(stage, []).append(seconds)
        if i in (warmup, warmup + repeats - 1) and device.type == "cuda":
            allocated.append(torch.cuda.memory_allocated(device))
    if profile_rows > 0:
        print_profile(lambda: backend.reconstruct(frames), device, profile_rows)
    height = frames.frames[0].image.shape[0]
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    return {"backend": name, "alignment": alignment, "pair_graph": pair_graph,
            "precision": precision,
            "compiled": compiled, "compiled_alignment": compiled_alignment,
            "pair_batch": pair_batch, "weights": str(checkpoint or "random"),
            "cameras": len(frames.frames), "width": width,
            "height": height, "points": len(recon.points), "peak_gib": peak,
            "allocated_growth_mib": (allocated[-1] - allocated[0]) / 2**20 if allocated else 0.0,
            "median_ms": {k: 1e3 * statistics.median(v) for k, v in stages.items()},
            "last_set_info": {k: float(v) for k, v in recon.info.items()}}


def _network_backend(name: str, frames, options, device: torch.device):
    """A network backend whose network is :class:`ReleasedWithOracle`."""
    from threer_ros.pipeline.fast3r import Fast3RReconstructor
    from threer_ros.pipeline.oracle import OracleFast3R, OraclePairNetwork
    from threer_ros.pipeline.pairwise import (MASt3RReconstructor, PairSettings,
                                              Pow3RReconstructor)

    settings = options.network_settings(name)
    torch.manual_seed(0)
    with device:
        released = build_model(RELEASED[name])
    released = set_precision(released, settings.precision, settings.device).eval()
    if options.compile_network:
        compile_blocks(released)
    if name == "fast3r":
        oracle = OracleFast3R(frames, settings.image_size, device=str(device))
        return Fast3RReconstructor(ReleasedWithOracle(released, oracle), settings)
    oracle = OraclePairNetwork(frames, settings.image_size, descriptors=name == "mast3r",
                               device=str(device))
    cls = MASt3RReconstructor if name == "mast3r" else Pow3RReconstructor
    return cls(ReleasedWithOracle(released, oracle), settings, PairSettings.from_options(options))


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
    if args.what == "mvs-quality":
        from threer_ros.mvs_quality import run

        return run(args)
    device = torch.device(args.device if args.device != "auto" else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    networks = [b for b in args.backends if b != "mvs"] if args.what == "backends" \
        else args.models
    if args.weights not in ("random", "released") and len(networks) > 1:
        print(f"--weights {args.weights}: a checkpoint holds one network; bench one of "
              f"{', '.join(networks)} at a time", file=sys.stderr)
        return 2
    if args.what == "backends":
        rows = []
        for b, w in itertools.product(args.backends, args.widths):
            pairwise = b in ("mast3r", "pow3r")
            for alignment, graph, cameras, compiled, compiled_alignment, batch, precision in \
                    itertools.product(["auto"] if b == "mvs" else args.alignments,
                                      args.graphs if pairwise else ["knn"], args.cameras,
                                      ["off"] if b == "mvs" else args.compile,
                                      args.compile_alignment if pairwise else ["off"],
                                      args.pair_batch if pairwise else [16],
                                      ["auto"] if b == "mvs" else args.precisions):
                r = bench_backend(b, w, device, args.repeats, args.warmup, alignment, cameras,
                                  graph, compiled == "on", compiled_alignment == "on", batch,
                                  args.weights, args.profile, precision)
                rows.append(r)
                stages = "  ".join(f"{k} {v:.1f}" for k, v in r["median_ms"].items())
                print(f"{b:6s} {alignment:5s} {graph:9s} {precision:10s} compile {compiled:3s} "
                      f"compile-alignment {compiled_alignment:3s} pair-batch {batch} "
                      f"{r['cameras']} "
                      f"cameras {r['width']}x{r['height']}: {stages} ms ({r['points']} points, "
                      f"peak {r['peak_gib']:.2f} GiB, allocated growth "
                      f"{r['allocated_growth_mib']:.1f} MiB)", flush=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        if args.json:
            args.json.write_text(json.dumps({"environment": environment(),
                                             "command": " ".join(sys.argv), "rows": rows},
                                            indent=2))
        return 0
    if args.what == "quality":
        from threer_ros import quality

        return quality.run(args, str(device))
    if args.what == "parity":
        if not (args.fixtures / "index.json").is_file():
            print(f"--fixtures {args.fixtures}: no parity fixtures there (index.json missing); "
                  "give the folder fixtures/parity of the project's shared/ checkout (the "
                  "default, ../shared/fixtures/parity, is relative to the current directory)",
                  file=sys.stderr)
            return 2
        rows = parity_errors(args.fixtures, device)
        for r in rows:
            errors = "  ".join(f"{k} {v:.1e}" for k, v in r["max_error_relative_to_range"].items())
            print(f"{r['model']:7s} {r['case']:22s} {r['dtype']:8s} max error / range: {errors}")
        if args.json:
            args.json.write_text(json.dumps({"environment": environment(), "rows": rows},
                                            indent=2))
        return 0
    height, width = (int(v) for v in args.size.lower().split("x")[::-1])
    results = []
    for name in args.models:
        counts = args.views if name == "fast3r" else [args.pairs]
        for dtype, compiled, sdpa in itertools.product(args.dtypes, args.compile, args.sdpa):
            for n in counts:
                try:
                    r = bench_model(name, dtype, n, args.pairs, height, width, device,
                                    repeats=args.repeats, warmup=args.warmup,
                                    compiled=compiled == "on", profile_rows=args.profile,
                                    weights=args.weights, sdpa=sdpa)
                except RuntimeError as error:
                    if sdpa == "default":
                        raise
                    print(f"{name} {dtype} sdpa {sdpa}: skipped, this attention kernel cannot "
                          f"run here ({str(error).splitlines()[0]}); pick another --sdpa",
                          file=sys.stderr)
                    continue
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                results.append(r)
                what = f"{r.views} views" if name == "fast3r" else f"{r.pairs} pairs"
                print(f"{name:7s} {r.dtype:13s} sdpa {sdpa:9s} {what:>9s} {width}x{height}: median "
                      f"{r.median_ms:8.1f} ms  min {r.min_ms:8.1f} ms  peak {r.peak_gib:6.2f} GiB",
                      flush=True)
    report = {"environment": environment(), "command": " ".join(sys.argv),
              "results": [asdict(r) for r in results]}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``threer-ros bench``."""
    p = command_parser(subparsers, "bench",
                       "measure networks and backends (speed, numerics)", __doc__)
    p.add_argument("what", choices=["models", "backends", "parity", "quality", "mvs-quality"],
                   help="models: forward time and memory; backends: stage timings of the "
                        "reconstruction backends on the synthetic rig; parity: error of "
                        "fp32/bf16 on the parity fixtures against the official outputs; quality: "
                        "accuracy, completeness and camera errors of the network backends on "
                        "the synthetic rig with realistic network errors; mvs-quality: the mvs "
                        "backend's error and completeness on every synthetic scene variant")
    p.add_argument("--backends", nargs="+", default=["mvs"], help="backends for 'backends'")
    p.add_argument("--widths", nargs="+", type=int, default=[320],
                   help="image widths for 'backends' and 'mvs-quality' (portrait cameras)")
    p.add_argument("--cameras", nargs="+", type=int, default=[16],
                   help="camera counts for 'backends' (default 16)")
    p.add_argument("--alignments", nargs="+", default=["fast", "full"],
                   choices=["fast", "full", "none"],
                   help="alignment of the network backends (quality also: none = full "
                        "alignment without the calibration)")
    p.add_argument("--graphs", nargs="+", default=["knn"], choices=["complete", "knn", "reference"],
                   help="pair graphs of mast3r/pow3r for 'backends'")
    p.add_argument("--fixtures", type=Path, default=Path("../shared/fixtures/parity"),
                   help="parity fixtures folder (for 'parity'; default: "
                        "../shared/fixtures/parity, relative to the current directory, i.e. "
                        "shared/ beside the checkout when run from the repository root)")
    p.add_argument("--models", nargs="+", default=["fast3r", "mast3r", "pow3r"],
                   choices=sorted(RELEASED))
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(PRECISIONS))
    p.add_argument("--views", nargs="+", type=int, default=[16],
                   help="Fast3R view counts (default 16)")
    p.add_argument("--pairs", type=int, default=16, help="pairs per batch for pairwise models")
    p.add_argument("--size", default="512x384", help="image WIDTHxHEIGHT (multiples of 16)")
    p.add_argument("--compile", nargs="+", default=["off"], choices=["off", "on"],
                   help="torch.compile of the network's blocks and heads off and/or on "
                        "(each a configuration)")
    p.add_argument("--weights", default="random",
                   help="random (default: the released architectures, random weights), "
                        "released (the weights of `threer-ros weights download`), or a "
                        "checkpoint file/folder (with one model or network backend)")
    p.add_argument("--sdpa", nargs="+", default=["default"], choices=SDPA_KERNELS,
                   help="models: attention kernel(s), each a configuration (default: "
                        "PyTorch's choice)")
    p.add_argument("--pair-batch", nargs="+", type=int, default=[16],
                   help="backends: pairs per network batch of MASt3R / Pow3R")
    p.add_argument("--precisions", nargs="+", default=["auto"],
                   choices=["auto", "fp32", "bf16-trunk", "bf16", "fp16"],
                   help="backends: the network backends' precision(s), each a configuration "
                        "(auto: bf16 trunk and fp32 heads on CUDA)")
    p.add_argument("--compile-alignment", nargs="+", default=["off"], choices=["off", "on"],
                   help="backends: torch.compile of the full alignment's losses off and/or on")
    p.add_argument("--profile", type=int, default=0, metavar="ROWS",
                   help="print the ROWS most expensive operators of one more forward "
                        "(models) or set (backends)")
    p.add_argument("--focal-errors", nargs="+", type=float, default=[0.0, 0.03, 0.05, 0.10],
                   help="quality: relative focal-length errors of the simulated networks")
    p.add_argument("--network-size", type=int, default=128,
                   help="quality: network image long side (pixels)")
    p.add_argument("--iterations", type=int, default=300,
                   help="quality: full alignment iterations")
    p.add_argument("--seed", type=int, default=0,
                   help="quality: seed of the rig and errors; mvs-quality: scene seed")
    p.add_argument("--shared-focal", action=argparse.BooleanOptionalAction, default=True,
                   help="quality: full alignment with one focal length for all cameras, or "
                        "one per camera (node parameter shared_focal)")
    p.add_argument("--plot", type=Path, default=None,
                   help="quality: write an SVG plot of median error against focal error")
    p.add_argument("--before", type=Path, default=None,
                   help="quality: a JSON report of an earlier run, drawn dashed in --plot")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path, default=None, help="also write the report here")
    add_mvs_quality_arguments(p)
    p.set_defaults(func=_run)
