"""The optimiser of the global alignment: Adam with a cosine learning-rate decay over parameter
groups, its steps replayed from a CUDA graph on the GPU, and optionally compiled losses."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

#: Steps run normally before the rest of an optimisation on a GPU is replayed from a CUDA graph.
GRAPH_WARMUP_STEPS = 3


def minimise(groups: list[tuple[list[torch.nn.Parameter], float]],
             loss_fn: Callable[[], torch.Tensor], iterations: int, lr: float,
             lr_min: float | None = None,
             after_step: Callable[[], None] | None = None) -> float:
    """``iterations`` Adam steps on ``loss_fn()`` over parameter ``groups`` (parameters,
    learning-rate factor), the rate decaying (cosine) from ``lr * factor`` to
    ``lr_min * factor`` (default ``lr / 100``); returns the final loss. Parameters without
    ``requires_grad`` stay fixed. ``after_step``, when given, runs (without gradients) after
    every optimiser step, e.g. to project parameters back onto their manifold.

    On a GPU, after a few ordinary steps, one step (loss, backward, fused Adam) is captured
    as a CUDA graph and replayed for the remaining steps: a step's hundreds of small kernels
    then cost their GPU time only, not one Python dispatch each, and nothing waits for the
    device until the end.
    """
    param_groups = [{"params": [p for p in params if p.requires_grad], "factor": factor}
                    for params, factor in groups]
    param_groups = [g for g in param_groups if g["params"]]
    device = param_groups[0]["params"][0].device
    graphed = device.type == "cuda" and iterations > GRAPH_WARMUP_STEPS + 1
    if graphed:      # rates live on the device, so that the graph reads each step's
        for group in param_groups:
            group["lr"] = torch.tensor(lr * group["factor"], device=device)
    optimiser = torch.optim.Adam(param_groups, lr=lr, betas=(0.9, 0.9),
                                 fused=device.type == "cuda" or None, capturable=graphed)

    floor = lr / 100 if lr_min is None else lr_min

    def set_rate(step: int) -> None:
        decay = (1 + math.cos(math.pi * step / max(iterations, 1))) / 2
        for group in optimiser.param_groups:
            rate = group["factor"] * (floor + (lr - floor) * decay)
            if graphed:
                group["lr"].fill_(rate)
            else:
                group["lr"] = rate

    def step() -> torch.Tensor:
        loss = loss_fn()
        loss.backward()
        optimiser.step()
        if after_step is not None:
            with torch.no_grad():
                after_step()
        return loss

    def ordinary_steps(steps: range) -> torch.Tensor:
        loss = torch.zeros(())
        for k in steps:
            set_rate(k)
            optimiser.zero_grad()
            loss = step()
        return loss

    if not graphed:
        return float(ordinary_steps(range(iterations)).detach())
    side = torch.cuda.Stream(device)        # warm-up off the stream that will be captured
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        ordinary_steps(range(GRAPH_WARMUP_STEPS))
    torch.cuda.current_stream(device).wait_stream(side)
    optimiser.zero_grad()
    graph = torch.cuda.CUDAGraph()
    # thread-local capture: the node's other threads may use the GPU meanwhile; backward
    # writes the gradients afresh at each replay
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        loss = step()
    for k in range(GRAPH_WARMUP_STEPS, iterations):
        set_rate(k)
        graph.replay()
    return float(loss.detach())


@functools.cache
def _compiled(loss: Callable, dynamic: bool | None) -> Callable:
    return torch.compile(loss, dynamic=dynamic)


def compiled_if(compile_loss: bool, loss: Callable, dynamic: bool | None = None) -> Callable:
    """``loss``, or when ``compile_loss`` its ``torch.compile`` (forward and backward fused
    into a few kernels), made once per process; each new input shape compiles on its first
    call (``dynamic=True``: sizes that change from call to call compile once). A loss must take
    every tensor it reads as an argument, so that its compiled code is reused across calls."""
    return _compiled(loss, dynamic) if compile_loss else loss
