"""The README's Python example runs as written, so it cannot rot: the tiny parity checkpoints
stand in the weights cache for the released ones, three small landscape JPEGs in
``my_images/``, and the network size 64 for 512 (the only change to the code)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from markdown_blocks import REPO, code_blocks
from threer_ros.models.spec import parse_constructor
from threer_ros.weights import ENTRIES


def _mast3r_hub_folder(pth: Path, folder: Path) -> None:
    """The tiny MASt3R checkpoint in the layout of its hub release (config.json of the
    constructor's arguments + model.safetensors), where the weights cache expects it."""
    from safetensors.torch import save_file

    ckpt = torch.load(pth, weights_only=False)
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(parse_constructor(ckpt["args"].model).kwargs))
    save_file({k: v.clone().contiguous() for k, v in ckpt["model"].items()},
              str(folder / "model.safetensors"))


def test_the_readme_python_example_runs(parity_dir, tmp_path, monkeypatch):
    (example,) = [b for b in code_blocks((REPO / "README.md",)) if b.lang == "python"]
    cache = tmp_path / "weights"
    cache.mkdir()
    for name, fixture in (("fast3r", "fast3r/checkpoint"), ("pow3r", "pow3r/checkpoint.pth")):
        (cache / ENTRIES[name].local_name).symlink_to(parity_dir / fixture)
    _mast3r_hub_folder(parity_dir / "mast3r" / "checkpoint.pth",
                       cache / ENTRIES["mast3r"].local_name)
    monkeypatch.setenv("THREER_ROS_WEIGHTS", str(cache))
    (tmp_path / "my_images").mkdir()
    for png in sorted((parity_dir / "images").glob("*.png"))[:3]:
        Image.open(png).convert("RGB").save(tmp_path / "my_images" / f"{png.stem}.jpg")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    # the tiny networks at 64 x 48 instead of 512 x 384 (CPU seconds, not minutes)
    assert example.text.count("size=512") == 2
    code = example.text.replace("size=512", "size=64")
    exec(compile(code, example.where, "exec"), namespace)   # noqa: S102 - our own README
    assert namespace["cloud"].shape == (3 * 48 * 64, 3)
    assert torch.isfinite(namespace["cloud"]).all()
    res1, res2 = namespace["res1"], namespace["res2"]
    assert res2["pts3d_in_other_view"].shape == (2, 48, 64, 3)
    assert np.isfinite(res1["pts3d"].float().numpy()).all()
