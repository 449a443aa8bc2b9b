"""The one tokenizer builder: data_prep's words, GLUE's framed pairs and the exported AutoTokenizer agree.

Identical ids on ordinary text, with and without the bert-base vocabulary, are checked in
test_hf_export.py (test_autotokenizer_gives_data_preps_ids*); here: what differs on
purpose (special tokens written in text), truncation, and a vocabulary that cannot frame.
"""

from __future__ import annotations

import pytest

from bing_bert_pld.tokenizer import (MASK, SPECIAL_TOKENS, build_bert_tokenizer, build_hf_tokenizer,
                                     build_word_tokenizer)
from tests.test_glue_pretrained import write_vocab


def test_special_tokens_in_text(tmp_path):
    """data_prep keeps "[MASK]" in the corpus as the characters it is (as the shards always
    had it); GLUE and the exported AutoTokenizer read it as the mask token, which the
    fill-mask pipeline relies on."""
    from transformers import AutoTokenizer

    vocab = write_vocab(tmp_path / "vocab.txt")
    build_hf_tokenizer(vocab, True, 64).save_pretrained(tmp_path / "tok")
    exported = AutoTokenizer.from_pretrained(tmp_path / "tok")
    glue = build_bert_tokenizer(vocab, True)
    words = build_word_tokenizer(vocab, True)
    mask_id = SPECIAL_TOKENS.index(MASK)
    text = "the [MASK] sat"
    the, sat = glue.token_to_id("the"), glue.token_to_id("sat")
    assert exported(text).input_ids == glue.encode(text).ids == [2, the, mask_id, sat, 3]
    # The tiny vocabulary has no brackets: [UNK] for each.
    assert words.encode(text, add_special_tokens=False).tokens == [
        "the", "[UNK]", "m", "##a", "##s", "##k", "[UNK]", "sat"]
    assert exported.mask_token_id == mask_id and exported.model_max_length == 64
    assert exported.do_lower_case is True


def test_pairs_truncate_longest_first(tmp_path):
    tokenizer = build_bert_tokenizer(write_vocab(tmp_path / "vocab.txt"), True, max_length=8)
    encoding = tokenizer.encode("the cat sat on the mat", "a dog")
    assert encoding.tokens == ["[CLS]", "the", "cat", "sat", "[SEP]", "a", "dog", "[SEP]"]
    assert encoding.type_ids == [0] * 5 + [1] * 3


def test_a_vocabulary_without_cls_cannot_frame_inputs(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("".join(f"{token}\n" for token in ("[PAD]", "[UNK]", "[SEP]", "[MASK]", "a")))
    assert build_word_tokenizer(vocab, True).encode("a", add_special_tokens=False).ids == [4]
    with pytest.raises(ValueError, match=r"^vocabulary .*vocab.txt lacks \['\[CLS\]'\]: a BERT "
                                         r"input is framed as \[CLS\] a \[SEP\] b \[SEP\]$"):
        build_bert_tokenizer(vocab, True)
