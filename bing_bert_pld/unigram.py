"""The unigram plateau: the MLM loss of predicting every masked token from the corpus's token frequencies.

A model that ignores the context and predicts each masked token from the corpus's
unigram distribution reaches this loss, and BERT pretraining sits on it for a while
before it learns anything from the context. A validation MLM loss that is not below it
means the run learned frequencies, not language; a time-to-quality target above it
compares nothing but how fast two runs learned frequencies.

- On the training shards' masked tokens (`masked_lm_ids` where `masked_lm_positions`
  != 0, the slots the model scores) the plateau is the entropy of their distribution.
- On validation it is the cross-entropy of the training distribution, add-one smoothed
  over the vocabulary so that a token never masked in training costs log(N + V) rather
  than infinity. That is the line a validation curve is compared with.

Reading the masked ids is about an eighth of a shard's bytes; `max_shards` bounds the
work on a full corpus (the frequencies of a few shards of a shuffled corpus are the
corpus's to a few thousandths of a nat).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

DEFAULT_MAX_SHARDS = 16


def masked_token_counts(shard_paths: Iterable[Path], vocab_size: int) -> np.ndarray:
    """Counts of each token id among the scored masked slots of these HDF5 shards."""
    import h5py

    counts = np.zeros(vocab_size, dtype=np.int64)
    for path in shard_paths:
        with h5py.File(path, "r") as shard:
            ids = shard["masked_lm_ids"][...]
            scored = shard["masked_lm_positions"][...] != 0  # 0 = padding slot, not scored
        found = np.bincount(ids[scored].astype(np.int64), minlength=vocab_size)
        if len(found) > vocab_size:
            raise ValueError(f"{path}: masked_lm_ids up to {len(found) - 1}, beyond the "
                             f"vocabulary of {vocab_size}")
        counts += found
    return counts


def entropy(counts: np.ndarray) -> float:
    """Entropy in nats of the distribution counts / counts.sum()."""
    counts = np.asarray(counts, dtype=np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def cross_entropy(train_counts: np.ndarray, eval_counts: np.ndarray) -> float:
    """Mean -log q(token) over the eval tokens, q = add-one smoothed train frequencies."""
    train_counts = np.asarray(train_counts, dtype=np.float64)
    eval_counts = np.asarray(eval_counts, dtype=np.float64)
    log_q = np.log(train_counts + 1.0) - math.log(train_counts.sum() + len(train_counts))
    return float(-(eval_counts * log_q).sum() / eval_counts.sum())


@dataclass(frozen=True)
class Plateau:
    train_entropy: float  # the plateau on the training tokens
    validation: float  # the line the validation curve is compared with
    train_tokens: int
    validation_tokens: int


def unigram_plateau(train_shards: Sequence[Path], val_shards: Sequence[Path],
                    vocab_size: int) -> Plateau:
    train = masked_token_counts(train_shards, vocab_size)
    val = masked_token_counts(val_shards, vocab_size)
    return Plateau(entropy(train), cross_entropy(train, val), int(train.sum()), int(val.sum()))


def plateau_of_data(train_dir: str | Path, val_dir: Optional[str | Path], vocab_size: int,
                    max_shards: int = DEFAULT_MAX_SHARDS) -> tuple[float, str]:
    """(the validation plateau, or the training entropy without validation shards; a
    phrase saying where it comes from). Shards are found as the trainer finds them."""
    from .shard_validation import find_shard_set

    train = list(find_shard_set(train_dir).files)
    used = train[:max_shards]
    val = list(find_shard_set(val_dir).files)[:max_shards] if val_dir else []
    train_counts = masked_token_counts(used, vocab_size)
    of = f"{len(used)} of {len(train)} training shards in {train_dir}"
    if val:
        value = cross_entropy(train_counts, masked_token_counts(val, vocab_size))
        return value, f"{of}, against {len(val)} validation shards in {val_dir}"
    return entropy(train_counts), f"{of} (their entropy: no validation shards)"
