"""The synthetic rig and the capture node, each in its own process, with an :class:`OutputProbe`
on the node's outputs in this one: what ``threer-ros demo`` and ``threer-ros latency`` run.

The rig (``threer-ros replay --synthetic``) and the node talk over real ROS 2 topics in the
current ``ROS_DOMAIN_ID``; the node reads the rig's calibration from a YAML file written here.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from threer_ros.config import read_parameters
from threer_ros.data.calibration import save_rig_calibration
from threer_ros.data.synthetic import SyntheticRig
from threer_ros.ros.node import NODE_NAME, PIPELINE_STATUS
from threer_ros.ros.probe import OutputProbe
from threer_ros.ros.spinning import SpinningNodes


@dataclass
class SyntheticSession:
    """The running processes and the probe of :func:`synthetic_session`."""

    rig: SyntheticRig
    probe: OutputProbe
    replay: subprocess.Popen
    workers: list[subprocess.Popen]     # capture nodes; the first is named like the default

    @property
    def node(self) -> subprocess.Popen:
        """The (first) capture node."""
        return self.workers[0]

    def exited_early(self) -> str | None:
        """A message naming the child that has exited, or None while all run."""
        children = [("synthetic rig", self.replay)] + [
            (f"capture node {i}" if len(self.workers) > 1 else "capture node", worker)
            for i, worker in enumerate(self.workers)]
        for name, process in children:
            if process.poll() is not None:
                return f"the {name} exited early with status {process.returncode}"
        return None

    def pipeline_values(self) -> dict[str, str]:
        """The key/values of the node's newest pipeline status (empty before the first)."""
        status = self.probe.latest_status(PIPELINE_STATUS)
        return {kv.key: kv.value for kv in status.values} if status else {}


def _worker_arguments(parameters: Mapping[str, str], index: int, workers: int,
                      rate_hz: float) -> list[str]:
    """``--ros-args`` of capture node ``index`` of ``workers`` (see :func:`synthetic_session`)."""
    own = dict(parameters)
    if workers > 1:
        own.update(worker_index=str(index), worker_count=str(workers), trigger_rate=str(rate_hz))
        if own.get("device", "").startswith("cuda"):
            own["device"] = f"cuda:{index}"
    args = ["--ros-args", *(a for k, v in own.items() for a in ("-p", f"{k}:={v}"))]
    return args + (["-r", f"__node:={NODE_NAME}_{index}"] if index else [])


def stop_child(process: subprocess.Popen, timeout_s: float = 120.0) -> None:
    """Ctrl-C a child and wait (the node first finishes the reconstruction it is running);
    kill it if it is still running after ``timeout_s``."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def synthetic_session(out: Path, width: int, rate_hz: float, seed: int,
                      node_parameters: Mapping[str, str] | None = None,
                      compressed: bool = False, workers: int = 1
                      ) -> Iterator[SyntheticSession]:
    """Start the synthetic rig (``width`` px portrait images, ``rate_hz`` sets per second) and
    the capture node, and spin a probe on the node's outputs; stop all three on exit.

    Args:
        out: Folder for the rig's calibration file and its rendered images (created).
        width: Image width of the rig's cameras (pixels).
        rate_hz: Trigger rate of the rig.
        seed: Scene seed (the rig publisher renders the same scene).
        node_parameters: ROS parameters of the node, over the defaults: ``backend: mvs``, the
            rig's calibration, ``working_width: width``, reliable image subscriptions.
    """
    out.mkdir(parents=True, exist_ok=True)
    defaults = read_parameters()
    rig = SyntheticRig.render(seed=seed, width=width, names=defaults["cameras"])
    rendered = out / "synthetic_rig.npz"        # the rig process publishes these images
    rig.save(rendered)
    calibration = out / "synthetic_rig.yaml"
    save_rig_calibration(calibration, defaults["output_frame"],
                         {v.name: v.calibration for v in rig.views})
    parameters = {"rig_calibration": str(calibration), "backend": "mvs",
                  "working_width": str(width), "image_reliability": "reliable",
                  **(node_parameters or {})}
    children: list[subprocess.Popen] = []
    try:
        with SpinningNodes() as ros:        # stopped before the children: nothing to wait on
            probe = ros.add(OutputProbe(context=ros.context))
            for index in range(workers):
                children.append(subprocess.Popen([sys.executable, "-m", "threer_ros.ros.node",
                                                  *_worker_arguments(parameters, index,
                                                                     workers, rate_hz)]))
            replay = subprocess.Popen(
                [sys.executable, "-m", "threer_ros.cli", "replay", "--synthetic", "--rate",
                 str(rate_hz), "--rendered", str(rendered), "--seed", str(seed)]
                + (["--compressed"] if compressed else []))
            children.append(replay)
            yield SyntheticSession(rig, probe, replay, children[:-1])
    finally:
        for child in reversed(children):       # the rig first, then the nodes
            stop_child(child)
