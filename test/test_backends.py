"""Backend selection: the node's ``backend`` and ``device`` parameters."""

from __future__ import annotations

import pytest
import torch

from threer_ros.pipeline.backends import BackendOptions, make_reconstructor, resolve_device
from threer_ros.pipeline.mvs import PlaneSweepReconstructor


def test_mvs_is_built_with_the_options():
    backend = make_reconstructor("mvs", BackendOptions(device="cpu", voxel_size=0.004))
    assert isinstance(backend, PlaneSweepReconstructor) and backend.name == "mvs"
    assert backend.settings.voxel_size == 0.004 and backend.settings.device == "cpu"


def test_an_unknown_backend_names_the_available_ones():
    with pytest.raises(ValueError, match="unknown backend 'nerf'; available: mvs"):
        make_reconstructor("nerf", BackendOptions(device="cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on CPU-only machines")
def test_devices_resolve_and_a_missing_gpu_is_explained():
    assert resolve_device("auto") == "cpu"
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="no CUDA GPU.*device:=cpu"):
        resolve_device("cuda:1")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def test_mvs_depth_range_comes_from_the_parameters():
    backend = make_reconstructor("mvs", BackendOptions(device="cpu",
                                                       mvs_depth_range=[0.5, 2.0]))
    assert backend.settings.depth_range == (0.5, 2.0)
    with pytest.raises(ValueError, match="depth_range"):
        make_reconstructor("mvs", BackendOptions(device="cpu", mvs_depth_range=[2.0, 0.5]))
