"""Save and load a fine-tuned GLUE classifier that transformers' AutoModel classes also read.

The directory (written under a temporary name, renamed when whole):
- `model.safetensors`: fp32 weights under transformers' names. The encoder goes through
  hf_adapter (roberta-prelayernorm for Pre-LN, bert for Post-LN). Pre-LN: our
  head (pooler: dense + tanh on [CLS]; dropout; classifier) is the function of
  RobertaPreLayerNormClassificationHead (dense + tanh on the first token; dropout;
  out_proj), so pooler.dense becomes classifier.dense and classifier classifier.out_proj.
  Post-LN: our names are BertForSequenceClassification's.
- `config.json`: the transformers config, with num_labels, id2label / label2id (the
  task's label strings) and problem_type (regression for STS-B).
- `vocab.txt`, `tokenizer.json`, `tokenizer_config.json`: the pretraining WordPiece
  tokenizer with its casing, what AutoTokenizer loads.
- `bing_bert_pld.json`: our exact model config, the task, its labels, the casing, the
  sequence length and what the model was fine-tuned from: `load_finetuned` reads it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
import torch

from ..config import BertConfig
from ..hf_adapter import (EXPORT_META, VOCAB, WEIGHTS, ExportError, from_hf_state_dict, hf_config,
                          to_hf_state_dict)
from ..tokenizer import build_hf_tokenizer
from .data import TaskSpec, get_task
from .model import BertForSequenceClassification

FORMAT = "glue_classifier"
FORMAT_VERSION = 1
ROBERTA_POOLER = "roberta_prelayernorm.pooler.dense."
OUR_POOLER = "bert.pooler.dense."


@dataclass
class Finetuned:
    model: BertForSequenceClassification  # on the CPU, in eval mode
    task: TaskSpec
    vocab_path: Path
    lowercase: bool
    max_seq_length: int
    meta: dict


def is_finetuned_dir(path: str | Path) -> bool:
    meta = Path(path) / EXPORT_META
    try:
        return json.loads(meta.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def to_hf(config: BertConfig, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our BertForSequenceClassification tensors -> transformers' *ForSequenceClassification."""
    encoder = {name: t for name, t in state_dict.items() if name.startswith("bert.")}
    hf, _ = to_hf_state_dict(config, encoder)
    head = {name: t for name, t in state_dict.items() if name.startswith("classifier.")}
    if not config.pre_layer_norm:
        return hf | head
    for part in ("weight", "bias"):
        hf[f"classifier.dense.{part}"] = hf.pop(ROBERTA_POOLER + part)
        hf[f"classifier.out_proj.{part}"] = head[f"classifier.{part}"]
    return hf


def from_hf(config: BertConfig, hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of to_hf."""
    hf = dict(hf)
    if config.pre_layer_norm:
        head = {}
        for part in ("weight", "bias"):
            hf[ROBERTA_POOLER + part] = hf.pop(f"classifier.dense.{part}")
            head[f"classifier.{part}"] = hf.pop(f"classifier.out_proj.{part}")
    else:
        head = {name: hf.pop(name) for name in list(hf) if name.startswith("classifier.")}
    ours = from_hf_state_dict(config, hf, {})
    ours.pop("cls.predictions.decoder.weight", None)  # tied to the embeddings in pretraining only
    return ours | head


def save_finetuned(state_dict: dict[str, torch.Tensor], config: BertConfig, task: TaskSpec,
                   directory: str | Path, vocab_file: Path, lowercase: bool,
                   max_seq_length: int, source: str) -> Path:
    """Write the directory described in the module docstring; replaces an older one."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.partial-", dir=directory.parent))
    try:
        hf = hf_config(config)
        hf.architectures = ["RobertaPreLayerNormForSequenceClassification" if config.pre_layer_norm
                            else "BertForSequenceClassification"]
        labels = list(task.labels) if task.labels else ["score"]
        hf.num_labels = len(labels)
        hf.id2label = dict(enumerate(labels))
        hf.label2id = {label: i for i, label in enumerate(labels)}
        hf.problem_type = "regression" if task.is_regression else "single_label_classification"
        hf.save_pretrained(staging)
        tensors = {name: t.detach().float().contiguous().clone()
                   for name, t in to_hf(config, state_dict).items()}
        save_file(tensors, staging / WEIGHTS, metadata={"format": "pt"})
        build_hf_tokenizer(vocab_file, lowercase, max_seq_length).save_pretrained(staging)
        shutil.copyfile(vocab_file, staging / VOCAB)
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "task": task.name,
                "labels": task.labels, "model_config": config.to_dict(), "lowercase": lowercase,
                "max_seq_length": max_seq_length, "source": source}
        (staging / EXPORT_META).write_text(json.dumps(meta, indent=2) + "\n")
        if directory.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
            os.replace(directory, old / directory.name)
            os.replace(staging, directory)
            shutil.rmtree(old)
        else:
            os.replace(staging, directory)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return directory


def load_finetuned(directory: str | Path) -> Finetuned:
    """A directory written by save_finetuned -> our model, its task and its tokenizer's files."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if not is_finetuned_dir(directory):
        raise ExportError(f"{directory}: not a fine-tuned GLUE model ({EXPORT_META} with "
                          f"format {FORMAT!r} not found)")
    meta = json.loads((directory / EXPORT_META).read_text())
    config = BertConfig.from_dict(meta["model_config"], source=str(directory / EXPORT_META))
    task = get_task(meta["task"])
    model = BertForSequenceClassification(config, task.num_outputs)
    model.load_state_dict(from_hf(config, load_file(directory / WEIGHTS)), strict=True)
    return Finetuned(model=model.eval(), task=task, vocab_path=directory / VOCAB,
                     lowercase=bool(meta["lowercase"]), max_seq_length=int(meta["max_seq_length"]),
                     meta=meta)

