"""Parameter descriptions come from capture.yaml's comments; values are checked by one table."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import pytest

pytest.importorskip("rclpy", reason="the parameter table builds rclpy descriptors")

import rclpy  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from threer_ros.config import parameter_descriptions, read_parameters  # noqa: E402
from threer_ros.ros.parameters import LIVE, RANGES, NodeSettings, check_value, declare  # noqa: E402


def test_every_parameter_of_the_config_file_has_a_description():
    descriptions, values = parameter_descriptions(), read_parameters()
    assert set(descriptions) == set(values)
    assert all(descriptions[name] for name in values)
    # comments above the key, and a trailing comment with its continuation lines
    assert descriptions["cameras"].startswith("Camera names, in rig order.")
    assert descriptions["image_transport"] == ("raw: Image on image_topic; compressed: "
                                               'CompressedImage on image_topic + "/compressed" '
                                               "(JPEG/PNG, decoded on one thread per camera)")
    assert set(LIVE) | set(RANGES) <= set(values)


def test_a_description_is_read_from_any_parameter_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("/**:\n  ros__parameters:\n    # --- heading ---\n    # above\n"
                    "    a: 1   # after\n           # more\n\n    b: [x,\n        y]\n")
    assert parameter_descriptions(path) == {"a": "above after more", "b": ""}


@pytest.mark.parametrize("name, value, expected", [("voxel_size", 0, 0.0),
                                                   ("max_rate", 3, 3.0),
                                                   ("max_points", 10, 10)])
def test_whole_numbers_are_accepted_for_decimal_parameters(name, value, expected):
    checked, reason = check_value(name, value)
    assert reason == "" and checked == expected and type(checked) is type(expected)


@pytest.mark.parametrize("name, value, match", [("voxel_size", "a", "number"),
                                                ("voxel_size", True, "number"),
                                                ("max_points", 0, "outside"),
                                                ("sync_tolerance", 0.0, "outside")])
def test_wrong_types_and_values_out_of_range_are_refused(name, value, match):
    checked, reason = check_value(name, value)
    assert checked is None and match in reason and name in reason


def test_settings_update_checks_cross_parameter_limits():
    values = read_parameters()
    settings = NodeSettings.from_values(values)
    assert settings.updated({"voxel_size": 0.01}).options.voxel_size == 0.01
    assert settings.updated({"max_points": 7}).options.max_points == 7
    with pytest.raises(ValueError, match="min_cameras"):
        settings.updated({"min_cameras": len(settings.cameras) + 1})


@contextmanager
def _node(**overrides) -> Iterator[Node]:
    """A node of its own context with parameter overrides, as ``--ros-args -p`` gives them."""
    context = rclpy.Context()
    rclpy.init(context=context)
    node = Node("parameter_test", context=context, parameter_overrides=[
        Parameter(name, value=value) for name, value in overrides.items()])
    try:
        yield node
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)


def test_declared_parameters_take_whole_numbers_and_carry_descriptors():
    """A YAML ``voxel_size: 0`` is an INTEGER override: declared without a traceback."""
    with _node(voxel_size=0, max_rate=3) as node:
        settings = declare(node)
        assert settings.options.voxel_size == 0.0 and settings.max_rate == 3.0
        backend = node.describe_parameter("backend")
        assert backend.read_only and "mvs" in backend.description
        refused = node.set_parameters([Parameter("backend", value="fast3r")])[0]
        assert not refused.successful and "read-only" in refused.reason
        assert not node.describe_parameter("max_points").read_only


@pytest.mark.parametrize("override", [0.0, "x"])
def test_an_unusable_value_at_start_up_is_a_clear_error(override):
    with _node(sync_tolerance=override) as node, pytest.raises(ValueError,
                                                                match="sync_tolerance"):
        declare(node)


def test_an_unknown_warm_up_mode_is_a_clear_error():
    with _node(warmup_on_configure="sometimes") as node, pytest.raises(
            ValueError, match="'warmup_on_configure' is 'sometimes': use auto, always, never"):
        declare(node)
