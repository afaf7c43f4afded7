"""Plot the capture node's live runs on the GPU machine from the JSON reports of
``threer-ros latency`` (docs/benchmarks/node_gpu_*.json):

* docs/images/node_gpu_latency.png: each cloud's trigger-to-cloud latency over the run, one
  panel per backend (the ``before`` reports left out);
* docs/images/node_gpu_soak.png: the 10-minute soak's latency, and the node's GPU and host
  memory from its diagnostics, over the run.

    .venv/bin/pip install matplotlib            # a plotting tool only, not a dependency
    .venv/bin/python scripts/plot_live.py
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"
BACKENDS = ("fast3r", "pow3r", "mast3r")


def _series(report: dict) -> tuple[list[float], list[float]]:
    """Seconds since the first measured cloud and each cloud's latency (ms)."""
    arrivals = report["cloud_arrivals_ns"]
    start = arrivals[0][1]
    return ([(received - start) * 1e-9 for _, received in arrivals],
            [(received - stamp) * 1e-6 for stamp, received in arrivals])


def plot_latency(reports: dict[str, dict], out: Path) -> None:
    fig, axes = plt.subplots(1, len(BACKENDS), figsize=(13, 4), dpi=100, sharey=True)
    for ax, backend in zip(axes, BACKENDS):
        for name, report in reports.items():
            if report["parameters"]["backend"] != backend:
                continue
            seconds, latency = _series(report)
            stream = report["stream"]
            ax.plot(seconds, latency, ".-", markersize=3, linewidth=0.7,
                    label=f"{name}: {stream['sets_per_s']:.1f} sets/s, "
                          f"p50 {stream['latency_p50_s'] * 1e3:.0f} ms")
        ax.set_title(backend, fontsize=10)
        ax.set_xlabel("time since the first measured cloud (s)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5)
    axes[0].set_ylabel("trigger-to-cloud latency (ms)")
    axes[0].set_ylim(bottom=0)
    fig.suptitle("capture node on the H200 machine, 16 cameras at 1100 x 1604 "
                 "(threer-ros latency)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out)
    print(f"wrote {out}")


def plot_soak(report: dict, out: Path) -> None:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), dpi=100, sharex=True)
    seconds, latency = _series(report)
    top.plot(seconds, latency, ".", markersize=1.5)
    top.set_ylabel("trigger-to-cloud latency (ms)")
    top.set_ylim(bottom=0)
    top.grid(alpha=0.3)
    start = report["cloud_arrivals_ns"][0][1]
    memory = report.get("memory_series")
    if memory:          # every /diagnostics status of the run, at its time
        at = [(m["stamp_ns"] - start) * 1e-9 for m in memory]
    else:               # reports from before it: the complete sets' samples, in order
        memory = report["samples_s"]
        at = [seconds[-1] * i / max(1, len(memory) - 1) for i in range(len(memory))]
    for key, label in (("gpu_memory_allocated_mib", "GPU allocated"),
                       ("gpu_memory_reserved_mib", "GPU reserved"),
                       ("host_memory_rss_mib", "host resident")):
        bottom.plot(at, [m.get(key, float("nan")) for m in memory], ".-", markersize=3,
                    linewidth=0.7, label=label)
    bottom.set_ylabel("MiB")
    bottom.set_title("the node's memory (its /diagnostics)", fontsize=9)
    bottom.set_xlabel("time since the first measured cloud (s)")
    bottom.set_ylim(bottom=0)
    bottom.grid(alpha=0.3)
    bottom.legend(fontsize=7)
    stream = report["stream"]
    top.set_title(f"soak: Fast3R, rig at {report['rate_hz']:g} Hz, {stream['clouds']} clouds in "
                  f"{report['duration_s']:g} s ({stream['sets_per_s']:.2f} sets/s)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out)
    print(f"wrote {out}")


def main() -> None:
    folder = DOCS / "benchmarks"
    runs = {path.stem.removeprefix("node_gpu_"): json.loads(path.read_text())
            for path in sorted(folder.glob("node_gpu_*.json"))
            if not path.stem.startswith(("node_gpu_before_", "node_gpu_soak_"))}
    plot_latency(runs, DOCS / "images" / "node_gpu_latency.png")
    for path in sorted(folder.glob("node_gpu_soak_*.json")):
        plot_soak(json.loads(path.read_text()), DOCS / "images" / "node_gpu_soak.png")


if __name__ == "__main__":
    main()
