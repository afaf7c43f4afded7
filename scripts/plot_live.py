"""Plot each cloud's trigger-to-cloud latency over the run, per backend and rate, from the JSON
reports of ``threer-ros latency`` (docs/benchmarks/live_*.json) into docs/images/live_latency.png.

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


def main() -> None:
    reports = sorted((DOCS / "benchmarks").glob("live_*.json"))
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=100)
    for path in reports:
        report = json.loads(path.read_text())
        arrivals = report["cloud_arrivals_ns"]
        start = arrivals[0][1]
        seconds = [(received - start) * 1e-9 for _, received in arrivals]
        latency_ms = [(received - stamp) * 1e-6 for stamp, received in arrivals]
        stream = report["stream"]
        label = (f"{path.stem.removeprefix('live_')}: {stream['sets_per_s']:.1f} sets/s, "
                 f"p50 {stream['latency_p50_s'] * 1e3:.0f} ms")
        ax.plot(seconds, latency_ms, ".-", markersize=3, linewidth=0.8, label=label)
    ax.set_xlabel("time since the first measured cloud (s)")
    ax.set_ylabel("trigger-to-cloud latency (ms)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("capture node on one H200, 16 cameras, 1100 x 1604 unless named (threer-ros latency)",
                 fontsize=9)
    fig.tight_layout()
    out = DOCS / "images" / "live_latency.png"
    fig.savefig(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
