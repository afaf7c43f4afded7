"""``threer-ros bench``: the benchmark command runs and writes the report its docs describe."""

from __future__ import annotations

import json

import pytest

from threer_ros.cli import main
from threer_ros.weights import WeightsError


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


def test_bench_runs_a_checkpoint_through_the_model_and_the_backend(tmp_path, parity_dir):
    """``--weights FILE``: the given network, not random weights of the released size (the
    tiny parity checkpoint keeps this fast on the CPU)."""
    checkpoint = parity_dir / "mast3r" / "checkpoint.pth"
    report = tmp_path / "models.json"
    assert main(["bench", "models", "--models", "mast3r", "--weights", str(checkpoint),
                 "--dtypes", "fp32", "--pairs", "2", "--size", "64x48", "--repeats", "1",
                 "--warmup", "0", "--device", "cpu", "--json", str(report)]) == 0
    (result,) = json.loads(report.read_text())["results"]
    assert result["weights"] == str(checkpoint) and result["median_ms"] > 0
    report = tmp_path / "backends.json"
    assert main(["bench", "backends", "--backends", "mast3r", "--weights", str(checkpoint),
                 "--widths", "96", "--cameras", "3", "--alignments", "fast", "--repeats", "1",
                 "--warmup", "0", "--device", "cpu", "--json", str(report)]) == 0
    (row,) = json.loads(report.read_text())["rows"]
    assert row["weights"] == str(checkpoint) and row["median_ms"]["network"] > 0
    assert main(["bench", "models", "--models", "mast3r", "pow3r", "--weights",
                 str(checkpoint)]) == 2


def test_bench_with_released_weights_that_are_missing_says_how_to_get_them(tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv("THREER_ROS_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(WeightsError, match="threer-ros weights download pow3r"):
        main(["bench", "models", "--models", "pow3r", "--weights", "released",
              "--device", "cpu"])


def test_bench_models_compares_attention_kernels_and_skips_one_that_cannot_run(
        tmp_path, parity_dir, capsys):
    """``--sdpa``: one row per attention kernel; a kernel the device lacks (cuDNN on the CPU)
    is reported and skipped, the other rows still measured."""
    report = tmp_path / "models.json"
    assert main(["bench", "models", "--models", "mast3r", "--weights",
                 str(parity_dir / "mast3r" / "checkpoint.pth"), "--dtypes", "fp32",
                 "--sdpa", "default", "math", "cudnn", "--pairs", "2", "--size", "64x48",
                 "--repeats", "1", "--warmup", "0", "--device", "cpu",
                 "--json", str(report)]) == 0
    rows = json.loads(report.read_text())["results"]
    assert [r["sdpa"] for r in rows] == ["default", "math"]
    assert all(r["median_ms"] > 0 for r in rows)
    assert "sdpa cudnn: skipped" in capsys.readouterr().err


def test_bench_parity_names_a_missing_fixtures_folder(tmp_path, capsys):
    assert main(["bench", "parity", "--fixtures", str(tmp_path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"--fixtures {tmp_path}: no parity fixtures there" in err
    assert "relative to the current directory" in err


def test_bench_mvs_quality_reports_error_inliers_completeness_and_writes_previews(tmp_path):
    report = tmp_path / "quality.json"
    assert main(["bench", "mvs-quality", "--variants", "wall", "--widths", "64",
                 "--device", "cpu", "--previews", str(tmp_path), "--json", str(report)]) == 0
    (row,) = json.loads(report.read_text())["rows"]
    assert row["variant"] == "wall" and row["width"] == 64 and row["points"] > 0
    assert 0 < row["median_m"] < 0.005 and 0.5 < row["inliers"] <= 1
    assert 0.5 < row["completeness"] <= 1 and 0 < row["wall_completeness"] <= 1
    assert (tmp_path / "mvs_wall_64.png").stat().st_size > 0
