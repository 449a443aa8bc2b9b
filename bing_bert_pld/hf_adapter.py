"""Translate between our BERT and transformers': configs, tensor names, and the exported directory.

Design choices:
- Pre-LN (the default, what PLD trains) maps to `roberta-prelayernorm`, the
  transformers architecture with the same block: LayerNorm on each sublayer's input and
  a final LayerNorm. Only names move (_PRE_LN_RENAMES below) and positions shift: RoBERTa numbers
  positions from pad_token_id + 1 (pad tokens get row pad_token_id), so our row t is
  their row t + pad_token_id + 1, and the exported table has pad_token_id + 1 extra rows
  at the top (zeros, never read by real tokens). transformers derives the positions from
  the ids (pad tokens do not count), so outputs match ours for right-padded input, the
  tokenizer's default. Token types, the WordPiece vocabulary and [CLS]/[SEP] stay BERT's;
  RobertaPreLayerNorm takes token_type_ids as given.
- roberta-prelayernorm has no next-sentence head: it is saved beside the model in
  `nsp_head.safetensors` (`weight` (2, H), `bias` (2,)), applied to the pooled output
  (`AutoModel(...).pooler_output`) like BertForPreTraining's `cls.seq_relationship`.
- Post-LN models (pre_layer_norm=false) map to plain `bert` (BertForPreTraining): our
  names are already HF BERT's, the NSP head included.
- Tied tensors (the MLM decoder = word embeddings, decoder bias = lm_head bias) are
  stored once; transformers ties them on load.
- `bing_bert_pld.json` beside config.json keeps our exact BertConfig, so
  `import_hf(write_hf_dir(...))` returns every tensor and setting unchanged.
- The tokenizer is bing_bert_pld.tokenizer's, saved as transformers' BertTokenizerFast
  over the same vocab.txt with the same lowercasing, so it produces data_prep's ids.

This module knows nothing of checkpoints: `bing_bert_pld.hf_export` (the command) reads
one through run.pretrained, and run.pretrained reads an exported directory through
`import_hf`.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from .config import BertConfig
from .run.layout import CheckpointError
from .tokenizer import build_hf_tokenizer

WEIGHTS = "model.safetensors"
NSP_HEAD = "nsp_head.safetensors"
EXPORT_META = "bing_bert_pld.json"
VOCAB = "vocab.txt"
FORMAT_VERSION = 1

ROBERTA_PREFIX = "roberta_prelayernorm."
# Ours -> roberta-prelayernorm, for Pre-LN. `{i}` is a layer index. Tied and NSP
# tensors are handled outside the table. First match wins: specific names come first.
_PRE_LN_RENAMES = [
    ("bert.embeddings.", ROBERTA_PREFIX + "embeddings."),
    ("bert.encoder.layer.{i}.attention.output.LayerNorm.",
     ROBERTA_PREFIX + "encoder.layer.{i}.attention.LayerNorm."),
    ("bert.encoder.layer.{i}.output.LayerNorm.",  # ours normalizes the FFN input: theirs too
     ROBERTA_PREFIX + "encoder.layer.{i}.intermediate.LayerNorm."),
    ("bert.encoder.layer.{i}.", ROBERTA_PREFIX + "encoder.layer.{i}."),
    ("bert.encoder.final_layer_norm.", ROBERTA_PREFIX + "LayerNorm."),
    ("bert.pooler.", ROBERTA_PREFIX + "pooler."),
    ("cls.predictions.transform.dense.", "lm_head.dense."),
    ("cls.predictions.transform.LayerNorm.", "lm_head.layer_norm."),
    ("cls.predictions.bias", "lm_head.bias"),
]
POSITIONS = "bert.embeddings.position_embeddings.weight"
WORD_EMBEDDINGS = "bert.embeddings.word_embeddings.weight"
DECODER = "cls.predictions.decoder.weight"
NSP_PREFIX = "cls.seq_relationship."


class ExportError(CheckpointError):
    """The checkpoint cannot be exported or an exported directory cannot be imported."""


def _compile(renames: list[tuple[str, str]]) -> list[tuple[re.Pattern, str]]:
    def pattern(prefix: str) -> re.Pattern:
        return re.compile("^" + re.escape(prefix).replace(re.escape("{i}"), r"(?P<i>\d+)"))

    return [(pattern(ours), theirs) for ours, theirs in renames]


_TO_HF = _compile(_PRE_LN_RENAMES)
_FROM_HF = _compile([(theirs, ours) for ours, theirs in _PRE_LN_RENAMES])


def _rename(name: str, table: list[tuple[re.Pattern, str]]) -> Optional[str]:
    for pattern, replacement in table:
        match = pattern.match(name)
        if match:
            return replacement.replace("{i}", match.groupdict().get("i") or "") + name[match.end():]
    return None


def position_offset(config: BertConfig) -> int:
    """Rows of the exported position table before our position 0 (RoBERTa numbering)."""
    return config.pad_token_id + 1


# ---------------------------------------------------------------- state dicts

def to_hf_state_dict(config: BertConfig, state_dict: dict[str, torch.Tensor]
                     ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Our BertForPreTraining tensors -> (transformers tensors, NSP head tensors)."""
    _check_tied(state_dict)
    nsp = {name.removeprefix(NSP_PREFIX): tensor for name, tensor in state_dict.items()
           if name.startswith(NSP_PREFIX)}
    body = {name: tensor for name, tensor in state_dict.items()
            if name != DECODER and not name.startswith(NSP_PREFIX)}
    if not config.pre_layer_norm:
        return body | {NSP_PREFIX + name: tensor for name, tensor in nsp.items()}, {}
    hf = {}
    for name, tensor in body.items():
        new_name = _rename(name, _TO_HF)
        if new_name is None:
            raise ExportError(f"no roberta-prelayernorm name for tensor {name!r}")
        if name == POSITIONS:
            offset = position_offset(config)
            padded = tensor.new_zeros(tensor.shape[0] + offset, tensor.shape[1])
            padded[offset:] = tensor
            tensor = padded
        hf[new_name] = tensor
    return hf, nsp


