"""A per-test time limit enforced from a separate process, so that a hung test fails the run
instead of holding it until CI's own limit.

pytest-timeout acts from inside the pytest process (a signal handler or a thread), and both
need the interpreter: a thread that spins holding the GIL (rclpy torn down under a spinning
executor did this) leaves neither a chance. The watchdog is a child process started once per
session; pytest tells it over a pipe when each test starts (with its limit) and ends. When a
test runs past its limit, the watchdog prints which test and for how long to the terminal's
stderr, then kills pytest and every process below it (the tests' ROS nodes too), so ``make
test`` ends with a failure at once. The process tree is killed rather than pytest's process
group, which is usually shared with ``make`` and the shell.

The limit of a test: ``--watchdog SECONDS``, or else its pytest-timeout limit (the ``timeout``
marker or ``--timeout``) plus :data:`GRACE_S`, so that pytest-timeout, with its tracebacks,
acts first where it can; without either, :data:`DEFAULT_LIMIT_S`. ``--watchdog 0`` turns it
off. Used as pytest hooks (conftest imports ``pytest_addoption`` and ``pytest_configure``) and
run as ``python hang_watchdog.py PID`` for the watching side.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path
from typing import IO, Iterator

import pytest

#: Seconds the watchdog allows beyond a test's pytest-timeout limit.
GRACE_S = 30.0
#: Limit of a test with neither ``--watchdog`` nor a pytest-timeout limit.
DEFAULT_LIMIT_S = 900.0


# --- the watching process -----------------------------------------------------------------
def _process_tree(root: int) -> list[int]:
    """``root`` and its descendants (from /proc), parents before children."""
    children: dict[int, list[int]] = defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue                     # the process ended meanwhile
        children[int(fields[1])].append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def _kill_tree(root: int) -> int:
    """SIGKILL ``root`` and its descendants (not this process); returns how many."""
    victims = [pid for pid in _process_tree(root) if pid != os.getpid()]
    for pid in victims:
        os.kill(pid, signal.SIGSTOP)     # no more forks or reaping while the tree is killed
    victims = [pid for pid in _process_tree(root) if pid != os.getpid()]
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(victims)


def _commands(fd: int, deadline: list[float | None]) -> Iterator[str]:
    """Lines read from ``fd``; yields "" each time ``deadline[0]`` passes without one."""
    pending = b""
    while True:
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            yield line.decode()
        timeout = None if deadline[0] is None else max(0.0, deadline[0] - time.monotonic())
        if not select.select([fd], [], [], timeout)[0]:
            yield ""
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            return                       # pytest closed the pipe, or died
        pending += chunk


def watch(pytest_pid: int, commands: int, report: IO[str]) -> int:
    """Watch ``pytest_pid``: ``start SECONDS TEST`` and ``stop`` lines arrive on the file
    descriptor ``commands``.
    Returns 0 when the pipe closes, 1 after killing a test that overran."""
    deadline: list[float | None] = [None]
    test, limit, started = "", 0.0, 0.0
    for line in _commands(commands, deadline):
        if line.startswith("start "):
            _, seconds, test = line.split(" ", 2)
            limit, started = float(seconds), time.monotonic()
            deadline[0] = started + limit
        elif line == "stop":
            deadline[0] = None
        elif line == "" and deadline[0] is not None:
            report.write(f"\nhang watchdog: {test} has run for "
                         f"{time.monotonic() - started:.0f} s, over its limit of {limit:.0f} s: "
                         f"killing pytest (pid {pytest_pid}) and the processes it started\n")
            report.flush()
            killed = _kill_tree(pytest_pid)
            report.write(f"hang watchdog: killed {killed} processes\n")
            report.flush()
            return 1
    return 0


# --- the pytest side ------------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--watchdog", type=float, default=None, metavar="SECONDS",
                     help="per-test limit enforced by a separate process that kills the run "
                          "(default: the test's pytest-timeout limit + 30 s, else 900 s; "
                          "0 = off)")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("watchdog") != 0 and not hasattr(config, "workerinput"):
        config.pluginmanager.register(HangWatchdog(config), "threer_hang_watchdog")


class HangWatchdog:
    """The pytest plugin: starts the watching process and tells it about each test."""

    def __init__(self, config: pytest.Config) -> None:
        self._config = config
        capture = config.pluginmanager.getplugin("capturemanager")
        # started with pytest's output capture suspended, so that its stderr is the terminal's
        with capture.global_and_fixture_disabled() if capture else nullcontext():
            self._process = subprocess.Popen(
                [sys.executable, __file__, str(os.getpid())], stdin=subprocess.PIPE, text=True,
                bufsize=1)

    def _limit(self, item: pytest.Item) -> float:
        fixed = self._config.getoption("watchdog")
        if fixed:
            return fixed
        marker = item.get_closest_marker("timeout")
        timeout = marker.args[0] if marker and marker.args else \
            (marker.kwargs.get("timeout") if marker else None)
        if timeout is None and self._config.pluginmanager.hasplugin("timeout"):
            timeout = self._config.getoption("timeout", None)
        return float(timeout) + GRACE_S if timeout else DEFAULT_LIMIT_S

    def _send(self, line: str) -> None:
        try:
            self._process.stdin.write(line + "\n")
        except (BrokenPipeError, ValueError):
            pass                        # the watchdog is gone: nothing to tell

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None):
        self._send(f"start {self._limit(item)} {item.nodeid}")
        try:
            return (yield)
        finally:
            self._send("stop")

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self._process.stdin.close()
        self._process.wait()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # Ctrl-C is pytest's; the pipe ends us
    sys.exit(watch(int(sys.argv[1]), sys.stdin.fileno(), sys.stderr))
