"""BERT model configuration: a typed dataclass read from JSON, unknown keys rejected.

The model configuration owns the architecture only. Batch sizes, optimizer, precision
and the PLD schedule belong to the DeepSpeed JSON (see ds_configs/README.md).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

PACKAGED_CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    """A configuration file or value is wrong; the message names the file and key."""


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
        positive = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "intermediate_size", "max_position_embeddings", "type_vocab_size")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(f"pad_token_id {self.pad_token_id} outside [0, vocab_size)")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, values: dict, source: str = "<dict>") -> "BertConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown model config key(s) {unknown}; "
                              f"known keys are {sorted(known)}")
        try:
            return cls(**values)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
        except TypeError as err:
            raise ConfigError(f"{source}: {err}") from None

    @classmethod
    def from_json(cls, path: str | Path) -> "BertConfig":
        path = resolve_model_config_path(path)
        return cls.from_dict(read_json_object(path, "model config"), source=str(path))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "BertConfig":
        return dataclasses.replace(self, **changes)


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
