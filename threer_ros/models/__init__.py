"""PyTorch re-implementations of Fast3R, MASt3R, Pow3R (and DUSt3R) with the official contract.

* :func:`build_model` makes a network from a :class:`ModelSpec`, a checkpoint's constructor
  string or Fast3R's ``config.json`` dict (no weights; works under ``torch.device('meta')``).
* :func:`load_model` recognises an official checkpoint, builds its network and loads the
  released weights strictly.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from threer_ros.models.checkpoint import CheckpointError, load_state, read_checkpoint
from threer_ros.models.spec import (DPTWidths, ModelSpec, SpecError, fast3r_spec,
                                    parse_constructor)

#: Checkpoint class name -> module of threer_ros.models that provides ``build(spec)``.
_BUILDERS = {
    "AsymmetricCroCo3DStereo": "dust3r",
    "AsymmetricMASt3R": "mast3r",
    "Pow3R": "pow3r",
    "Fast3R": "fast3r",
}


def build_model(spec: ModelSpec | str | Mapping[str, Any]) -> nn.Module:
    """Build the network a checkpoint declares: a :class:`ModelSpec`, a DUSt3R-family
    constructor string, or the dict of Fast3R's ``config.json`` (its constructor arguments)."""
    if isinstance(spec, str):
        spec = parse_constructor(spec)
    elif not isinstance(spec, ModelSpec):
        spec = fast3r_spec(spec)
    if spec.name not in _BUILDERS:
        raise SpecError(f"unknown model {spec.name!r}; supported: {', '.join(_BUILDERS)}")
    module = importlib.import_module(f"threer_ros.models.{_BUILDERS[spec.name]}")
    return module.build(spec)


def load_model(path: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> nn.Module:
    """Load an official checkpoint (file or Fast3R folder) into our implementation.

    Returns the module in eval mode on ``device`` with parameters cast to ``dtype``.

    Raises:
        CheckpointError: missing, truncated, tampered or mismatching checkpoint (the message
            names the file and the problem).
    """
    spec, state = read_checkpoint(path)
    with torch.device("meta"):
        model = build_model(spec)
    load_state(Path(path), model, state)
    return model.to(device=device, dtype=dtype).eval()


#: Module names of the output heads (points, confidences, MASt3R's descriptors).
_HEADS = re.compile(r"^downstream_head\w*$")


def heads_to_float32(model: nn.Module) -> int:
    """Cast the output heads of a model built here to float32, in place, as the official code
    runs them (outside autocast, in float32) while the trunk may run in bfloat16; the heads
    take the trunk's tokens cast to their dtype. Returns how many heads were cast."""
    heads = [module for name, module in model.named_children() if _HEADS.match(name)]
    for head in heads:
        head.float()
    return len(heads)


#: Module names of the units :func:`compile_blocks` compiles: transformer blocks and heads.
_COMPILED_UNITS = re.compile(r"(?:^|\.)(?:enc_blocks|dec_blocks2?)\.\d+$|^downstream_head\w*$")


def compile_blocks(model: nn.Module) -> int:
    """Compile each transformer block and output head of a model built here, in place
    (``torch.compile``: element-wise work, norms and RoPE fused into fewer kernels).

    The units are compiled on their first forward for each input shape (tens of seconds on a
    GPU, once per process), each shape specialised (``dynamic=False``: a second shape gets its
    own kernels instead of slower shape-generic ones); a pairwise network's pair batches come
    in up to two sizes. Returns how many modules were compiled.
    """
    units = [module for name, module in model.named_modules() if _COMPILED_UNITS.search(name)]
    for module in units:
        module.compile(dynamic=False)
    return len(units)


__all__ = ["CheckpointError", "DPTWidths", "ModelSpec", "SpecError", "build_model",
           "compile_blocks", "heads_to_float32", "load_model", "parse_constructor"]
