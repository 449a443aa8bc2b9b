"""LayerNorm factory: NVIDIA apex's fused kernel where it exists, torch's otherwise.

apex is an optional accelerator, never a requirement (and the PyPI package named
`apex` is an unrelated web library: it has no `apex.normalization`, so it is ignored).
Both classes hold `weight` and `bias`, so checkpoints move freely between them.
"""

from __future__ import annotations

import torch
from torch import nn


def _apex_fused_layer_norm():
    if not torch.cuda.is_available():
        return None
    try:
        from apex.normalization import FusedLayerNorm
    except ImportError:
        return None
    return FusedLayerNorm


_FUSED = _apex_fused_layer_norm()


def make_layer_norm(hidden_size: int, eps: float) -> nn.Module:
    if _FUSED is not None:
        return _FUSED(hidden_size, eps=eps)
    return nn.LayerNorm(hidden_size, eps=eps)
