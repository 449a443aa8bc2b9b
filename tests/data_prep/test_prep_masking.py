"""Masking: per-row budget, 80/10/10, never a special token, whole words kept whole."""

from __future__ import annotations

import numpy as np
import pytest

from bing_bert_pld.tokenizer import CLS, MASK, SEP, build_word_tokenizer
from data_prep.masking import MaskingConfig, MaskVocab, mask_batch
from data_prep.tokenizer import WordEncoder
from data_prep.vocab import load_vocab

SEQ_LEN, MAX_PRED = 128, 20


@pytest.fixture(scope="module")
def rows(bible_dir, vocab_path):
    """20,000 rows "[CLS] A [SEP] B [SEP]" of real Bible tokens, of varied lengths."""
    vocab = load_vocab(vocab_path)
    text = " ".join(p.read_text().replace("\n", " ") for p in sorted(bible_dir.iterdir())[:10])
    flat, _ = WordEncoder(build_word_tokenizer(vocab_path, True)).encode([" ".join(text.split())])
    rng = np.random.default_rng(0)
    n = 20_000
    a_len = rng.integers(1, 60, n)
    b_len = np.minimum(rng.integers(1, 100, n), SEQ_LEN - 3 - a_len)
    b_len[: n // 2] = SEQ_LEN - 3 - a_len[: n // 2]  # half the rows full, as in real data
    length = a_len + b_len + 3
    ids = np.zeros((n, SEQ_LEN), dtype=np.int64)
    starts = rng.integers(0, flat.size - SEQ_LEN, n)
    pos = np.arange(SEQ_LEN)
    body = flat[starts[:, None] + pos]
    inside = (pos >= 1) & (pos < length[:, None] - 1) & (pos != a_len[:, None] + 1)
    ids[inside] = body[inside]
    ids[:, 0] = vocab.id_of(CLS)
    ids[np.arange(n), a_len + 1] = vocab.id_of(SEP)
    ids[np.arange(n), length - 1] = vocab.id_of(SEP)
    mask_vocab = MaskVocab(vocab.id_of(MASK), vocab.replacement_ids(), vocab.continuation_mask())
    return ids, length, a_len, mask_vocab, vocab


def _mask(rows, whole_word=False, seed=1):
    ids, length, a_len, mask_vocab, _ = rows
    config = MaskingConfig(whole_word=whole_word)
    return mask_batch(ids, length, a_len, MAX_PRED, config, mask_vocab, np.random.default_rng(seed))


def test_each_row_masks_its_budget_of_maskable_tokens(rows):
    ids, length, a_len, mask_vocab, vocab = rows
    masked, positions, labels = _mask(rows)
    real = positions != 0
    budget = np.clip(np.floor((length - 3) * 0.15 + 0.5), 1, MAX_PRED)
    assert (real.sum(axis=1) == budget).all()
    assert (real[:, :-1] | ~real[:, 1:]).all()  # zero padding only after the real positions
    assert ((np.diff(positions, axis=1) > 0) | ~real[:, 1:]).all()  # sorted, unique
    rows_index = np.nonzero(real)[0]
    chosen = positions[real]
    assert (chosen >= 1).all() and (chosen < length[rows_index] - 1).all() and (chosen != a_len[rows_index] + 1).all()
    assert (labels[real] == ids[rows_index, chosen]).all() and (labels[~real] == 0).all()
    untouched = np.ones_like(ids, dtype=bool)
    untouched[rows_index, chosen] = False
    assert (masked[untouched] == ids[untouched]).all()
    # 15% of the maskable tokens: rounding per row moves it by less than a third of a point.
    assert real.sum() / (length - 3).sum() == pytest.approx(0.15, abs=0.003)


def test_masked_tokens_split_80_10_10(rows):
    ids, _, _, mask_vocab, vocab = rows
    masked, positions, labels = _mask(rows)
    real = positions != 0
    now = np.take_along_axis(masked, positions, axis=1)[real]
    before = labels[real]
    as_mask = now == mask_vocab.mask_id
    kept = now == before
    randomized = ~as_mask & ~kept
    assert real.sum() > 250_000  # standard error of each share below 0.0006
    assert as_mask.mean() == pytest.approx(0.8, abs=0.004)
    assert kept.mean() == pytest.approx(0.1, abs=0.003)
    assert randomized.mean() == pytest.approx(0.1, abs=0.003)
    assert np.isin(now[randomized], mask_vocab.replacement_ids).all()
    special = [vocab.id_of(t) for t in ("[PAD]", "[CLS]", "[SEP]", "[UNK]")]
    assert not np.isin(now[randomized], special).any()


def test_whole_word_mode_masks_whole_words_within_budget(rows):
    ids, length, a_len, mask_vocab, _ = rows
    masked, positions, labels = _mask(rows, whole_word=True)
    real = positions != 0
    budget = np.clip(np.floor((length - 3) * 0.15 + 0.5), 1, MAX_PRED)
    count = real.sum(axis=1)
    assert (count <= budget).all()
    assert count.sum() / budget.sum() > 0.95  # stopping at the first word that overflows costs little
    chosen = np.zeros_like(ids, dtype=bool)
    rows_index = np.nonzero(real)[0]
    chosen[rows_index, positions[real]] = True
    continuation = mask_vocab.is_continuation[ids]
    pos = np.arange(ids.shape[1])
    maskable = (pos >= 1) & (pos < length[:, None] - 1) & (pos != a_len[:, None] + 1)
    # A chosen piece's neighbours inside the same word are chosen too.
    joined = continuation[:, 1:] & maskable[:, 1:] & maskable[:, :-1]
    assert (chosen[:, 1:][joined] == chosen[:, :-1][joined]).all()
    assert joined[chosen[:, 1:]].mean() > 0.05  # real multi-piece words were masked


def test_same_seed_same_masks_other_seed_other_masks(rows):
    first, second, third = _mask(rows, seed=5), _mask(rows, seed=5), _mask(rows, seed=6)
    assert all((a == b).all() for a, b in zip(first, second))
    assert (first[1] != third[1]).any()
