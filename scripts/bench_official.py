"""Time the official Fast3R, MASt3R and DUSt3R code on the synthetic rig's images, for the
side-by-side table of docs/benchmarks.md (issue #14).

It needs checkouts of the official repositories, which this project never commits or ships:
facebookresearch/fast3r, and naver/mast3r with its dust3r and croco submodules filled in
(``MASTR/dust3r`` and ``MASTR/dust3r/croco``), plus their Python dependencies (einops, roma,
omegaconf, hydra-core, lightning, torchvision). Checkpoints in the official formats, e.g. the
released architectures with random weights written by ``threer-ros weights random``.

One pipeline per run (each in a fresh process, so that their ``dust3r`` packages never meet):

    python scripts/bench_official.py fast3r --repo FAST3R --checkpoint W/fast3r --json f.json
    python scripts/bench_official.py mast3r --repo MAST3R --checkpoint W/mast3r.pth --json m.json
    python scripts/bench_official.py dust3r --repo MAST3R --checkpoint W/dust3r.pth --json d.json

* ``fast3r``: one forward of all views through the official ``loss_of_one_batch`` (the
  README's ``inference`` without its copy to the host), with the README's ``dtype=float32``
  (autocast stays on, in float16), with autocast off (``"32"``) and with ``bfloat16``;
  median of ``--repeats`` after ``--warmup``.
* ``mast3r``: the demo's pipeline with its defaults: complete symmetric pair graph,
  ``sparse_global_alignment`` (lr 0.07 / 0.01, 300 + 300 iterations, depth refined, separate
  intrinsics, matching threshold 0) in a fresh cache folder, then the dense cloud with the
  depth clean-up; stages timed by wrapping the official functions that run them.
* ``dust3r``: the demo's pipeline: complete symmetric graph, ``inference`` at batch size 1,
  ``PointCloudOptimizer`` with ``init='mst'``, 300 iterations, linear schedule, lr 0.01, then
  the clean-up and the points.

Images: the synthetic rig (``SyntheticRig.render(seed=0)``), ``--cameras`` portrait cameras
``--width`` pixels wide, written as PNG and read by the official ``load_images`` (long side to
512 px), the same input ``threer-ros bench backends --widths 512`` gives our backends.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


def write_rig_images(folder: Path, cameras: int, width: int) -> list[str]:
    """PNG files of the synthetic rig's views (RGB, ``width`` pixels wide), in camera order."""
    from PIL import Image

    from threer_ros.data.synthetic import SyntheticRig

    paths = []
    for frame in SyntheticRig.render(seed=0, width=width, count=cameras).frame_set(0).frames:
        path = folder / f"{frame.camera}.png"
        Image.fromarray(np.ascontiguousarray(frame.image)).save(path)
        paths.append(str(path))
    return paths


def synchronized_clock(device: torch.device) -> float:
    """``time.perf_counter()`` once the GPU has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class StageTimer:
    """Seconds spent in module-level functions, by wrapping them where they are looked up."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}

    def wrap(self, module, name: str, stage: str) -> None:
        """Time every call of ``module.name`` under ``stage`` (GPU work included)."""
        original: Callable = getattr(module, name)

        def timed(*args, **kwargs):
            t0 = synchronized_clock(self.device)
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = synchronized_clock(self.device) - t0
                self.seconds[stage] = self.seconds.get(stage, 0.0) + elapsed

        setattr(module, name, timed)


def bench_fast3r(args: argparse.Namespace, paths: list[str], device: torch.device) -> dict:
    """Median seconds of one official Fast3R forward over all views, per ``dtype``."""
    sys.path.insert(0, str(args.repo))
    from fast3r.dust3r.inference_multiview import loss_of_one_batch
    from fast3r.dust3r.utils.device import collate_with_cat
    from fast3r.dust3r.utils.image import load_images
    from fast3r.models.fast3r import Fast3R

    model = Fast3R.from_pretrained(str(args.checkpoint)).to(device).eval()
    views = load_images(paths, size=args.size, verbose=False)
    results = {}
    # the README passes dtype=torch.float32, which leaves autocast on in its default (float16
    # on CUDA); "32" is the training configs' full precision (autocast off; the attention
    # still runs in bfloat16, as the official blocks cast it)
    modes = (("float32 (README)", torch.float32), ("32 (autocast off)", "32"),
             ("bfloat16", torch.bfloat16))
    for name, dtype in modes:
        times = []
        with torch.no_grad():
            for i in range(args.warmup + args.repeats):
                t0 = synchronized_clock(device)
                loss_of_one_batch(collate_with_cat([tuple(views)]), model, None, device, dtype)
                if i >= args.warmup:
                    times.append(synchronized_clock(device) - t0)
        results[name] = {"median_s": statistics.median(times), "runs": len(times)}
    return {"views": len(views), "image_size": list(views[0]["img"].shape[-2:]),
            "forward": results}


