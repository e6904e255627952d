"""Per-sample gradients for GPT-2's `Conv1D` layer, registered with Opacus.

GPT-2 builds its attention and MLP projections from `transformers.pytorch_utils.Conv1D`: a linear
layer whose weight is stored transposed, shape (in_features, out_features), computing
`y = x @ W + b`. Opacus has no grad sampler for it and falls back to functorch (vmap per layer),
which is correct but slower. For one example with activations `a` (T, in) and output gradients
`g` (T, out), the weight gradient is `a^T g` (in, out) and the bias gradient is `g` summed over T:
two einsums over the whole batch.

Ghost clipping only needs each example's gradient NORM. Transposing a matrix keeps its norm, so
Opacus' `nn.Linear` norm sampler (which never builds the gradient) is correct for Conv1D as is.

Registration is global state in Opacus (a class-level dict), so it is switched on and off with a
context manager: `with conv1d_sampler(enabled=True): ...` restores what was there before.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from opacus.grad_sample import GradSampleHooks
from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import (
    GradSampleHooksFastGradientClipping,
)
from opacus.grad_sample.linear import compute_linear_norm_sample
from transformers.pytorch_utils import Conv1D


def compute_conv1d_grad_sample(
    layer: Conv1D, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[torch.nn.Parameter, torch.Tensor]:
    """Per-sample gradients of a Conv1D layer: {weight: (B, in, out), bias: (B, out)}."""
    a = activations[0].to(backprops.dtype)  # (B, ..., in)
    grads = {}
    if layer.weight.requires_grad:
        # Sum over every position of one example: (B,...,in) x (B,...,out) -> (B,in,out),
        # which is already Conv1D's (in, out) weight layout.
        grads[layer.weight] = torch.einsum("n...i,n...j->nij", a, backprops)
    if layer.bias is not None and layer.bias.requires_grad:
        grads[layer.bias] = torch.einsum("n...k->nk", backprops)
    return grads


# The two class-level registries Opacus consults (hooks mode, and ghost mode's norm samplers).
_GRAD_REGISTRIES = (GradSampleHooks.GRAD_SAMPLERS, GradSampleHooksFastGradientClipping.GRAD_SAMPLERS)
_NORM_REGISTRY = GradSampleHooksFastGradientClipping.NORM_SAMPLERS


@contextmanager
def conv1d_sampler(enabled: bool = True) -> Iterator[None]:
    """Register (enabled=True) or remove (False) the Conv1D samplers inside the block, then restore.

    Opacus reads the registries when hooks are attached and again at every backward pass, so the
    whole training run (make_private ... last step) belongs inside the block.
    """
    registries = (*_GRAD_REGISTRIES, _NORM_REGISTRY)
    saved = [registry.get(Conv1D) for registry in registries]
    wanted = [compute_conv1d_grad_sample] * len(_GRAD_REGISTRIES) + [compute_linear_norm_sample]
    try:
        for registry, fn in zip(registries, wanted):
            if enabled:
                registry[Conv1D] = fn
            else:
                registry.pop(Conv1D, None)
        yield
    finally:
        for registry, old in zip(registries, saved):
            if old is None:
                registry.pop(Conv1D, None)
            else:
                registry[Conv1D] = old
