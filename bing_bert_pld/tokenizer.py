"""Build the BERT WordPiece tokenizer of a vocab.txt, for data_prep, GLUE and the transformers export.

Every tokenizer of the project comes from here, so the pretraining shards, GLUE
fine-tuning and the exported AutoTokenizer give the same ids for the same text:
- `build_word_tokenizer`: words -> word-piece ids, nothing added; data_prep encodes the
  corpus with it (the instance builder frames [CLS] a [SEP] b [SEP] itself).
- `build_bert_tokenizer`: the same, plus the model's framing, [CLS] a [SEP] (b [SEP]) with
  segment ids 0 / 1, the special tokens recognized in text as transformers' BertTokenizer
  does, and optional longest-first truncation (GLUE).
- `build_hf_tokenizer`: transformers' BertTokenizerFast over that same Tokenizer object,
  with the special tokens, casing and model_max_length it saves beside an exported model.

Normalizer and pre-tokenizer are BERT's (`set_bert_text_rules`): lowercasing with accents
stripped exactly when lowercasing, as bert-base-uncased / -cased; data_prep's vocabulary
trainer uses them too, so a trained vocabulary splits text the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)  # ids 0-4 in a vocabulary data_prep trains
CONTINUATION_PREFIX = "##"


def set_bert_text_rules(tokenizer: Tokenizer, lowercase: bool) -> Tokenizer:
    """BERT's normalizer and pre-tokenizer on `tokenizer` (returned for chaining)."""
    # strip_accents=None follows `lowercase`, as in bert-base-uncased / -cased.
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tokenizer


def build_word_tokenizer(vocab_file: str | Path, lowercase: bool) -> Tokenizer:
    """Text -> word-piece ids over vocab_file, no special tokens: data_prep's tokenizer."""
    tokenizer = Tokenizer(models.WordPiece.from_file(str(vocab_file), unk_token=UNK))
    tokenizer.decoder = decoders.WordPiece(prefix=CONTINUATION_PREFIX)  # ids back to words
    return set_bert_text_rules(tokenizer, lowercase)


def build_bert_tokenizer(vocab_file: str | Path, lowercase: bool,
                         max_length: Optional[int] = None) -> Tokenizer:
    """build_word_tokenizer framed as the model's input: [CLS] a [SEP] (b [SEP]), segment
    ids 0 / 1, pairs truncated longest-first to max_length tokens when one is given.

    The special tokens are registered, as transformers' BertTokenizer registers them, so
    "[MASK]" in text is the mask token (what the fill-mask pipeline needs) and GLUE sees
    text exactly as the exported AutoTokenizer does.
    """
    tokenizer = build_word_tokenizer(vocab_file, lowercase)
    missing = [token for token in (CLS, SEP) if tokenizer.token_to_id(token) is None]
    if missing:
        raise ValueError(f"vocabulary {vocab_file} lacks {missing}: a BERT input is framed "
                         f"as {CLS} a {SEP} b {SEP}")
    tokenizer.add_special_tokens([token for token in (UNK, SEP, CLS, PAD, MASK)
                                  if tokenizer.token_to_id(token) is not None])
    tokenizer.post_processor = processors.BertProcessing(
        (SEP, tokenizer.token_to_id(SEP)), (CLS, tokenizer.token_to_id(CLS)))
    if max_length is not None:
        tokenizer.enable_truncation(max_length=max_length, strategy="longest_first")
    return tokenizer


def build_hf_tokenizer(vocab_file: str | Path, lowercase: bool, model_max_length: int):
    """transformers' BertTokenizerFast over build_bert_tokenizer's Tokenizer: what an
    exported directory holds and AutoTokenizer.from_pretrained reloads."""
    from transformers import BertTokenizerFast  # transformers only where a directory is written

    return BertTokenizerFast(
        tokenizer_object=build_bert_tokenizer(vocab_file, lowercase),
        do_lower_case=lowercase, model_max_length=model_max_length,
        unk_token=UNK, sep_token=SEP, pad_token=PAD, cls_token=CLS, mask_token=MASK)
