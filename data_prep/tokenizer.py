"""HF `tokenizers` WordPiece: load one for a vocab.txt, or train a vocab.txt on the corpus.

Both use BERT's normalizer and pre-tokenizer, so a trained vocabulary and a
bert-base-(un)cased one split text the same way. Special tokens are added by the
instance builder, not here.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from data_prep.errors import DataPrepError
from data_prep.fsutil import atomic_path
from data_prep.vocab import SPECIAL_TOKENS, UNK

_ENCODE_BATCH = 4096  # sentences per call: bounds the memory of Encoding objects


def _bert_pipeline(tokenizer: Tokenizer, lowercase: bool) -> Tokenizer:
    # strip_accents=None follows `lowercase`, as in bert-base-uncased / -cased.
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tokenizer


def load_tokenizer(vocab_path: Path, lowercase: bool) -> Tokenizer:
    return _bert_pipeline(Tokenizer(models.WordPiece.from_file(str(vocab_path), unk_token=UNK)), lowercase)


def encode(tokenizer: Tokenizer, sentences: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of all sentences concatenated, and each sentence's token count."""
    ids: list[list[int]] = []
    for start in range(0, len(sentences), _ENCODE_BATCH):
        batch = tokenizer.encode_batch_fast(sentences[start:start + _ENCODE_BATCH], add_special_tokens=False)
        ids.extend(encoding.ids for encoding in batch)
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum()))
    return flat, lengths


def train_vocab(files: list[Path], vocab_size: int, lowercase: bool, out_path: Path, show_progress: bool = True) -> None:
    """Train a WordPiece vocabulary of at most `vocab_size` entries on text files.

    [PAD] [UNK] [CLS] [SEP] [MASK] take ids 0-4. The trainer counts words in memory:
    its memory grows with the number of distinct words, not with the corpus size.
    """
    if vocab_size <= len(SPECIAL_TOKENS):
        raise DataPrepError(f"vocab size {vocab_size} leaves no room beside the {len(SPECIAL_TOKENS)} special tokens")
    tokenizer = _bert_pipeline(Tokenizer(models.WordPiece(unk_token=UNK)), lowercase)
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                        show_progress=show_progress)
    tokenizer.train([str(f) for f in files], trainer)
    by_id = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    with atomic_path(out_path) as tmp:
        tmp.write_text("".join(token + "\n" for token, _ in by_id), encoding="utf-8")
