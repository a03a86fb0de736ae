"""Activation (gradient) checkpointing of one segment of a model: a ViT block, a text layer, a co-attention layer.

A checkpointed segment keeps only its inputs for backward and recomputes its activations when backward reaches it,
trading one more forward pass of the segment for the memory of its activations.
"""
from typing import Callable, TypeVar

import torch
from torch.utils.checkpoint import checkpoint

Output = TypeVar("Output")


def run_segment(function: Callable[..., Output], *args, checkpointed: bool) -> Output:
    """``function(*args)``, checkpointed when ``checkpointed`` and autograd is recording (without a graph there is
    nothing to save, so nothing to gain).

    The non-reentrant variant is used: its parameters get gradients even when no input requires grad (a frozen
    embedding layer before the first text layer), it accepts non-tensor arguments and outputs, and it stashes the
    RNG state, so dropout replays the same masks in the recomputation and the numerics equal the unchecked run's.
    """
    if checkpointed and torch.is_grad_enabled():
        return checkpoint(function, *args, use_reentrant=False)
    return function(*args)
