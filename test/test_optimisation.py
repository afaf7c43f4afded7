"""The alignment's optimiser: Adam with cosine decay, CUDA-graphed on a GPU."""

from __future__ import annotations

import pytest
import torch

from threer_ros.geometry.optimisation import GRAPH_WARMUP_STEPS, minimise


def _fit(device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Fit ``a`` (full rate) and ``b`` (a tenth of it) to one target; the third group holds
    only a frozen parameter (as the focal length is when calibrated)."""
    torch.manual_seed(0)
    target = torch.randn(5, device=device)
    a = torch.nn.Parameter(torch.zeros(5, device=device))
    b = torch.nn.Parameter(torch.zeros(5, device=device))
    frozen = torch.nn.Parameter(torch.ones(5, device=device), requires_grad=False)
    final = minimise([([a], 1.0), ([b], 0.1), ([frozen], 1.0)],
                     lambda: ((a - target) ** 2).sum() + ((b - frozen * target) ** 2).sum(),
                     iterations=200, lr=0.05)
    assert torch.equal(frozen, torch.ones_like(frozen))
    return a.detach().cpu(), b.detach().cpu(), target.cpu(), final


def test_minimise_follows_its_groups_rates_and_skips_frozen_parameters():
    a, b, target, final = _fit("cpu")
    assert torch.allclose(a, target, atol=1e-3)          # full rate: converged
    assert (b - target).abs().max() > 0.1               # a tenth of the rate: still on its way
    assert final == pytest.approx(float(((b - target) ** 2).sum()), rel=0.05)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphed_steps_on_the_gpu_give_the_cpu_result():
    assert 200 > GRAPH_WARMUP_STEPS + 1                 # the GPU run replays a CUDA graph
    cpu, gpu = _fit("cpu"), _fit("cuda")
    for x, y in zip(cpu[:2], gpu[:2]):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)
    assert gpu[3] == pytest.approx(cpu[3], rel=1e-3)
