"""Tokenizer: the word-cached encoder equals HF sentence encoding; vocab training is stable."""

from __future__ import annotations

import json

import pytest

from data_prep.cleaning import CleaningConfig, clean_document
from data_prep.splitting import split_sentences
from bing_bert_pld.tokenizer import SPECIAL_TOKENS, build_word_tokenizer
from data_prep.tokenizer import WordEncoder, train_vocab
from data_prep.vocab import load_vocab


def _sentences(wiki_extracted, bible_dir) -> list[str]:
    sentences = []
    for path in sorted(wiki_extracted.rglob("wiki_*")):
        for line in path.read_text().splitlines():
            lines, _ = clean_document(json.loads(line)["text"].split("\n"), CleaningConfig())
            sentences.extend(split_sentences(lines))
    for path in sorted(bible_dir.iterdir())[:3]:
        lines, _ = clean_document(path.read_text().splitlines(), CleaningConfig())
        sentences.extend(split_sentences(lines))
    return sentences


@pytest.mark.parametrize("lowercase", [True, False])
def test_word_cache_gives_the_same_ids_as_encoding_sentences(wiki_extracted, bible_dir, vocab_path, lowercase):
    sentences = _sentences(wiki_extracted, bible_dir)
    tokenizer = build_word_tokenizer(vocab_path, lowercase)
    expected = [e.ids for e in tokenizer.encode_batch_fast(sentences, add_special_tokens=False)]
    encoder = WordEncoder(tokenizer, max_words=20_000)  # small: the cache is emptied and refilled on the way
    flat, lengths = [], []
    for start in range(0, len(sentences), 5000):
        ids, counts = encoder.encode(sentences[start:start + 5000])
        flat.extend(ids.tolist())
        lengths.extend(counts.tolist())
    assert lengths == [len(e) for e in expected]
    assert flat == [i for e in expected for i in e]
    assert sum(lengths) > 600_000


def test_trained_vocabulary_is_deterministic_and_bert_shaped(tmp_path, bible_dir):
    files = sorted(bible_dir.iterdir())[:20]
    train_vocab(files, 2000, True, tmp_path / "a.txt", show_progress=False)
    train_vocab(files, 2000, True, tmp_path / "b.txt", show_progress=False)
    assert (tmp_path / "a.txt").read_bytes() == (tmp_path / "b.txt").read_bytes()
    vocab = load_vocab(tmp_path / "a.txt")
    assert vocab.tokens[:5] == SPECIAL_TOKENS
    assert vocab.size == 2000
    assert "god" in vocab.tokens and "God" not in vocab.tokens  # lowercased
    assert any(t.startswith("##") for t in vocab.tokens)
