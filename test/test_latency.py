"""``threer-ros latency``: the synthetic rig and the capture node in their own processes, the
node's latency read back from its diagnostics (this module's ROS domain, see ``conftest``)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("rclpy", reason="the ROS layer needs rclpy (make test installs it)")

from threer_ros.cli import main  # noqa: E402
from threer_ros.ros.latency import parse_parameters  # noqa: E402


def test_node_parameters_are_checked_before_anything_starts(capsys):
    assert parse_parameters(["pair_batch:=68", "compile_network:=true"]) == {
        "pair_batch": "68", "compile_network": "true"}
    with pytest.raises(ValueError, match="expected NAME:=VALUE"):
        parse_parameters(["pair_batch=68"])
    assert main(["latency", "--param", "pairs_per_batch:=68"]) == 2
    assert "no parameter 'pairs_per_batch'" in capsys.readouterr().err


def test_latency_is_measured_over_the_requested_reconstructions(
        tmp_path, ros_domain_id, monkeypatch, capsys):
    monkeypatch.setenv("ROS_DOMAIN_ID", str(ros_domain_id))
    report = tmp_path / "latency.json"
    assert main(["latency", "--device", "cpu", "--width", "64", "--rate", "0.5", "--warmup", "1",
                 "--sets", "2", "--out", str(tmp_path / "run"), "--json", str(report)]) == 0
    table = capsys.readouterr().out
    assert "node_overhead" in table and "end_to_end_latency" in table
    result = json.loads(report.read_text())
    assert result["parameters"]["backend"] == "mvs"
    summary = result["summary_s"]
    assert len(result["samples_s"]) == summary["end_to_end_latency_s"]["n"] == 2
    assert len(result["warmup_samples_s"]) == 1
    assert "stage_depth_s" in summary and "stage_publish_s" in summary
    for sample in result["samples_s"]:       # the backend's time is inside the latency
        assert 0 <= sample["node_overhead_s"] < sample["end_to_end_latency_s"]
