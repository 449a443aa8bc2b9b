"""BERT model configuration: a typed dataclass read from JSON, unknown keys rejected.

The model configuration owns the architecture only. Batch sizes, optimizer, precision
and the PLD schedule belong to the DeepSpeed JSON (see ds_configs/README.md).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from .strict_dict import BOOL, POSITIVE_INT, ConfigError, Rule, check_value, checked

PACKAGED_CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pre_layer_norm: bool = True  # Pre-LN is what makes layer dropping stable (PLD paper)
    activation_checkpointing: bool = False  # recompute each kept layer in backward
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        # Here rather than in from_dict, so that replace() and direct construction are checked too.
        for name, rule in _FIELD_RULES.items():
            check_value(None, name, getattr(self, name), rule)
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}")
        if self.pad_token_id >= self.vocab_size:
            raise ConfigError(f"pad_token_id {self.pad_token_id} must be below vocab_size "
                              f"{self.vocab_size}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, values: dict, source: str = "<dict>") -> "BertConfig":
        values = checked(values, source, dict.fromkeys(_FIELD_RULES), what="the model config")
        try:
            return cls(**values)
        except ConfigError as err:  # __post_init__'s messages name the key, not the file
            raise ConfigError(f"{source}: {err}") from None

    @classmethod
    def from_json(cls, path: str | Path) -> "BertConfig":
        path = resolve_model_config_path(path)
        return cls.from_dict(read_json_object(path, "model config"), source=str(path))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "BertConfig":
        return dataclasses.replace(self, **changes)


_PROBABILITY = Rule(low=0, high=1, high_open=True)
_FIELD_RULES = {
    "vocab_size": POSITIVE_INT, "hidden_size": POSITIVE_INT, "num_hidden_layers": POSITIVE_INT,
    "num_attention_heads": POSITIVE_INT, "intermediate_size": POSITIVE_INT,
    "max_position_embeddings": POSITIVE_INT, "type_vocab_size": POSITIVE_INT,
    "hidden_dropout_prob": _PROBABILITY, "attention_probs_dropout_prob": _PROBABILITY,
    "layer_norm_eps": Rule(low=0, low_open=True), "initializer_range": Rule(low=0),
    "pre_layer_norm": BOOL, "activation_checkpointing": BOOL,
    "pad_token_id": Rule("integer", low=0),
}


def read_json_object(path: str | Path, what: str) -> dict:
    """A JSON file holding one object; any other content is a ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        values = json.loads(path.read_text(), object_pairs_hook=_refuse_duplicate_keys)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON: {err}") from None
    except _DuplicateKey as err:
        raise ConfigError(f"{path}: key {err.args[0]!r} appears twice in one object; JSON keeps "
                          "only the last, so the other would be silently ignored") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(values).__name__}")
    return values


class _DuplicateKey(Exception):
    pass


def _refuse_duplicate_keys(pairs: list) -> dict:
    values = {}
    for key, value in pairs:
        if key in values:
            raise _DuplicateKey(key)
        values[key] = value
    return values


def resolve_model_config_path(path: str | Path) -> Path:
    """A path as given, or the name of a packaged config ("bert-base", "bert-tiny")."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    packaged = PACKAGED_CONFIG_DIR / f"{candidate.name.removesuffix('.json')}.json"
    if packaged.is_file():
        return packaged
    available = sorted(p.stem for p in PACKAGED_CONFIG_DIR.glob("*.json"))
    raise ConfigError(f"model config {str(path)!r} not found (neither a file nor one of "
                      f"the packaged configs {available})")
