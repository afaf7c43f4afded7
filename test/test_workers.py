"""Several capture-node workers on one rig (issue 14): two nodes in their own processes share
the synthetic rig's sets by stamp; every set is reconstructed by exactly one of them."""

from __future__ import annotations

import pytest

pytest.importorskip("rclpy", reason="the ROS layer needs rclpy (make test installs it)")

from ros_graph import CAMERAS, TEST_PARAMETERS, WAIT, capture_graph, status_values  # noqa: E402
from ros_harness import CAPTURE_NODE, node_arguments, running  # noqa: E402
from threer_ros.data.calibration import save_rig_calibration  # noqa: E402
from threer_ros.data.synthetic import SyntheticRig  # noqa: E402
from threer_ros.ros.node import pipeline_status_name  # noqa: E402

SECOND = 1_000_000_000


@pytest.fixture(scope="module")
def rig() -> SyntheticRig:
    return SyntheticRig.render(seed=5, width=64, names=CAMERAS)


def test_two_workers_reconstruct_every_set_exactly_once_between_them(rig, ros_domain_id,
                                                                     tmp_path):
    calibration = tmp_path / "rig.yaml"
    save_rig_calibration(calibration, "rig", {v.name: v.calibration for v in rig.views})
    # a rig triggered once a second: the sets at 1, 2, 3, 4 s go to workers 1, 0, 1, 0
    shared = {"rig_calibration": str(calibration), "worker_count": "2", "trigger_rate": "1.0"}
    second = {**TEST_PARAMETERS, "working_width": "64", **shared, "worker_index": "1"}
    command = [*CAPTURE_NODE, *node_arguments(second), "-r", "__node:=threer_capture_1"]
    with running(command, ros_domain_id), capture_graph(
            rig, ros_domain_id, {**shared, "worker_index": "0"}) as graph:
        assert graph.probe.wait_for(lambda r: all(   # both workers subscribed to every camera
            p.get_subscription_count() == 2 for p in graph.driver.image_pubs.values()), WAIT)

        def triggers() -> list[int]:
            return sorted(round(s / SECOND) for s, _ in graph.probe.recorded.cloud_arrivals)

        for k in (1, 2, 3, 4):       # a repeated set is a duplicate to both workers
            assert graph.publish_until(lambda: graph.driver.publish_set(k * SECOND),
                                       lambda r: k in triggers())
        assert triggers() == [1, 2, 3, 4]                   # each set once, none twice

        def others(node: str) -> int:
            status = graph.probe.latest_status(pipeline_status_name(node))
            return int(status_values(status)["sets_other_workers"]) if status else -1

        assert graph.probe.wait_for(lambda r: others("/threer_capture") == 2
                                    and others("/threer_capture_1") == 2, WAIT)
