"""A WordPiece vocabulary file (bert-base-uncased layout) and the checks it must pass.

[PAD] must be id 0 because the shard format pads input_ids and masked_lm_ids with 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bing_bert_pld.run.files import sha256_of
from bing_bert_pld.tokenizer import CONTINUATION_PREFIX, PAD, SPECIAL_TOKENS
from data_prep.errors import DataPrepError


@dataclass(frozen=True)
class Vocab:
    path: Path
    tokens: tuple[str, ...]
    sha256: str

    @property
    def size(self) -> int:
        return len(self.tokens)

    def id_of(self, token: str) -> int:
        return self.tokens.index(token)

    def special_ids(self) -> dict[str, int]:
        return {token: self.id_of(token) for token in SPECIAL_TOKENS}

    def replacement_ids(self) -> np.ndarray:
        """Ids a masked token may be replaced by at random: real word pieces only, not
        [PAD]/[CLS]/... nor the bracketed [unusedN] slots that the model never sees."""
        return np.array([i for i, t in enumerate(self.tokens) if not (t.startswith("[") and t.endswith("]"))],
                        dtype=np.int64)

    def continuation_mask(self) -> np.ndarray:
        """True for ids that continue a word ("##ing"): used by whole-word masking."""
        return np.array([t.startswith(CONTINUATION_PREFIX) for t in self.tokens], dtype=bool)


def load_vocab(path: Path) -> Vocab:
    path = Path(path)
    if not path.is_file():
        raise DataPrepError(f"vocabulary not found: {path}")
    data = path.read_bytes()
    try:
        tokens = tuple(data.decode("utf-8").splitlines())
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DataPrepError(f"vocabulary {path} is not UTF-8: byte 0x{data[error.start]:02x} on line {line} "
                            f"(token {line - 1}) does not decode; expected a UTF-8 vocab.txt, one token per line "
                            f"(convert it, e.g. iconv -f latin1 -t utf-8)") from None
    missing = [t for t in SPECIAL_TOKENS if t not in tokens]
    if missing:
        raise DataPrepError(f"vocabulary {path} lacks the special tokens {missing}; "
                            f"it needs all of {list(SPECIAL_TOKENS)}")
    if tokens[0] != PAD:
        raise DataPrepError(f"vocabulary {path}: [PAD] must be id 0 (shards are 0-padded), "
                            f"found at id {tokens.index(PAD)}")
    return Vocab(path=path, tokens=tokens, sha256=sha256_of(path))
