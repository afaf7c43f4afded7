"""``threer-ros latency``: the synthetic rig and the capture node in their own processes, the
node's latency read back from its diagnostics (this module's ROS domain, see ``conftest``)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("rclpy", reason="the ROS layer needs rclpy (make test installs it)")

from threer_ros.cli import main  # noqa: E402
from threer_ros.ros.latency import drift_report, parse_parameters, stream_report  # noqa: E402


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
    assert summary["host_memory_rss_mib"]["min"] > 0      # the node's own memory, for soaks
    for sample in result["samples_s"]:       # the backend's time is inside the latency
        assert 0 <= sample["node_overhead_s"] < sample["end_to_end_latency_s"]
    stream = result["stream"]              # every measured cloud, seen by a subscriber
    assert stream["clouds"] == len(result["cloud_arrivals_ns"]) == 2
    assert 0 < stream["latency_p50_s"] <= stream["latency_p99_s"] <= stream["latency_max_s"]
    assert "sets/s" in table and "p99" in table
    # how the sets came: complete, partial, dropped (the node's own counters)
    assert "sets_completed" in result["node_counters"] and "sets_dropped_sync" in table


def test_a_soak_measures_every_cloud_of_its_duration(tmp_path, ros_domain_id, monkeypatch):
    monkeypatch.setenv("ROS_DOMAIN_ID", str(ros_domain_id))
    report = tmp_path / "soak.json"
    assert main(["latency", "--device", "cpu", "--width", "48", "--rate", "1", "--warmup", "1",
                 "--duration", "6", "--sets", "1000", "--out", str(tmp_path / "run"),
                 "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["duration_s"] == 6
    arrivals = result["cloud_arrivals_ns"]
    assert result["stream"]["clouds"] == len(arrivals) >= 2      # not the 1000 of --sets
    assert (arrivals[-1][1] - arrivals[0][1]) * 1e-9 <= 6.5
    memory = result["memory_series"]             # once a second, for memory over the run
    assert len(memory) >= 3 and all(m["host_memory_rss_mib"] > 0 for m in memory)
    stamps = [m["stamp_ns"] for m in memory]
    assert stamps == sorted(stamps) and stamps[0] >= arrivals[0][0]


def test_stream_report_counts_triggers_drops_and_latency_percentiles():
    second = 1_000_000_000
    # a 10 Hz rig: triggers every 0.1 s; the sets at 0.2 s and 0.3 s were dropped
    stamps = [0, second // 10, 4 * second // 10, 5 * second // 10]
    latencies = [0.05, 0.06, 0.07, 0.20]
    arrivals = [(s, s + int(lat * second)) for s, lat in zip(stamps, latencies)]
    report = stream_report(arrivals, rate_hz=10.0)
    assert report["clouds"] == 4 and report["sets_triggered"] == 6
    assert report["fraction_reconstructed"] == pytest.approx(4 / 6)
    assert report["sets_per_s"] == pytest.approx(3 / 0.65)
    assert report["latency_p50_s"] == pytest.approx(0.065)
    assert 0.19 < report["latency_p99_s"] <= report["latency_max_s"] == pytest.approx(0.20)
    with pytest.raises(ValueError, match="at least 2 clouds"):
        stream_report(arrivals[:1], rate_hz=10.0)


def test_drift_report_compares_the_first_and_last_quarter_of_a_run():
    # 16 clouds a second apart whose latency grows from 100 to 250 ms; host memory grows by
    # 10 MiB a sample, GPU memory stays
    arrivals = [(i * 10**9, i * 10**9 + (100 + 10 * i) * 10**6) for i in range(16)]
    samples = [{"host_memory_rss_mib": 500.0 + 10 * i, "gpu_memory_reserved_mib": 5000.0,
                "end_to_end_latency_s": 0.1} for i in range(8)]
    drift = drift_report(arrivals, samples)
    assert drift["latency_p50_s_first"] == pytest.approx(0.115)       # 100..130 ms
    assert drift["latency_p50_s_last"] == pytest.approx(0.235)        # 220..250 ms
    assert drift["host_memory_rss_mib_first"] == 505.0
    assert drift["host_memory_rss_mib_last"] == 565.0
    assert drift["gpu_memory_reserved_mib_first"] == drift["gpu_memory_reserved_mib_last"]
    assert "end_to_end_latency_s_first" not in drift                   # memory and latency only
    assert drift_report(arrivals[:7], samples[:7]) == {}               # too short to tell
