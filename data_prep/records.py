"""Compact fixed-width instance records: the intermediate between instances and shards.

A record holds what a shard row needs in the smallest exact types (token ids as uint16
when the vocabulary allows); input_mask and segment_ids are implied by the two lengths
and rebuilt at write time. One unit's records live in one .npy file sorted by (split,
bucket), so the shard stage can memory-map any bucket's slice of any unit.
"""

from __future__ import annotations

import numpy as np

from bing_bert_pld.schema import FIELD_BY_NAME

SPLITS = ("train", "validation")


def record_dtype(seq_len: int, max_pred: int, vocab_size: int) -> np.dtype:
    ids = np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
    return np.dtype([
        ("input_ids", ids, (seq_len,)),
        ("length", np.uint16),  # real tokens, [CLS] A [SEP] B [SEP]
        ("a_length", np.uint16),  # tokens in segment A
        ("masked_lm_positions", np.uint16, (max_pred,)),
        ("masked_lm_ids", ids, (max_pred,)),
        ("next_sentence_label", np.uint8),
        ("source", np.uint8),  # index into the sorted source names, for per-source counts
    ])


def to_columns(records: np.ndarray) -> dict[str, np.ndarray]:
    """Expand records into the shard schema's arrays, in the schema's dtypes."""
    seq_len = records.dtype["input_ids"].shape[0]
    pos = np.arange(seq_len)
    length = records["length"].astype(np.int64)[:, None]
    second = records["a_length"].astype(np.int64)[:, None] + 2
    columns = {
        "input_ids": records["input_ids"],
        "input_mask": pos < length,
        "segment_ids": (pos >= second) & (pos < length),
        "masked_lm_positions": records["masked_lm_positions"],
        "masked_lm_ids": records["masked_lm_ids"],
        "next_sentence_labels": records["next_sentence_label"],
    }
    return {name: np.ascontiguousarray(array, dtype=FIELD_BY_NAME[name].dtype) for name, array in columns.items()}
