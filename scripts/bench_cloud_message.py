"""Time the capture node's cloud message for a fused cloud of N points and a point budget.

What the node's delivery thread does per set (``filtered_cloud_msg``): drop non-finite and
low-confidence points, take the budget's stratified subset when the cloud is larger, and pack
the PointCloud2. Random points, 7 runs, the median:

    python scripts/bench_cloud_message.py --points 2840000 500000 --budget 500000

Used for docs/benchmarks.md, "The point budget before the copy"; it needs rclpy (make setup).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main() -> None:
    from std_msgs.msg import Header

    from threer_ros.ros.convert import filtered_cloud_msg

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, nargs="+", default=[2_840_000, 500_000])
    p.add_argument("--budget", type=int, default=500_000)
    p.add_argument("--runs", type=int, default=7)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    for n in args.points:
        points = rng.random((n, 3)).astype(np.float32)
        colors = rng.integers(0, 256, (n, 3), dtype=np.uint8)
        confidence = rng.random(n).astype(np.float32)
        seconds = []
        for _ in range(args.runs):
            started = time.perf_counter()
            filtered_cloud_msg(Header(), points, colors, confidence, 0.0, args.budget, seed=1)
            seconds.append(time.perf_counter() - started)
        print(f"{n} points -> a message of at most {args.budget}: median "
              f"{statistics.median(seconds) * 1e3:.1f} ms over {args.runs} runs")


if __name__ == "__main__":
    main()
