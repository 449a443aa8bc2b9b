"""Sentence-pair segments with next-sentence labels, as BERT's create_pretraining_data.

Works on token *offsets*: a unit's tokens sit in one flat array, a document's sentences
are contiguous in it, so a segment (some consecutive sentences, perhaps truncated) is
just a [start, end) range. Instances are produced by the reference algorithm: fill a
chunk of sentences up to a target length (shorter with probability short_seq_prob),
cut it at a random sentence into A and B, and with probability 1/2 replace B by text
from a random other document (the unused sentences go back to be read again).

Two deliberate differences from the reference:
- The target length is drawn per instance, not per document: a book is one document,
  and a per-document draw would make a whole book short or long.
- A one-sentence chunk that drew "true next" takes the following sentence as B; the
  reference forces it to "random next", which biases the labels above 50% on corpora
  with long sentences. It is still forced at the very end of a document.
"""

from __future__ import annotations

import random
from array import array

# BERT tries this many times to draw a document other than the current one; with a
# single document in the unit it falls back to the same document.
_RANDOM_DOC_TRIES = 10


class PairBuilder:
    def __init__(self, sentence_offsets: list[int], doc_offsets: list[int], max_num_tokens: int,
                 short_seq_prob: float) -> None:
        """sentence_offsets[i]: where sentence i starts in the flat token array (plus the
        end); doc_offsets[d]: document d's first sentence (plus the end)."""
        self.sentence_offsets = sentence_offsets
        self.doc_offsets = doc_offsets
        self.max_num_tokens = max_num_tokens
        self.short_seq_prob = short_seq_prob

    def add_document(self, doc: int, rng: random.Random, out: array) -> None:
        """Append a_start, a_len, b_start, b_len, is_random_next for each instance to
        `out`, a flat array('q') (a fifth of the memory of a list of tuples)."""
        so = self.sentence_offsets
        first, last = self.doc_offsets[doc], self.doc_offsets[doc + 1]
        chunk_start, length, target = first, 0, self._target_length(rng)
        i = first
        while i < last:
            length += so[i + 1] - so[i]
            if i == last - 1 or length >= target:
                chunk_end = i + 1
                random_next = rng.random() < 0.5
                if not random_next and chunk_end - chunk_start == 1:
                    if chunk_end < last:
                        chunk_end += 1
                        i += 1
                    else:
                        random_next = True
                a_end = chunk_start + 1 if chunk_end - chunk_start < 2 else rng.randint(chunk_start + 1, chunk_end - 1)
                a_lo, a_hi = so[chunk_start], so[a_end]
                if random_next:
                    b_lo, b_hi = self._random_segment(doc, target - (a_hi - a_lo), rng)
                    i = a_end - 1  # the chunk's sentences after A are read again
                else:
                    b_lo, b_hi = so[a_end], so[chunk_end]
                a_lo, a_hi, b_lo, b_hi = _truncate_pair(a_lo, a_hi, b_lo, b_hi, self.max_num_tokens, rng)
                out.extend((a_lo, a_hi - a_lo, b_lo, b_hi - b_lo, int(random_next)))
                chunk_start, length, target = i + 1, 0, self._target_length(rng)
            i += 1

    def _target_length(self, rng: random.Random) -> int:
        if rng.random() < self.short_seq_prob:
            return rng.randint(2, self.max_num_tokens)
        return self.max_num_tokens

    def _random_segment(self, doc: int, target: int, rng: random.Random) -> tuple[int, int]:
        """Consecutive sentences from a random place of another document, up to `target`
        tokens (at least one sentence)."""
        n_docs = len(self.doc_offsets) - 1
        for _ in range(_RANDOM_DOC_TRIES):
            other = rng.randrange(n_docs)
            if other != doc:
                break
        first, last = self.doc_offsets[other], self.doc_offsets[other + 1]
        start = rng.randrange(first, last)
        end, length = start, 0
        while end < last and (end == start or length < target):
            length += self.sentence_offsets[end + 1] - self.sentence_offsets[end]
            end += 1
        return self.sentence_offsets[start], self.sentence_offsets[end]


def _truncate_pair(a_lo: int, a_hi: int, b_lo: int, b_hi: int, max_tokens: int, rng: random.Random):
    """Trim until both fit, as BERT does: one token at a time from the longer segment
    (B on ties), from its front or back by a fair coin.

    Done in closed form: that loop leaves A with min(len_a, max(max - len_b,
    ceil(max / 2))) tokens, and the number of front trims of a segment that loses n
    tokens is Binomial(n, 1/2), the popcount of n random bits."""
    len_a, len_b = a_hi - a_lo, b_hi - b_lo
    if len_a + len_b <= max_tokens:
        return a_lo, a_hi, b_lo, b_hi
    keep_a = min(len_a, max(max_tokens - len_b, (max_tokens + 1) // 2))
    cut_a, cut_b = len_a - keep_a, len_a + len_b - max_tokens - (len_a - keep_a)
    front_a = rng.getrandbits(cut_a).bit_count()
    front_b = rng.getrandbits(cut_b).bit_count()
    return a_lo + front_a, a_hi - (cut_a - front_a), b_lo + front_b, b_hi - (cut_b - front_b)
