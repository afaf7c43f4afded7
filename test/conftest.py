"""Shared fixtures: the parity fixtures' location, the ROS domains of the tests (allocated here,
in one place) and the hang watchdog (``hang_watchdog.py``).

Helpers of the ROS tests: ``ros_harness.py`` (child processes on a domain, stopped whatever
happens: ``running``, ``ros_env``, ``stop_process``), ``ros_graph.py`` (the capture node with a
rig driver and an output probe: ``capture_graph``), and in the package
``threer_ros.ros.spinning.SpinningNodes`` (nodes spun in this process, stopped safely).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hang_watchdog import pytest_addoption, pytest_configure  # noqa: F401 - pytest hooks
from ros_harness import stop_process  # noqa: F401 - importable from conftest, as before

REPO = Path(__file__).resolve().parents[1]

# Discovery stays on this machine, for this process's contexts and (through the environment)
# for every child process; ros_harness.ros_env sets it for children explicitly too.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

# --- ROS domains ------------------------------------------------------------------------------
#: Highest ROS_DOMAIN_ID a test may use: above 101, Fast DDS's ports (7400 + 250 * id + ...)
#: fall into the ephemeral range, where another program's socket can take them.
MAX_DOMAIN_ID = 101
#: Distance between two slots; also the number of bases, so runs with different bases (parallel
#: runs on one machine: THREER_TEST_DOMAIN_BASE) never share an id.
SLOT_STEP = 10
#: ROS_DOMAIN_ID = base + SLOT_STEP * slot, base in 1..10 (THREER_TEST_DOMAIN_BASE, else from
#: the process id), slot in 0..9: ids stay in 1..100. Each graph of processes that runs at the
#: same time as another needs a slot of its own; tests of one module run one after the other
#: and stop their processes before the next test starts, so they share their module's slot.
#: Every module that talks over DDS is listed here (the ``ros_domain_id`` fixture and
#: ``ros_domain`` fail for a name that is not).
DOMAIN_SLOTS = {
    "test_node": 0,                 # the module-wide graph (one capture node)
    "test_node:own graph": 1,       # test_node's tests that start a graph of their own
    "test_replay": 2,
    "test_bag_replay": 3,
    "test_latency": 4,
    "test_demo": 4,                 # runs after test_latency, never beside it
    "test_node_settings": 5,        # renamed topics, compressed transport, bag layouts
    "test_launch": 6,               # reserved: launch13's launch-file tests
    "test_lifecycle_services": 7,   # reserved: node13's lifecycle and service tests
    "test_parameters": 8,           # reserved: node13's parameter tests
    "test_spinning": 9,
    # Modules run one after another in a test run, so a test that needs a graph beside its
    # module's may take the slot of another module (here test_node's, whose graphs are gone).
    "test_lifecycle_services:own graph": 1,
    "test_workers": 2,              # test_replay's slot (see above)
    "test_await_future": 9,         # test_spinning's slot
}


def domain_base() -> int:
    """The base of this test run: ``THREER_TEST_DOMAIN_BASE`` (1..10), else 1 + pid % 10."""
    if "THREER_TEST_DOMAIN_BASE" in os.environ:     # set by parallel runs on one machine
        base = int(os.environ["THREER_TEST_DOMAIN_BASE"])
        if not 1 <= base <= SLOT_STEP:
            raise ValueError(f"THREER_TEST_DOMAIN_BASE={base}: use 1..{SLOT_STEP}")
        return base
    return 1 + os.getpid() % SLOT_STEP


def ros_domain(name: str) -> int:
    """The ROS_DOMAIN_ID of slot ``name`` of :data:`DOMAIN_SLOTS` in this run."""
    if name not in DOMAIN_SLOTS:
        raise KeyError(f"{name!r} has no ROS domain: add it to DOMAIN_SLOTS in conftest.py")
    return domain_base() + SLOT_STEP * DOMAIN_SLOTS[name]


@pytest.fixture(scope="module")
def ros_domain_id(request: pytest.FixtureRequest) -> int:
    """The ROS_DOMAIN_ID of the requesting test module (its slot in :data:`DOMAIN_SLOTS`)."""
    return ros_domain(Path(request.module.__file__).stem)


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """``../shared/fixtures/parity`` beside the checkout (CI clones with shared/ beside it)."""
    path = REPO.parent / "shared" / "fixtures" / "parity"
    if not (path / "index.json").is_file():
        pytest.fail(f"parity fixtures not found at {path}: clone the repository with shared/ "
                    "beside it")
    return path
