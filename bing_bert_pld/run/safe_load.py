"""Loading .pt files without running pickled code, DeepSpeed's few record types allowed by name.

DeepSpeed's ZeRO optimizer files pickle three small DeepSpeed classes
(`_deepspeed_safe_globals`), allowed for those loads only; rank files from before the
manifest format hold NumPy's RNG state, for which the NumPy array types are allowed for
those files only. Anything else is refused unread, with the file named.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .layout import CheckpointError, UnsafeCheckpointError

def _deepspeed_safe_globals() -> list:
    """The non-tensor objects DeepSpeed 0.19.8 pickles into its ZeRO optimizer files
    (found with torch.serialization.get_unsafe_globals_in_checkpoint on real ZeRO-1/2
    checkpoints): plain records, an enum and the loss scalers (numbers and a dtype)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [fragment_address, ZeroStageEnum, LossScaler, DynamicLossScaler]


def _legacy_numpy_globals() -> list:
    """What np.random.get_state() pickles: one uint32 array (rank files of format 1)."""
    multiarray = getattr(np, "_core", None) or np.core
    return [multiarray.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def safe_load(path: Path, map_location: Any = "cpu", *, mmap: bool = False,
              legacy_rank_state: bool = False) -> Any:
    """torch.load(weights_only=True), allowing only DeepSpeed's record types (and NumPy's
    array for format-1 rank files). A file that needs anything else is refused unread."""
    allowed = _legacy_numpy_globals() if legacy_rank_state else []
    # DeepSpeed's types only where DeepSpeed is loaded already (training, ZeRO export): a
    # plain export does not pay for importing it.
    with_deepspeed = "deepspeed" in sys.modules
    try:
        with torch.serialization.safe_globals(allowed + (_deepspeed_safe_globals() if with_deepspeed else [])):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:
        if _is_weights_only_refusal(err):
            if not with_deepspeed and "GLOBAL deepspeed." in str(err):
                import deepspeed  # noqa: F401  (then retried with its types allowed)

                return safe_load(path, map_location, mmap=mmap, legacy_rank_state=legacy_rank_state)
            raise UnsafeCheckpointError(
                f"{path}: refused to load: it holds pickled objects other than tensors and plain "
                f"data ({_refusal_reason(err)}); nothing in it was run") from None
        raise CheckpointError(f"{path}: unreadable: {type(err).__name__}: "
                              f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}") from None


def _is_weights_only_refusal(err: Exception) -> bool:
    return "weights_only" in str(err) or "Weights only load failed" in str(err)


def _refusal_reason(err: Exception) -> str:
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
    if found:
        return f"unsupported global {found.group(1)}"
    for line in str(err).splitlines():
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:", 1)[1].strip()
    return str(err).strip().splitlines()[0]
