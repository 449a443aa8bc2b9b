"""Encode the corpus to WordPiece ids with a word cache, and train a vocab.txt on it.

The tokenizer itself is bing_bert_pld.tokenizer's (build_word_tokenizer), the one GLUE
and the transformers export use too; the trainer gives it BERT's normalizer and
pre-tokenizer, so a trained vocabulary and a bert-base-(un)cased one split text the same
way. Special tokens are added by the instance builder, not here.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, models, trainers

from bing_bert_pld.tokenizer import CONTINUATION_PREFIX, SPECIAL_TOKENS, UNK, set_bert_text_rules
from data_prep.errors import DataPrepError
from data_prep.fsutil import atomic_path

_ENCODE_BATCH = 8192  # words per tokenizer call: bounds the memory of Encoding objects
_SENTENCES_PER_SLICE = 20_000  # about 3 MB of text


class WordEncoder:
    """Encodes sentences to token ids, tokenizing each distinct word only once.

    HF tokenizers spends ~10 us per input, and text repeats its words: so words are
    looked up in a cache (word -> its pieces) kept across calls, and only new words go
    to the tokenizer. This gives the same ids as encoding whole sentences because the
    BERT normalizer and pre-tokenizer act within words, and the cleaning stage left a
    single space as the only whitespace (a test compares the two on real text).
    The cache is emptied when it passes `max_words`, which bounds its memory.
    """

    def __init__(self, tokenizer: Tokenizer, max_words: int = 250_000) -> None:
        self.tokenizer = tokenizer
        self.max_words = max_words
        self._reset()

    def _reset(self) -> None:
        self.index: dict[str, int] = {}
        self.piece_counts = np.zeros(0, dtype=np.int64)
        self.piece_ids = np.zeros(0, dtype=np.int32)

    def encode(self, sentences: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of all sentences concatenated, and each sentence's token count."""
        # In slices, so that the per-word Python objects of only one slice exist at a time.
        parts = [self._encode_slice(sentences[i:i + _SENTENCES_PER_SLICE])
                 for i in range(0, len(sentences), _SENTENCES_PER_SLICE)]
        if not parts:
            return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _encode_slice(self, sentences: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if len(self.index) > self.max_words:
            self._reset()
        words = " ".join(sentences).split(" ")
        self._add([w for w in dict.fromkeys(words) if w not in self.index])
        word_ids = np.fromiter(map(self.index.__getitem__, words), dtype=np.int64, count=len(words))

        # Gather each word occurrence's pieces: a ragged take, done with repeat + arange.
        piece_starts = np.cumsum(self.piece_counts) - self.piece_counts
        counts = self.piece_counts[word_ids]
        token_ends = np.cumsum(counts)
        first = np.repeat(piece_starts[word_ids] - (token_ends - counts), counts)
        flat = self.piece_ids[first + np.arange(int(token_ends[-1]))]
        words_per_sentence = np.fromiter((s.count(" ") + 1 for s in sentences), dtype=np.int64, count=len(sentences))
        sentence_ends = token_ends[np.cumsum(words_per_sentence) - 1]
        return flat, np.diff(sentence_ends, prepend=0)

    def _add(self, new_words: list[str]) -> None:
        pieces: list[list[int]] = []
        for start in range(0, len(new_words), _ENCODE_BATCH):
            batch = self.tokenizer.encode_batch_fast(new_words[start:start + _ENCODE_BATCH], add_special_tokens=False)
            pieces.extend(encoding.ids for encoding in batch)
        for word in new_words:
            self.index[word] = len(self.index)
        counts = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
        ids = np.fromiter(itertools.chain.from_iterable(pieces), dtype=np.int32, count=int(counts.sum()))
        self.piece_counts = np.concatenate([self.piece_counts, counts])
        self.piece_ids = np.concatenate([self.piece_ids, ids])


def train_vocab(files: list[Path], vocab_size: int, lowercase: bool, out_path: Path, show_progress: bool = True) -> None:
    """Train a WordPiece vocabulary of `vocab_size` entries on text files.

    [PAD] [UNK] [CLS] [SEP] [MASK] take ids 0-4. The trainer counts words in memory:
    its memory grows with the number of distinct words, not with the corpus size.

    HF's trainer numbers the word-continuation characters ("##e") in hash-map order,
    which differs from run to run, and breaks ties between equally frequent merges by
    those numbers: the same corpus could give different vocabularies. So a first,
    cheap pass (no merges) finds those characters, and the real pass receives them
    pre-numbered in code-point order; the result is then the same on every run.
    """
    if vocab_size <= len(SPECIAL_TOKENS):
        raise DataPrepError(f"vocab size {vocab_size} leaves no room beside the {len(SPECIAL_TOKENS)} special tokens")
    probe = _train(files, len(SPECIAL_TOKENS) + 1, list(SPECIAL_TOKENS), lowercase, show_progress)
    continuations = sorted(t for t in probe.get_vocab() if t.startswith(CONTINUATION_PREFIX))
    tokenizer = _train(files, vocab_size, list(SPECIAL_TOKENS) + continuations, lowercase, show_progress)
    by_id = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    with atomic_path(out_path) as tmp:
        tmp.write_text("".join(token + "\n" for token, _ in by_id), encoding="utf-8")


def _train(files: list[Path], vocab_size: int, fixed_tokens: list[str], lowercase: bool,
           show_progress: bool) -> Tokenizer:
    tokenizer = set_bert_text_rules(Tokenizer(models.WordPiece(unk_token=UNK)), lowercase)
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=fixed_tokens,
                                        continuing_subword_prefix=CONTINUATION_PREFIX, show_progress=show_progress)
    tokenizer.train([str(f) for f in files], trainer)
    return tokenizer
