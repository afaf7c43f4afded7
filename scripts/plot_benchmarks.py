"""Plot time and peak GPU memory against the number of views, per backend, from the JSON
reports of ``threer-ros bench backends`` (docs/benchmarks/*.json) into docs/benchmarks_views.png.

    .venv/bin/pip install matplotlib            # a plotting tool only, not a dependency
    .venv/bin/python scripts/plot_benchmarks.py
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"
REPORTS = ("backends16.json", "backends_views.json")
STYLE = {"fast3r": "o-", "mast3r": "s-", "pow3r": "^-"}


def rows() -> list[dict]:
    """The calibrated-fast-path, k-nearest-graph rows of the reports, one per backend and
    camera count."""
    found = {}
    for name in REPORTS:
        for row in json.loads((DOCS / "benchmarks" / name).read_text())["rows"]:
            if row["alignment"] == "fast" and row["pair_graph"] == "knn":
                found[(row["backend"], row["cameras"])] = row
    return [found[key] for key in sorted(found)]


def main() -> None:
    data = rows()
    fig, (time_ax, memory_ax) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for backend, style in STYLE.items():
        mine = [r for r in data if r["backend"] == backend]
        views = [r["cameras"] for r in mine]
        time_ax.plot(views, [r["median_ms"]["total"] for r in mine], style, label=backend)
        time_ax.plot(views, [r["median_ms"]["network"] for r in mine], style[0] + ":",
                     color=time_ax.lines[-1].get_color(), alpha=0.6)
        memory_ax.plot(views, [r["peak_gib"] for r in mine], style, label=backend)
    environment = json.loads((DOCS / "benchmarks" / REPORTS[1]).read_text())["environment"]
    time_ax.set(xlabel="views (cameras)", ylabel="ms per set", xscale="log", yscale="log",
                title="time per set: total (solid), network (dotted)")
    memory_ax.set(xlabel="views (cameras)", ylabel="GiB", xscale="log",
                  title="peak GPU memory")
    for ax in (time_ax, memory_ax):
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xticks([4, 8, 16, 32, 64], labels=["4", "8", "16", "32", "64"])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"512 x 747 px views, bf16, calibrated fast path, k-nearest pair graph; "
                 f"{environment['device']}, torch {environment['torch']}, "
                 f"{environment['date']}", fontsize=9)
    fig.savefig(DOCS / "benchmarks_views.png", dpi=110)


if __name__ == "__main__":
    main()
