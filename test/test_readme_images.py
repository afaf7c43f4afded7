"""``scripts/make_readme_images.py`` keeps working: the rig pictures of the README render from
a rig calibration file (the slow part, ``threer-ros reconstruct``, is tested on its own)."""

from __future__ import annotations

import importlib.util

import numpy as np

from markdown_blocks import REPO
from threer_ros.data.calibration import save_rig_calibration
from threer_ros.data.synthetic import SyntheticRig


def _script():
    spec = importlib.util.spec_from_file_location("make_readme_images",
                                                  REPO / "scripts" / "make_readme_images.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_rig_renders_with_numbered_camera_frames(tmp_path):
    script = _script()
    rig = SyntheticRig.render(seed=0, width=32, count=4)
    calibration = tmp_path / "rig.yaml"
    save_rig_calibration(calibration, "rig", {v.name: v.calibration for v in rig.views})
    points = rig.surface_points(2000)
    colours = np.full((len(points), 3), 200, np.uint8)
    names = [v.name for v in rig.views]
    plain = np.asarray(script.render_rig(calibration, points, colours,
                                         *script.viewer(*script.RVIZ_VIEWER)))
    labelled = np.asarray(script.render_rig(calibration, points, colours,
                                            *script.viewer(*script.LAYOUT_VIEWER), names))
    assert plain.shape == labelled.shape == (*script.VIEW_SIZE, 3)
    for image in (plain, labelled):
        for colour in script.AXIS_COLOURS:                    # every TF axis colour is drawn
            assert (image == colour).all(axis=2).any()
        assert (image == 200).all(axis=2).any()               # and the cloud
    text = np.abs(labelled.astype(int) - (255, 255, 160)).max(axis=2) < 40
    assert text.any() and not (np.abs(plain.astype(int) - (255, 255, 160)).max(axis=2) < 40).any()
