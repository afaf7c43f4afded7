"""Child processes of the tests that run ROS 2 graphs: started on the test's own domain with
discovery kept on this machine, and stopped whatever happens in the test (also when an
assertion fails while they start). No rclpy here: conftest imports it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

#: ``threer-ros`` in this interpreter.
CLI = (sys.executable, "-m", "threer_ros.cli")
#: The capture node in this interpreter (``--ros-args`` and parameters follow).
CAPTURE_NODE = (sys.executable, "-m", "threer_ros.ros.node")


def ros_env(domain_id: int, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a child on ``domain_id``, discovery on localhost only.

    Raises:
        ValueError: ``domain_id`` outside 1..101 (above, Fast DDS's ports are ephemeral ones).
    """
    if not 1 <= domain_id <= 101:
        raise ValueError(f"ROS_DOMAIN_ID {domain_id} is outside 1..101: see conftest.py")
    return dict(os.environ, ROS_DOMAIN_ID=str(domain_id),
                ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", **(extra or {}))


def node_arguments(parameters: Mapping[str, object]) -> list[str]:
    """``--ros-args -p name:=value ...`` for ``parameters``."""
    return ["--ros-args", *(a for k, v in parameters.items() for a in ("-p", f"{k}:={v}"))]


def stop_process(process: subprocess.Popen, stop_signal: int = signal.SIGTERM,
                 timeout: float = 60.0) -> int:
    """Send ``stop_signal`` to a child process and wait for it; one still running after
    ``timeout`` seconds is killed (never left behind) and fails the test. Returns its status."""
    if process.poll() is None:
        process.send_signal(stop_signal)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"{process.args[:4]} did not exit within {timeout:.0f} s of "
                             f"signal {stop_signal}") from None


class OutputLines:
    """Collects a child process's output lines (stdout, with stderr merged into it) and lets
    the test wait for one."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._reader.start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()

    def wait_for(self, text: str, timeout: float) -> bool:
        """Wait until a line contains ``text``."""
        with self._cond:
            return self._cond.wait_for(lambda: any(text in line for line in self.lines),
                                       timeout=timeout)

    def text(self) -> str:
        """Everything read so far."""
        with self._cond:
            return "".join(self.lines)


@dataclass
class Child:
    """A process started by :func:`running`.

    Attributes:
        process: The process.
        output: Its output lines, when collected.
        returncode: Its exit status, once :func:`running` has stopped it.
    """

    process: subprocess.Popen
    output: OutputLines | None = None
    returncode: int | None = None


@contextmanager
def running(command: Sequence[str], domain_id: int, *, stop_signal: int = signal.SIGTERM,
            env: Mapping[str, str] | None = None, collect_output: bool = False,
            timeout: float = 60.0) -> Iterator[Child]:
    """Run ``command`` on ``domain_id`` (:func:`ros_env`, plus ``env``) for the ``with`` block,
    then stop it with ``stop_signal`` (:func:`stop_process`), also when the block fails.
    ``collect_output``: read its stdout and stderr into ``child.output``."""
    pipe = subprocess.PIPE if collect_output else None
    process = subprocess.Popen(list(command), env=ros_env(domain_id, env), text=True,
                               stdout=pipe, stderr=subprocess.STDOUT if collect_output else None)
    child = Child(process, OutputLines(process) if collect_output else None)
    try:
        yield child
    finally:
        child.returncode = stop_process(process, stop_signal, timeout)
