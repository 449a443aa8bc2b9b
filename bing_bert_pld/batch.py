"""The named micro-batch shared by the loader, the model and the trainer.

Fields are named exactly as the HDF5 keys of bing_bert_pld.schema (never batch[3]).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np
import torch

from .schema import FIELD_NAMES


@dataclass
class PretrainingBatch:
    input_ids: torch.Tensor  # (B, T)
    input_mask: torch.Tensor  # (B, T) 1 = token, 0 = padding
    segment_ids: torch.Tensor  # (B, T)
    masked_lm_positions: torch.Tensor  # (B, P) sorted, 0-padded
    masked_lm_ids: torch.Tensor  # (B, P) 0-padded
    next_sentence_labels: torch.Tensor  # (B,)

    def __post_init__(self) -> None:
        # Whether any row is padded, read here while the mask is still on the CPU (the
        # loader's reader builds batches there): the model attends without a mask when no
        # row is padded, and nothing waits for the GPU to find out. None for a batch built
        # on a device: the model then keeps the mask, which is always exact. A plain
        # attribute, not a field: the fields are the schema's keys.
        self.has_padding: Optional[bool] = (
            not bool(self.input_mask.all()) if self.input_mask.device.type == "cpu" else None)

    @classmethod
    def from_numpy(cls, arrays: Mapping[str, np.ndarray]) -> "PretrainingBatch":
        # The files store int8/int32 to save space; embeddings and losses want int64.
        return cls(**{name: torch.from_numpy(arrays[name].astype(np.int64)) for name in FIELD_NAMES})

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "PretrainingBatch":
        moved = dataclasses.replace(self, **{
            name: getattr(self, name).to(device, non_blocking=non_blocking) for name in FIELD_NAMES})
        moved.has_padding = self.has_padding  # known from the CPU copy
        return moved
