"""Shared fixtures: the parity fixtures' location and a ROS domain unique to this test run."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """``../shared/fixtures/parity`` beside the checkout (CI clones with shared/ beside it)."""
    path = REPO.parent / "shared" / "fixtures" / "parity"
    if not (path / "index.json").is_file():
        pytest.fail(f"parity fixtures not found at {path}: clone the repository with shared/ "
                    "beside it")
    return path


@pytest.fixture(scope="session")
def ros_domain_id() -> int:
    """A base ROS_DOMAIN_ID in 1..20 derived from the process id, so parallel runs don't meet.

    Tests that need more domains add multiples of 20 (up to +200, each offset used by one
    test or module; taken: +20 .. +160): DDS allows 0..232. ``THREER_TEST_DOMAIN_BASE``
    overrides the base.
    """
    if "THREER_TEST_DOMAIN_BASE" in os.environ:     # set by parallel runs on one machine
        return int(os.environ["THREER_TEST_DOMAIN_BASE"])
    return 1 + os.getpid() % 20


def stop_process(process, stop_signal: int = signal.SIGTERM, timeout: float = 60.0) -> int:
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