def bench_mast3r(args: argparse.Namespace, paths: list[str], device: torch.device) -> dict:
    """Seconds of the official MASt3R demo pipeline with its defaults, by stage."""
    sys.path.insert(0, str(args.repo))
    import scipy.cluster.hierarchy
    import scipy.spatial.distance

    if not hasattr(scipy.cluster.hierarchy, "distance"):   # an alias some SciPy lack
        scipy.cluster.hierarchy.distance = scipy.spatial.distance
    from mast3r.cloud_opt import sparse_ga
    from mast3r.image_pairs import make_pairs
    from mast3r.model import AsymmetricMASt3R
    from dust3r.utils.image import load_images

    model = AsymmetricMASt3R.from_pretrained(str(args.checkpoint)).to(device).eval()
    depth_in_front(model)
    images = load_images(paths, size=args.size, verbose=False)
    timer = StageTimer(device)
    timer.wrap(sparse_ga, "forward_mast3r", "network, matching and cache")
    timer.wrap(sparse_ga, "prepare_canonical_data", "canonical pointmaps")
    with tempfile.TemporaryDirectory() as cache:
        t0 = synchronized_clock(device)
        pairs = make_pairs(images, scene_graph="complete", prefilter=None, symmetrize=True)
        scene = sparse_ga.sparse_global_alignment(
            paths, pairs, cache, model, lr1=0.07, niter1=args.niter, lr2=0.01,
            niter2=args.niter, device=device, opt_depth=True, shared_intrinsics=False,
            matching_conf_thr=0.0)
        aligned = synchronized_clock(device)
        scene.get_dense_pts3d(clean_depth=True)
        done = synchronized_clock(device)
    stages = dict(timer.seconds)
    stages["alignment"] = aligned - t0 - sum(stages.values())
    stages["dense cloud"] = done - aligned
    return {"views": len(images), "pairs": len(pairs), "niter": [args.niter, args.niter],
            "stages_s": stages, "total_s": done - t0}


def bench_dust3r(args: argparse.Namespace, paths: list[str], device: torch.device) -> dict:
    """Seconds of the official DUSt3R demo pipeline with its defaults, by stage."""
    sys.path.insert(0, str(args.repo))
    import mast3r.utils.path_to_dust3r  # noqa: F401  (puts the dust3r submodule on the path)
    from dust3r.cloud_opt import GlobalAlignerMode, global_aligner
    from dust3r.image_pairs import make_pairs
    from dust3r.inference import inference
    from dust3r.model import AsymmetricCroCo3DStereo
    from dust3r.utils.image import load_images

    # DUSt3R checkpoints keep their training arguments as an argparse.Namespace, which the
    # official loader's torch.load (weights_only by default since torch 2.6) refuses
    with torch.serialization.safe_globals([argparse.Namespace]):
        model = AsymmetricCroCo3DStereo.from_pretrained(str(args.checkpoint))
    model = model.to(device).eval()
    depth_in_front(model)
    images = load_images(paths, size=args.size, verbose=False)
    t0 = synchronized_clock(device)
    pairs = make_pairs(images, scene_graph="complete", prefilter=None, symmetrize=True)
    output = inference(pairs, model, device, batch_size=1, verbose=False)
    inferred = synchronized_clock(device)
    scene = global_aligner(output, device=device, mode=GlobalAlignerMode.PointCloudOptimizer,
                           verbose=False)
    scene.compute_global_alignment(init="mst", niter=args.niter, schedule="linear", lr=0.01)
    aligned = synchronized_clock(device)
    scene = scene.clean_pointcloud()
    scene.get_masks()
    scene.get_pts3d()
    done = synchronized_clock(device)
    return {"views": len(images), "pairs": len(pairs), "niter": args.niter,
            "stages_s": {"network": inferred - t0, "alignment": aligned - inferred,
                         "clean-up and points": done - aligned},
            "total_s": done - t0}


def depth_in_front(model: torch.nn.Module) -> None:
    """Random weights put points behind their cameras, where the official sparse alignment
    stops (``assert (core_depth > 0).all()``): the pointmap heads' last convolution (outputs
    x, y, z, confidence) is scaled by 0.1 and its z output biased by +2, so every point lies in
    front of its camera. It changes no shape, so no time."""
    for head in (model.downstream_head1, model.downstream_head2):
        last = head.dpt.head[-1]
        with torch.no_grad():
            last.weight.mul_(0.1)
            last.bias.mul_(0.1)
            last.bias[2] += 2.0


PIPELINES = {"fast3r": bench_fast3r, "mast3r": bench_mast3r, "dust3r": bench_dust3r}


def main() -> None:
    from threer_ros.bench import environment

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pipeline", choices=sorted(PIPELINES))
    p.add_argument("--repo", type=Path, required=True,
                   help="checkout of facebookresearch/fast3r (fast3r) or naver/mast3r (others)")
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="official-format checkpoint (Fast3R: its Hugging Face folder)")
    p.add_argument("--cameras", type=int, default=16)
    p.add_argument("--width", type=int, default=512, help="rig image width in pixels")
    p.add_argument("--size", type=int, default=512,
                   help="network image size as the official load_images takes it (demos: 512)")
    p.add_argument("--niter", type=int, default=300,
                   help="alignment iterations per stage (the demos' default 300)")
    p.add_argument("--repeats", type=int, default=10, help="timed Fast3R forwards")
    p.add_argument("--warmup", type=int, default=3, help="untimed Fast3R forwards first")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = p.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as folder:
        paths = write_rig_images(Path(folder), args.cameras, args.width)
        report = PIPELINES[args.pipeline](args, paths, device)
    report = {"pipeline": args.pipeline, "environment": environment(),
              "command": " ".join(sys.argv), **report}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
