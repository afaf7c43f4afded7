"""The capture node on a GPU that holds only a few pairs a batch, for the out-of-memory tests.

Run as ``python small_gpu_node.py --ros-args ...`` in place of ``threer_ros.ros.node``: every
network the node loads is the real one, but its first head raises CUDA's out-of-memory error
when it is given more than ``$THREER_TEST_PAIRS_THAT_FIT`` pairs (default 2) at once, as the
decoding of a large ``pair_batch`` does on a small GPU. Nothing else of the node changes.
"""

from __future__ import annotations

import os
import sys

import torch

import threer_ros.models
from threer_ros.ros import node

PAIRS_THAT_FIT = int(os.environ.get("THREER_TEST_PAIRS_THAT_FIT", "2"))
_load_model = threer_ros.models.load_model


def _refuse_large_batches(module: torch.nn.Module, args: tuple) -> None:
    batch = args[0][0].shape[0]
    if batch > PAIRS_THAT_FIT:
        raise torch.cuda.OutOfMemoryError(f"{batch} pairs do not fit (test GPU: "
                                          f"{PAIRS_THAT_FIT})")


def load_on_a_small_gpu(*args, **kwargs) -> torch.nn.Module:
    """:func:`threer_ros.models.load_model`, with the small GPU's limit on the first head."""
    network = _load_model(*args, **kwargs)
    network.downstream_head1.register_forward_pre_hook(_refuse_large_batches)
    return network


threer_ros.models.load_model = load_on_a_small_gpu
sys.exit(node.main())
