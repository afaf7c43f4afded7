"""The hang watchdog (``hang_watchdog.py``): a pytest run whose test hangs holding the GIL (no
signal handler or thread of pytest's can run then) is killed from outside and reported, with
the processes it started, instead of being waited on."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

TEST_DIR = Path(__file__).resolve().parent

HANGING_TESTS = '''
import ctypes
import os
import re
import subprocess
import sys
import time


def test_quick():
    pass


def test_hangs_holding_the_gil():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(os.environ["CHILD_PID_FILE"], "w") as f:
        f.write(str(child.pid))
    ctypes.PyDLL(None).sleep(600)     # libc sleep, called with the GIL held


def test_never_reached():
    pass
'''


def _gone(pid: int) -> bool:
    """True once ``pid`` has ended (absent, or a zombie waiting for its new parent)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def test_a_hung_test_is_killed_and_reported_with_its_children(tmp_path):
    (tmp_path / "conftest.py").write_text(
        f"import sys\nsys.path.insert(0, {str(TEST_DIR)!r})\n"
        "from hang_watchdog import pytest_addoption, pytest_configure  # noqa: F401\n")
    (tmp_path / "test_hangs.py").write_text(HANGING_TESTS)
    pid_file = tmp_path / "child.pid"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-p", "no:timeout",
         "--watchdog", "3", "test_hangs.py"], cwd=tmp_path, capture_output=True, text=True,
        env=dict(os.environ, CHILD_PID_FILE=str(pid_file), PYTHONUNBUFFERED="1"),
        timeout=300)     # only if the watchdog failed: the hang is 600 s
    assert run.returncode == -9, run.stdout + run.stderr     # SIGKILL, not an exit
    assert "test_hangs.py::test_quick PASSED" in run.stdout
    assert "test_never_reached" not in run.stdout
    assert re.search(r"hang watchdog: test_hangs.py::test_hangs_holding_the_gil has run for "
                     r"\d+ s, over its limit of 3 s: killing pytest \(pid \d+\) and the "
                     r"processes it started\nhang watchdog: killed 2 processes", run.stderr), \
        run.stderr                       # pytest and the test's child
    # the kills were sent before the watchdog ended (and with it the stderr pipe read here);
    # the child's end follows, without an event to wait on
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 30
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(child), f"the hung test's child {child} survived"


def test_a_run_within_its_limits_is_left_alone(tmp_path):
    (tmp_path / "conftest.py").write_text(
        f"import sys\nsys.path.insert(0, {str(TEST_DIR)!r})\n"
        "from hang_watchdog import pytest_addoption, pytest_configure  # noqa: F401\n")
    (tmp_path / "test_fine.py").write_text("def test_a():\n    pass\n\n\ndef test_b():\n"
                                           "    pass\n")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "--watchdog", "60", "test_fine.py"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "2 passed" in run.stdout, run.stdout + run.stderr
    assert "hang watchdog" not in run.stderr
