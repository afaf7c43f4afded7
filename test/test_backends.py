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


def test_shared_focal_reaches_both_full_alignments_from_the_parameters():
    """``shared_focal`` (on in config/capture.yaml and in the options; off upstream) set on
    the node reaches MASt3R's sparse and Pow3R's dense alignment."""
    from threer_ros.pipeline.pairwise import PairSettings
    from threer_ros.config import read_parameters

    assert read_parameters()["shared_focal"] is True and BackendOptions().shared_focal
    for shared in (False, True):
        pairs = PairSettings.from_options(BackendOptions(device="cpu", shared_focal=shared))
        assert pairs.sparse.shared_focal is shared and pairs.alignment.shared_focal is shared


def test_confidence_follows_each_backends_official_rule_unless_a_threshold_is_given():
    options = BackendOptions(device="cpu")
    assert options.fusion_settings("pow3r").confidence_threshold == 3.0
    assert options.fusion_settings("mast3r").confidence_threshold == 1.5
    fast3r = options.fusion_settings("fast3r")
    assert (fast3r.view_quantile, fast3r.min_view_confidence) == (0.1, 1.5)
    given = BackendOptions(device="cpu", confidence_threshold=2.0).fusion_settings("fast3r")
    assert (given.confidence_threshold, given.view_quantile, given.min_view_confidence) == \
        (2.0, 0.0, 0.0)


def test_fast3r_rule_drops_each_views_least_confident_tenth_and_hopeless_views():
    from threer_ros.geometry.fusion import view_confidence_mask

    confidence = torch.stack([torch.arange(1.0, 101.0).reshape(10, 10),
                              torch.full((10, 10), 1.2)])
    keep = view_confidence_mask(confidence,
                                BackendOptions(device="cpu").fusion_settings("fast3r"))
    assert int(keep[0].sum()) == 90 and bool(keep[0, -1, -1]) and not bool(keep[0, 0, 0])
    assert not keep[1].any()            # best confidence 1.2 < 1.5: the view goes


def test_auto_precision_keeps_the_heads_in_float32_under_a_bfloat16_trunk(parity_dir):
    from threer_ros.models import load_model
    from threer_ros.pipeline.network import network_precision, set_precision

    assert network_precision("auto", "cuda") == (torch.bfloat16, True)
    assert network_precision("auto", "cpu") == (torch.float32, False)
    model = set_precision(load_model(parity_dir / "mast3r" / "checkpoint.pth"), "bf16-trunk",
                          "cpu")
    dtypes = {name.split(".")[0]: p.dtype for name, p in model.named_parameters()}
    assert dtypes["downstream_head1"] == dtypes["downstream_head2"] == torch.float32
    assert dtypes["patch_embed"] == torch.bfloat16


@pytest.mark.parametrize("network", ["fast3r", "pow3r"])
def test_attention_in_bfloat16_keeps_a_float32_network_within_the_bfloat16_tolerance(
        parity_dir, network):
    """``tf32`` on CUDA runs the attention kernels in bfloat16 (Fast3R's blocks and Pow3R's
    CLS-aware attention); float32 tokens in, float32 out, the official outputs within the
    bf16 tolerance of docs/benchmarks.md (2.5 % of their range), and never on the CPU."""
    import json

    import numpy as np

    from threer_ros.bench import run_parity_case
    from threer_ros.models import load_model
    from threer_ros.models.blocks import set_attention_dtype
    from threer_ros.pipeline.network import attention_dtype, set_precision

    assert attention_dtype("tf32", "cuda:1") == torch.bfloat16
    assert attention_dtype("tf32", "cpu") is None and attention_dtype("fp32", "cuda") is None
    checkpoint = parity_dir / network / ("checkpoint" if network == "fast3r" else "checkpoint.pth")
    case = json.loads((parity_dir / "index.json").read_text())["models"][network]["cases"][0]
    data = np.load(parity_dir / network / f"{case}.npz")
    model = set_precision(load_model(checkpoint), "tf32", "cpu").eval()
    exact = run_parity_case(network, model, data)
    set_attention_dtype(model, torch.bfloat16)
    rounded = run_parity_case(network, model, data)
    moved = 0.0
    for key, value in rounded.items():
        if not torch.is_tensor(value) or not value.is_floating_point() or key not in data.files:
            continue
        official = torch.from_numpy(data[key])
        assert value.dtype == torch.float32
        span = float(official.abs().max())
        assert float((value - official).abs().max()) <= 0.025 * span, key
        moved = max(moved, float((value - exact[key]).abs().max()) / span)
    assert moved > 0.0          # the kernels did run in bfloat16


def test_tf32_precision_is_float32_weights_with_tf32_products_only_inside_the_forward():
    from threer_ros.pipeline.network import float32_matmul, network_precision

    assert network_precision("tf32", "cuda") == (torch.float32, False)
    before = torch.get_float32_matmul_precision()
    with float32_matmul("tf32"):
        assert torch.get_float32_matmul_precision() == "high"      # TF32 allowed
    assert torch.get_float32_matmul_precision() == before
    with pytest.raises(RuntimeError), float32_matmul("tf32"):
        raise RuntimeError("a failing forward")
    assert torch.get_float32_matmul_precision() == before          # restored anyway
    with float32_matmul("fp32"):
        assert torch.get_float32_matmul_precision() == before      # other modes: untouched
