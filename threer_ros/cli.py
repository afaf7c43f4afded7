"""``threer-ros``: the one command-line entry point, with sub-commands.

Each sub-command lives with the code it drives; a module that offers one exposes
``register(subparsers)`` which adds its parser and sets ``func`` to a callable taking the parsed
arguments and returning the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: Modules that contribute sub-commands, in the order ``--help`` lists them.
_COMMAND_MODULES = (
    "threer_ros.ros.demo",
    "threer_ros.ros.latency",
    "threer_ros.ros.replay",
    "threer_ros.ros.record",
    "threer_ros.bag",
    "threer_ros.calibration_cli",
    "threer_ros.reconstruct",
    "threer_ros.bench",
    "threer_ros.weights",
)


def command_parser(subparsers: argparse._SubParsersAction, name: str, summary: str,
                   doc: str | None) -> argparse.ArgumentParser:
    """Add sub-command ``name`` whose ``--help`` shows its module's docstring ``doc``."""
    return subparsers.add_parser(name, help=summary, description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)


def _is_ros_package(module: str | None) -> bool:
    """Whether a failed import is of ROS 2 itself (rclpy or a message package)."""
    root = (module or "").split(".")[0]
    return root == "rclpy" or root.endswith("_msgs") or root == "builtin_interfaces"


def _needs_ros(error: ImportError):
    def explain(_args: argparse.Namespace) -> int:
        print(f"threer-ros: this command needs ROS 2 (import failed: {error}). Source a ROS 2 "
              "installation (Humble, Jazzy, Kilted) or use the project's venv: make venv",
              file=sys.stderr)
        return 2
    return explain


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="threer-ros",
        description="Multi-camera 3D reconstruction for ROS 2 capture rigs: the capture node's "
                    "demo and camera replay, the Fast3R / MASt3R / Pow3R networks' weights "
                    "and benchmarks.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            if not name.startswith("threer_ros.ros.") or not _is_ros_package(exc.name):
                raise
            sub.add_parser(name.rsplit(".", 1)[1], help="(needs ROS 2)").set_defaults(
                func=_needs_ros(exc))
            continue
        module.register(sub)
    return parser


def without_ros_arguments(argv: list[str]) -> list[str]:
    """``argv`` without its ROS argument blocks (``--ros-args ... [--]``).

    ``ros2 launch`` and ``ros2 run`` append such a block (remappings, namespace, parameters) to
    every executable they start; rclpy reads it from ``sys.argv`` itself.
    """
    kept, in_block = [], False
    for token in argv:
        if in_block:
            in_block = token != "--"
        elif token == "--ros-args":
            in_block = True
        else:
            kept.append(token)
    return kept


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(without_ros_arguments(sys.argv[1:] if argv is None else argv))
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
