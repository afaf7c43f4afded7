"""How many complete 16-camera sets one subscriber process sees, by queue depth and executor.

The publisher process sends 16 reliable image topics (one rgb8 image each per trigger) at a
fixed rate; the subscriber process takes them with the given QoS depth under a
SingleThreadedExecutor or a MultiThreadedExecutor(2) while a worker thread keeps the GIL busy
half of the time (as the capture node's reconstruction thread does). It prints one JSON line:
sets triggered, sets seen, sets complete (all 16 images), images received.

    python scripts/bench_image_queue.py --depth 1 --executor single --width 550 --rate 10

Used for docs/benchmarks.md, "Image queue depth and executor"; it needs rclpy (make setup).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

CAMERAS = 16


def _qos(depth: int):
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                      history=HistoryPolicy.KEEP_LAST)


def publish(args: argparse.Namespace) -> None:
    """Publish ``args.seconds`` of sets; the header's ``sec`` is the set's index."""
    import rclpy
    from sensor_msgs.msg import Image
    rclpy.init()
    node = rclpy.create_node("image_queue_rig")
    pubs = [node.create_publisher(Image, f"/cam{i}/image", _qos(args.depth))
            for i in range(CAMERAS)]
    height = round(args.width * 1.458)
    msg = Image(height=height, width=args.width, encoding="rgb8", step=3 * args.width,
                data=bytes(3 * args.width * height))
    deadline = time.monotonic() + 30.0
    while any(p.get_subscription_count() == 0 for p in pubs) and time.monotonic() < deadline:
        time.sleep(0.1)
    start, index = time.monotonic(), 0
    while time.monotonic() - start < args.seconds:
        for pub in pubs:
            msg.header.stamp.sec = index
            pub.publish(msg)
        index += 1
        time.sleep(max(0.0, start + index / args.rate - time.monotonic()))
    print(index, flush=True)
    node.destroy_node()
    rclpy.shutdown()


def _busy_worker(stop: threading.Event) -> None:
    """Hold the GIL 5 ms, release it 5 ms, until ``stop``."""
    while not stop.is_set():
        started = time.perf_counter()
        while time.perf_counter() - started < 0.005:
            pass
        time.sleep(0.005)


def subscribe(args: argparse.Namespace) -> dict[str, int]:
    """Receive until the publisher process has finished; the counts."""
    import numpy as np
    import rclpy
    from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
    from sensor_msgs.msg import Image
    rclpy.init()
    node = rclpy.create_node("image_queue_node")
    seen: dict[int, set[int]] = {}

    def callback(camera: int):
        def take(msg: Image) -> None:
            np.frombuffer(msg.data, np.uint8)
            seen.setdefault(msg.header.stamp.sec, set()).add(camera)
        return take

    for i in range(CAMERAS):
        node.create_subscription(Image, f"/cam{i}/image", callback(i), _qos(args.depth))
    stop = threading.Event()
    threading.Thread(target=_busy_worker, args=(stop,), daemon=True).start()
    executor = SingleThreadedExecutor() if args.executor == "single" \
        else MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    rig = subprocess.Popen([sys.executable, __file__, "--role", "publish",
                            *_shared_arguments(args)], stdout=subprocess.PIPE, text=True)
    while rig.poll() is None:
        executor.spin_once(timeout_sec=0.1)
    end = time.monotonic() + 2.0                 # what is still on its way
    while time.monotonic() < end:
        executor.spin_once(timeout_sec=0.1)
    stop.set()
    executor.shutdown()
    node.destroy_node()
    rclpy.shutdown()
    sizes = [len(cameras) for cameras in seen.values()]
    return {"sets_triggered": int(rig.stdout.read().strip() or 0), "sets_seen": len(sizes),
            "sets_complete": sum(s == CAMERAS for s in sizes), "images": sum(sizes)}


def _shared_arguments(args: argparse.Namespace) -> list[str]:
    return ["--depth", str(args.depth), "--width", str(args.width), "--rate", str(args.rate),
            "--seconds", str(args.seconds)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=5, help="QoS depth of both ends")
    p.add_argument("--executor", choices=("single", "multi"), default="single")
    p.add_argument("--width", type=int, default=550, help="image width (height x 1.458)")
    p.add_argument("--rate", type=float, default=10.0, help="sets per second")
    p.add_argument("--seconds", type=float, default=40.0)
    p.add_argument("--role", choices=("subscribe", "publish"), default="subscribe",
                   help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.role == "publish":
        publish(args)
        return
    result = subscribe(args)
    print(json.dumps({"depth": args.depth, "executor": args.executor, "width": args.width,
                      "rate_hz": args.rate, "seconds": args.seconds,
                      "load_1min": round(os.getloadavg()[0], 2), **result}))


if __name__ == "__main__":
    main()