def from_hf_state_dict(config: BertConfig, hf: dict[str, torch.Tensor],
                       nsp: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of to_hf_state_dict: transformers tensors -> our BertForPreTraining."""
    if not config.pre_layer_norm:
        ours = dict(hf)
    else:
        ours = {}
        for name, tensor in hf.items():
            new_name = _rename(name, _FROM_HF)
            if new_name is None:
                raise ExportError(f"tensor {name!r} has no counterpart in our model")
            if new_name == POSITIONS:
                tensor = tensor[position_offset(config):]
            ours[new_name] = tensor
        ours |= {NSP_PREFIX + name: tensor for name, tensor in nsp.items()}
    if WORD_EMBEDDINGS in ours:
        ours[DECODER] = ours[WORD_EMBEDDINGS]  # tied, as in BertForPreTraining
    return ours


def _check_tied(state_dict: dict[str, torch.Tensor]) -> None:
    if DECODER in state_dict and not torch.equal(state_dict[DECODER], state_dict[WORD_EMBEDDINGS]):
        raise ExportError(f"{DECODER} differs from {WORD_EMBEDDINGS}; both exported "
                          "architectures tie them, so this checkpoint cannot be exported")


# ---------------------------------------------------------------- configs

def hf_config(config: BertConfig):
    """The transformers config equivalent to ours (architecture only)."""
    common = dict(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size, hidden_act="gelu",
        hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        type_vocab_size=config.type_vocab_size, initializer_range=config.initializer_range,
        layer_norm_eps=config.layer_norm_eps, pad_token_id=config.pad_token_id,
        tie_word_embeddings=True, dtype="float32")  # the weights are saved in fp32
    if config.pre_layer_norm:
        from transformers import RobertaPreLayerNormConfig

        return RobertaPreLayerNormConfig(
            **common, bos_token_id=None, eos_token_id=None,
            max_position_embeddings=config.max_position_embeddings + position_offset(config),
            architectures=["RobertaPreLayerNormForMaskedLM"])
    from transformers import BertConfig as HFBertConfig

    return HFBertConfig(**common, max_position_embeddings=config.max_position_embeddings,
                        architectures=["BertForPreTraining"])


def config_from_hf(values: dict) -> BertConfig:
    """Our config from a transformers config.json (used when no bing_bert_pld.json exists)."""
    model_type = values.get("model_type")
    if model_type not in ("roberta-prelayernorm", "bert"):
        raise ExportError(f"model_type {model_type!r} cannot be imported; expected "
                          "'roberta-prelayernorm' or 'bert'")
    if values.get("hidden_act", "gelu") != "gelu":
        raise ExportError(f"hidden_act {values['hidden_act']!r}: our model uses exact gelu")
    pre_ln = model_type == "roberta-prelayernorm"
    pad = values.get("pad_token_id") or 0
    positions = values["max_position_embeddings"] - (pad + 1 if pre_ln else 0)
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "intermediate_size", "type_vocab_size", "hidden_dropout_prob",
            "attention_probs_dropout_prob", "layer_norm_eps", "initializer_range")
    return BertConfig.from_dict({**{key: values[key] for key in keys if key in values},
                                 "max_position_embeddings": positions, "pad_token_id": pad,
                                 "pre_layer_norm": pre_ln}, source="config.json")


# ---------------------------------------------------------------- the exported directory

def write_hf_dir(out_dir: str | Path, config: BertConfig, state_dict: dict[str, torch.Tensor],
                 vocab_file: Path, lowercase: bool, source: str) -> Path:
    """Write the transformers directory of a BertForPreTraining state dict (module
    docstring); every check runs before the first file is written."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    tokenizer = build_hf_tokenizer(vocab_file, lowercase, config.max_position_embeddings)
    if len(tokenizer) > config.vocab_size:
        raise ExportError(f"{vocab_file} has {len(tokenizer)} tokens, the model only "
                          f"{config.vocab_size} embeddings")
    hf_tensors, nsp = to_hf_state_dict(config, state_dict)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_config(config).save_pretrained(out_dir)
    save_file(_contiguous(hf_tensors), out_dir / WEIGHTS, metadata={"format": "pt"})
    if nsp:
        save_file(_contiguous(nsp), out_dir / NSP_HEAD, metadata={"format": "pt"})
    tokenizer.save_pretrained(out_dir)
    # transformers 5 saves tokenizer.json only; vocab.txt is what data_prep and import read.
    if vocab_file.resolve() != (out_dir / VOCAB).resolve():
        shutil.copyfile(vocab_file, out_dir / VOCAB)
    meta = {"format_version": FORMAT_VERSION, "model_config": config.to_dict(),
            "lowercase": lowercase, "source": source,
            "position_offset": position_offset(config) if config.pre_layer_norm else 0,
            "nsp_head": NSP_HEAD if nsp else None}
    (out_dir / EXPORT_META).write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses views and shared storage: give each tensor its own memory.
    return {name: tensor.detach().contiguous().clone() for name, tensor in tensors.items()}


@dataclass
class Imported:
    """What an exported directory holds, in our terms."""

    config: BertConfig
    state_dict: dict[str, torch.Tensor]  # BertForPreTraining names
    vocab_path: Optional[Path]  # None: the directory has no vocab.txt
    lowercase: Optional[bool]  # None: recorded nowhere
    meta: dict = field(default_factory=dict)  # bing_bert_pld.json, empty when absent


def import_hf(directory: str | Path) -> Imported:
    """An exported directory -> our config and BertForPreTraining state dict."""
    from safetensors.torch import load_file

    directory = Path(directory)
    hf_values = json.loads((directory / "config.json").read_text())
    meta_path = directory / EXPORT_META
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if "model_config" in meta:
        config = BertConfig.from_dict(meta["model_config"], source=str(meta_path))
        derived = config_from_hf(hf_values)
        if derived != config.replace(activation_checkpointing=False):
            raise ExportError(f"{directory}: config.json and {EXPORT_META} disagree: "
                              f"{derived} vs {config}")
    else:
        config = config_from_hf(hf_values)
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise ExportError(f"{directory}: {WEIGHTS} not found")
    nsp = {}
    if config.pre_layer_norm:
        nsp_path = directory / NSP_HEAD
        if not nsp_path.is_file():
            raise ExportError(f"{directory}: {NSP_HEAD} not found; roberta-prelayernorm has no "
                              "next-sentence head, so this project saves it there")
        nsp = load_file(nsp_path)
    state_dict = from_hf_state_dict(config, load_file(weights), nsp)
    vocab = directory / VOCAB
    lowercase = meta.get("lowercase")
    tokenizer_config = directory / "tokenizer_config.json"
    if lowercase is None and tokenizer_config.is_file():
        lowercase = json.loads(tokenizer_config.read_text()).get("do_lower_case")
    return Imported(config=config, state_dict=state_dict,
                    vocab_path=vocab if vocab.is_file() else None, lowercase=lowercase, meta=meta)
