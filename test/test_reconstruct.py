"""``threer-ros reconstruct``: a folder of images in, one PLY + poses + preview per backend out.

Network weights are the tiny random-weight checkpoints of the parity fixtures, found through
the weights cache folder (``THREER_ROS_WEIGHTS``) as ``threer-ros weights download`` leaves it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from threer_ros.cli import main
from threer_ros.config import default_config_path
from threer_ros.data.calibration import save_rig_calibration
from threer_ros.data.ply import read_ply
from threer_ros.data.synthetic import SyntheticRig
from threer_ros.weights import ENTRIES

PARITY = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "parity"


@pytest.fixture
def capture(tmp_path, monkeypatch) -> tuple[Path, Path, Path]:
    """(image folder, calibration file, small-network config) of a 6-camera synthetic rig."""
    rig = SyntheticRig.render(seed=2, width=64, count=6)
    images = tmp_path / "views"
    images.mkdir()
    for view in rig.views:
        Image.fromarray(view.image).save(images / f"{view.name}.png")
    calibration = tmp_path / "rig.yaml"
    save_rig_calibration(calibration, "rig", {v.name: v.calibration for v in rig.views})
    doc = yaml.safe_load(default_config_path().read_text())
    # random-weight networks are not confident: keep every point (the official rules would
    # drop them all)
    doc["/**"]["ros__parameters"].update(network_size=64, alignment_iterations=5,
                                         confidence_threshold=0.0)
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(doc))
    cache = tmp_path / "weights"
    cache.mkdir()
    (cache / ENTRIES["fast3r"].local_name).symlink_to(PARITY / "fast3r" / "checkpoint")
    (cache / ENTRIES["pow3r"].local_name).symlink_to(PARITY / "pow3r" / "checkpoint.pth")
    monkeypatch.setenv("THREER_ROS_WEIGHTS", str(cache))
    return images, calibration, config


def test_one_ply_with_poses_and_preview_per_backend(capture, tmp_path, capsys):
    images, calibration, config = capture
    out = tmp_path / "out"
    status = main(["reconstruct", str(images), "--calibration", str(calibration),
                   "--backend", "mvs", "--backend", "fast3r", "--backend", "pow3r",
                   "--config", str(config), "--device", "cpu", "--out", str(out)])
    assert status == 0, capsys.readouterr().err
    for backend in ("mvs", "fast3r", "pow3r"):
        points, colors, confidence = read_ply(out / f"{backend}.ply")
        assert len(points) > 100 and np.isfinite(points).all()
        poses = json.loads((out / f"{backend}_poses.json").read_text())
        assert poses["frame"] == "rig" and poses["metric"] is True
        assert sorted(poses["cameras"]) == [f"cam_{i:02d}" for i in range(6)]
        assert np.asarray(poses["cameras"]["cam_00"]["cam_to_frame"]).shape == (4, 4)
        assert Image.open(out / f"{backend}_preview.png").size[0] > 64
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["primary"] == "mvs" and set(comparison["backends"]) == {
        "mvs", "fast3r", "pow3r"}


def test_missing_weights_say_how_to_get_them(capture, tmp_path, capsys, monkeypatch):
    images, _, config = capture
    monkeypatch.setenv("THREER_ROS_WEIGHTS", str(tmp_path / "empty"))
    status = main(["reconstruct", str(images), "--backend", "mast3r", "--config", str(config),
                   "--out", str(tmp_path / "out")])
    assert status == 2
    assert "threer-ros weights download mast3r" in capsys.readouterr().err


def test_the_config_checkpoint_is_used(capture, tmp_path, capsys, monkeypatch):
    """``checkpoint:`` in ``--config`` counts like ``--weights`` (settings come from the file)."""
    images, calibration, config = capture
    monkeypatch.setenv("THREER_ROS_WEIGHTS", str(tmp_path / "empty"))
    doc = yaml.safe_load(config.read_text())
    doc["/**"]["ros__parameters"]["checkpoint"] = str(PARITY / "fast3r" / "checkpoint")
    config.write_text(yaml.safe_dump(doc))
    status = main(["reconstruct", str(images), "--calibration", str(calibration),
                   "--backend", "fast3r", "--config", str(config), "--device", "cpu",
                   "--out", str(tmp_path / "out")])
    assert status == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "fast3r.ply").is_file()
    status = main(["reconstruct", str(images), "--backend", "fast3r", "--backend", "pow3r",
                   "--config", str(config), "--out", str(tmp_path / "out")])
    assert status == 2 and "the config's checkpoint" in capsys.readouterr().err


def test_bad_inputs_are_named(capture, tmp_path, capsys):
    images, _, config = capture
    (images / "broken.png").write_bytes(b"not a png")
    status = main(["reconstruct", str(images), "--backend", "mvs", "--config", str(config),
                   "--out", str(tmp_path / "out")])
    assert status == 2 and "broken.png: not a readable image" in capsys.readouterr().err
    status = main(["reconstruct", str(tmp_path / "nowhere"), "--config", str(config)])
    assert status == 2 and "nowhere: no such file or folder" in capsys.readouterr().err


def test_a_nersemble_frame_in_one_metric_reconstruction_per_backend_out(capture, tmp_path,
                                                                         capsys):
    import nersemble_fixture as fx

    _, _, config = capture
    root = tmp_path / "nersemble"
    fx.write_png_download(root, fx.render(), frames=2)
    out = tmp_path / "p031"
    status = main(["reconstruct", "--nersemble", str(root), "--participant", fx.PARTICIPANT,
                   "--sequence", fx.SEQUENCE, "--frame", "1", "--backend", "mvs",
                   "--backend", "fast3r", "--config", str(config), "--device", "cpu",
                   "--out", str(out)])
    assert status == 0, capsys.readouterr().err
    truth = json.loads((root / fx.PARTICIPANT / "camera_params.json").read_text())["world_2_cam"]
    for backend in ("mvs", "fast3r"):
        poses = json.loads((out / f"{backend}_poses.json").read_text())
        assert poses["frame"] == "rig" and poses["metric"] is True
        assert sorted(poses["cameras"]) == sorted(fx.CAMERAS)
        for serial, world_2_cam in truth.items():     # calibrated: the dataset's own poses
            np.testing.assert_allclose(poses["cameras"][f"cam_{serial}"]["cam_to_frame"],
                                       np.linalg.inv(world_2_cam), atol=1e-6)
        points, _, _ = read_ply(out / f"{backend}.ply")
        assert len(points) > 100 and np.isfinite(points).all()


def test_nersemble_options_are_checked(capture, tmp_path, capsys):
    _, _, config = capture
    assert main(["reconstruct", "--nersemble", str(tmp_path / "none"), "--participant", "031",
                 "--sequence", "EXP-2-eyes", "--config", str(config)]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["reconstruct", "--nersemble", str(tmp_path), "--config", str(config)]) == 2
    assert "needs --participant and --sequence" in capsys.readouterr().err
    assert main(["reconstruct", "--config", str(config)]) == 2
    assert "give image files or folders, or --nersemble" in capsys.readouterr().err
