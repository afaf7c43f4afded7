"""SpinningNodes: stopping while the thread waits or runs callbacks never hangs, and what was
spun is destroyed only after the thread has ended (over real DDS, this module's domain)."""

from __future__ import annotations

import threading

import pytest

rclpy = pytest.importorskip("rclpy", reason="the ROS layer needs rclpy (make test installs it)")

from rclpy.exceptions import InvalidHandle  # noqa: E402
from rclpy.node import Node  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from threer_ros.ros.spinning import SpinningNodes  # noqa: E402


class Chatter(Node):
    """Publishes on a 1 ms timer and counts what it hears back: callbacks run all the time."""

    def __init__(self, context) -> None:
        super().__init__("test_chatter", context=context)
        self.heard = threading.Event()
        self.count = 0
        publisher = self.create_publisher(String, "chatter", 10)
        self.create_timer(0.001, lambda: publisher.publish(String(data="hi")))
        self.create_subscription(String, "chatter", self._hear, 10)

    def _hear(self, _: String) -> None:
        self.count += 1
        if self.count >= 5:
            self.heard.set()


def test_stopping_while_callbacks_run_ends_the_thread_then_destroys(ros_domain_id):
    for _ in range(10):      # repeated: the stop lands at different points of the spin loop
        with SpinningNodes(ros_domain_id) as ros:
            chatter = ros.add(Chatter(ros.context))
            assert ros.wait(chatter.heard, timeout=60)
        assert not ros.ok() and not ros.context.ok()
        with pytest.raises(InvalidHandle):       # destroyed, after the thread ended
            chatter.get_name()
    with SpinningNodes(ros_domain_id) as ros:     # and while it waits with nothing to do
        ros.add(Node("test_idle", context=ros.context))
    assert not ros.ok()


def test_a_failing_callback_is_raised_by_stop(ros_domain_id):
    def fail() -> None:
        raise ZeroDivisionError("in a timer")

    with pytest.raises(RuntimeError, match="a callback failed") as failure:
        with SpinningNodes(ros_domain_id) as ros:
            node = ros.add(Node("test_failing", context=ros.context))
            node.create_timer(0.001, fail)
            assert not ros.wait(timeout=60)       # spinning ends with the exception
    assert isinstance(failure.value.__cause__, ZeroDivisionError)


def test_a_publish_cut_short_by_a_shutdown_is_no_error(ros_domain_id):
    """Ctrl-C shuts ROS down while a timer publishes (the synthetic rig at 10 Hz): the
    publish fails, and that is the end the user asked for, not a callback failure."""
    with SpinningNodes(ros_domain_id) as ros:
        node = ros.add(Node("test_rig", context=ros.context))
        publisher = node.create_publisher(String, "chatter", 10)

        def publish_after_shutdown() -> None:
            ros.context.try_shutdown()            # as rclpy's Ctrl-C handler does
            publisher.publish(String(data="late"))

        node.create_timer(0.001, publish_after_shutdown)
        assert not ros.wait(timeout=60)           # spinning ends with the shutdown
    assert ros.error is None


def test_a_node_of_another_context_is_refused(ros_domain_id):
    with SpinningNodes(ros_domain_id) as first, SpinningNodes(ros_domain_id) as second:
        elsewhere = second.add(Node("test_elsewhere", context=second.context))
        with pytest.raises(ValueError, match="not created in this context"):
            first.add(elsewhere)
