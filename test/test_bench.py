"""``threer-ros bench``: the benchmark command runs and writes the report its docs describe."""

from __future__ import annotations

import json

from threer_ros.cli import main


def test_bench_backends_reports_stage_medians_memory_and_the_sets_info(tmp_path):
    report = tmp_path / "bench.json"
    assert main(["bench", "backends", "--backends", "mvs", "--widths", "96", "--cameras", "4",
                 "--repeats", "2", "--warmup", "0", "--device", "cpu",
                 "--json", str(report)]) == 0
    data = json.loads(report.read_text())
    assert {"python", "torch", "date", "device"} <= set(data["environment"])
    (row,) = data["rows"]
    assert row["backend"] == "mvs" and row["cameras"] == 4 and row["width"] == 96
    assert row["median_ms"]["total"] >= max(v for k, v in row["median_ms"].items()
                                            if k != "total") > 0
    assert row["points"] > 0 and row["allocated_growth_mib"] == 0.0
    assert isinstance(row["last_set_info"], dict)
