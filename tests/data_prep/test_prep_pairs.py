"""Segment pairs: BERT's truncation rule, segment bounds, and next-sentence balance."""

from __future__ import annotations

import random
from array import array

import numpy as np
import pytest

from bing_bert_pld.tokenizer import build_word_tokenizer
from data_prep.cleaning import CleaningConfig, clean_document
from data_prep.pairs import PairBuilder, _truncate_pair
from data_prep.splitting import split_sentences
from data_prep.tokenizer import WordEncoder


def _reference_truncation(len_a: int, len_b: int, max_tokens: int) -> tuple[int, int]:
    while len_a + len_b > max_tokens:
        if len_a > len_b:
            len_a -= 1
        else:
            len_b -= 1
    return len_a, len_b


def test_closed_form_truncation_matches_the_reference_loop():
    rng = random.Random(0)
    fronts = trims = 0
    for len_a in range(1, 41):
        for len_b in range(1, 41):
            for max_tokens in range(2, 61):
                a_lo, a_hi, b_lo, b_hi = _truncate_pair(100, 100 + len_a, 500, 500 + len_b, max_tokens, rng)
                assert (a_hi - a_lo, b_hi - b_lo) == _reference_truncation(len_a, len_b, max_tokens)
                assert 100 <= a_lo and a_hi <= 100 + len_a and 500 <= b_lo and b_hi <= 500 + len_b
                fronts += (a_lo - 100) + (b_lo - 500)
                trims += max(0, len_a + len_b - max_tokens)
    assert fronts / trims == pytest.approx(0.5, abs=0.005)  # front and back equally likely


@pytest.fixture(scope="module")
def bible_tokens(bible_dir, vocab_path):
    encoder = WordEncoder(build_word_tokenizer(vocab_path, True))
    docs = []
    for path in sorted(bible_dir.iterdir()):
        lines, _ = clean_document(path.read_text().splitlines(), CleaningConfig())
        docs.append(split_sentences(lines))
    flat, lengths = encoder.encode([s for d in docs for s in d])
    sentence_offsets = np.concatenate([[0], np.cumsum(lengths)]).tolist()
    doc_offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).tolist()
    return flat, sentence_offsets, doc_offsets


def _pairs(bible_tokens, max_num_tokens: int, short_seq_prob: float):
    flat, sentence_offsets, doc_offsets = bible_tokens
    builder = PairBuilder(sentence_offsets, doc_offsets, max_num_tokens, short_seq_prob)
    rng = random.Random(1)
    pairs, doc_of = array("q"), []
    for doc in range(len(doc_offsets) - 1):
        before = len(pairs)
        builder.add_document(doc, rng, pairs)
        doc_of.extend([doc] * ((len(pairs) - before) // 5))
    return np.array(pairs).reshape(-1, 5), np.array(doc_of)


@pytest.mark.parametrize("max_num_tokens", [125, 509])
def test_pairs_respect_documents_lengths_and_labels(bible_tokens, max_num_tokens):
    flat, sentence_offsets, doc_offsets = bible_tokens
    pairs, doc_of = _pairs(bible_tokens, max_num_tokens, 0.1)
    a_start, a_len, b_start, b_len, random_next = pairs.T
    doc_token_start = np.array(sentence_offsets)[np.array(doc_offsets)]
    doc_a = np.searchsorted(doc_token_start, a_start, side="right") - 1
    doc_b = np.searchsorted(doc_token_start, b_start, side="right") - 1

    assert (a_len >= 1).all() and (b_len >= 1).all() and (a_len + b_len <= max_num_tokens).all()
    assert (doc_a == doc_of).all()
    assert (doc_a == np.searchsorted(doc_token_start, a_start + a_len - 1, side="right") - 1).all()
    true_next = random_next == 0
    assert (doc_b[true_next] == doc_a[true_next]).all() and (b_start[true_next] >= (a_start + a_len)[true_next]).all()
    assert (doc_b[~true_next] != doc_a[~true_next]).all()  # 66 documents: always another one
    # One pass reads every sentence of every document at least once.
    assert len(pairs) * max_num_tokens > flat.size
    assert random_next.mean() == pytest.approx(0.5, abs=0.015)


def test_short_seq_prob_makes_short_instances(bible_tokens):
    def short_fraction(prob):
        pairs, _ = _pairs(bible_tokens, 125, prob)
        return ((pairs[:, 1] + pairs[:, 3]) < 60).mean()

    assert short_fraction(0.0) < 0.005  # only at document ends
    assert 0.015 < short_fraction(0.1) - short_fraction(0.0) < 0.05
    assert short_fraction(1.0) > 0.15
