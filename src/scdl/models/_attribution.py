"""Gene attributions shared by the models: integrated gradients through captum."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def integrated_gradients(
    forward: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    *,
    target: int | None = None,
    baseline: torch.Tensor | None = None,
    n_steps: int = 32,
    batch_size: int = 256,
) -> np.ndarray:
    """Integrated gradients of ``forward(inputs)[:, target]`` with respect to ``inputs``.

    ``forward`` maps a float tensor (cells x features) to outputs (cells x targets); the
    baseline defaults to zeros (no expression). Returns a cells x features array whose rows sum
    to ``output(x) - output(baseline)`` (the completeness property). Computed in chunks of
    ``batch_size`` cells so memory stays bounded.
    """
    from captum.attr import IntegratedGradients

    ig = IntegratedGradients(forward)
    out = []
    for start in range(0, inputs.shape[0], batch_size):
        x = inputs[start : start + batch_size]
        base = torch.zeros_like(x) if baseline is None else baseline.expand_as(x)
        attr = ig.attribute(x, baselines=base, target=target, n_steps=n_steps)
        out.append(attr.detach().cpu().numpy())
    return np.concatenate(out, axis=0)
