"""The pretraining shard schema: one owner for key names, dtypes and shapes.

The files follow NVIDIA DeepLearningExamples' BERT layout (also used by
academic-budget-bert): one row per training instance, stored in HDF5 datasets named
after the fields below. Both data_prep (the writer and `verify`) and the training
loader read these constants, so the two can never disagree. numpy only: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MANIFEST_NAME = "manifest.json"
# data_prep's marker while shards are being written: the request, before manifest.json exists.
IN_PROGRESS_NAME = ".in_progress.json"
SHARD_SUFFIX = ".hdf5"


@dataclass(frozen=True)
class FieldSpec:
    name: str
    dtype: np.dtype
    per_row: str  # "seq" -> [N, seq_len], "pred" -> [N, max_pred], "scalar" -> [N]


FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("input_ids", np.dtype(np.int32), "seq"),
    FieldSpec("input_mask", np.dtype(np.int8), "seq"),
    FieldSpec("segment_ids", np.dtype(np.int8), "seq"),
    FieldSpec("masked_lm_positions", np.dtype(np.int32), "pred"),
    FieldSpec("masked_lm_ids", np.dtype(np.int32), "pred"),
    FieldSpec("next_sentence_labels", np.dtype(np.int8), "scalar"),
)
FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in FIELDS)
FIELD_BY_NAME: dict[str, FieldSpec] = {f.name: f for f in FIELDS}

# The two standard phases: (max_seq_length, max_predictions_per_seq).
PHASE1 = (128, 20)
PHASE2 = (512, 80)


def expected_shape(field: FieldSpec, rows: int, seq_len: int, max_pred: int) -> tuple[int, ...]:
    if field.per_row == "seq":
        return (rows, seq_len)
    if field.per_row == "pred":
        return (rows, max_pred)
    return (rows,)
