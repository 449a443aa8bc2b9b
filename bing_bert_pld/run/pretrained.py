"""Load pretrained weights from what this project writes, and load them strictly.

    config, state_dict, vocab = load_pretrained(path)

`path` may be any of:
- a training output directory (holding `checkpoints/latest`),
- a checkpoint root (`<output_dir>/checkpoints`, holding DeepSpeed's `latest` file),
- one checkpoint tag directory (`<output_dir>/checkpoints/<tag>`),
- a directory exported by `bing_bert_pld.hf_export` (config.json + model.safetensors).

The weights come back as a state dict of `BertForPreTraining` in fp32 on the CPU. A
DeepSpeed checkpoint is read from `<tag>/mp_rank_00_model_states.pt` (key "module"),
except when ZeRO optimizer shards are present (`*zero_pp_rank_*_optim_states.pt`): then
DeepSpeed's zero_to_fp32 reassembles the fp32 master weights, which is the only way
under ZeRO-3 and the exact weights under ZeRO-1/2 with bf16/fp16 (the module copy is
rounded to 16 bits there). The model configuration comes from `<tag>/run_config.json`,
which the trainer writes with every checkpoint; the vocabulary is the checkpoint's own
`vocab.txt`, else the run directory's, else the path an older checkpoint recorded
(run.config.vocab_of), so a run directory that moved keeps its tokenizer.

The checkpoint layout is run.layout's and run.checkpoint's: `latest` must name a tag directory inside the
root, a checkpoint with a manifest is verified against it (sizes and sha256) before
anything is read, and every .pt file is read weights-only (run.safe_load), also
before DeepSpeed's zero_to_fp32 opens it with a plain torch.load.

`load_strict` replaces `load_state_dict(strict=False)`: a checkpoint that does not
match the configuration stops with every missing, unexpected and mis-shaped name.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from . import checkpoint
from .config import lowercase_of, vocab_of
from .layout import LATEST, MODEL_STATES, RUN_CONFIG, ZERO_OPTIM_GLOB, CheckpointError
from .safe_load import safe_load
from ..config import BertConfig

logger = logging.getLogger(__name__)

__all__ = ["CheckpointError", "CheckpointMismatchError", "LATEST", "Pretrained", "RUN_CONFIG",
           "check_names_and_shapes", "load_pretrained", "load_strict", "read_pretrained",
           "resolve_tag_dir"]


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's tensors do not match the model built from the configuration."""

    def __init__(self, source: str, missing: list[str], unexpected: list[str],
                 mismatched: list[tuple[str, tuple, tuple]]):
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        lines = [f"{source} does not match the model configuration:"]
        if missing:
            lines.append(f"  missing from the checkpoint ({len(missing)}):")
            lines += [f"    {name}" for name in missing]
        if unexpected:
            lines.append(f"  unexpected in the checkpoint ({len(unexpected)}):")
            lines += [f"    {name}" for name in unexpected]
        if mismatched:
            lines.append(f"  shape mismatches, checkpoint vs model ({len(mismatched)}):")
            lines += [f"    {name}: {list(got)} vs {list(want)}" for name, got, want in mismatched]
        super().__init__("\n".join(lines))


@dataclass
class Pretrained:
    """Everything a consumer (fine-tuning, export) needs from a pretrained model."""

    config: BertConfig
    state_dict: dict[str, torch.Tensor]  # BertForPreTraining names, fp32, CPU
    vocab_path: Optional[Path]
    lowercase: Optional[bool]  # None: not recorded
    source: str  # the directory the weights were read from, for messages
    run_config: dict = field(default_factory=dict)


def load_pretrained(path: str | Path) -> tuple[BertConfig, dict[str, torch.Tensor], Optional[Path]]:
    loaded = read_pretrained(path)
    return loaded.config, loaded.state_dict, loaded.vocab_path


def read_pretrained(path: str | Path) -> Pretrained:
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory (expected a DeepSpeed checkpoint "
                              "directory or a directory exported with bing_bert_pld.hf_export)")
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        from ..hf_adapter import import_hf  # transformers and safetensors only when needed

        imported = import_hf(path)
        return Pretrained(config=imported.config, state_dict=imported.state_dict,
                          vocab_path=imported.vocab_path, lowercase=imported.lowercase,
                          source=str(path), run_config=imported.meta)
    return _read_deepspeed(resolve_tag_dir(path))


def resolve_tag_dir(path: Path) -> Path:
    """An output dir, a checkpoint root or a tag dir -> the tag dir, verified when it has
    a manifest (checkpoint.resolve_checkpoint)."""
    return checkpoint.resolve_checkpoint(path)


def _read_deepspeed(tag_dir: Path) -> Pretrained:
    run_config_path = tag_dir / RUN_CONFIG
    if not run_config_path.is_file():
        raise CheckpointError(f"{run_config_path} is missing: the model configuration of this "
                              "checkpoint is unknown (the trainer writes it with every checkpoint)")
    run_config = json.loads(run_config_path.read_text())
    if "model_config" not in run_config:
        raise CheckpointError(f"{run_config_path} has no 'model_config'")
    config = BertConfig.from_dict(run_config["model_config"], source=f"{run_config_path}:model_config")
    state_dict = _deepspeed_weights(tag_dir)
    vocab_path = vocab_of(run_config, tag_dir)
    return Pretrained(config=config, state_dict=state_dict, vocab_path=vocab_path,
                      lowercase=lowercase_of(run_config, vocab_path),
                      source=str(tag_dir), run_config=run_config)


def _deepspeed_weights(tag_dir: Path) -> dict[str, torch.Tensor]:
    if any(tag_dir.glob(ZERO_OPTIM_GLOB)):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        checkpoint.preload_all(tag_dir)  # zero_to_fp32 unpickles with weights_only=False
        state_dict = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    else:
        states_path = tag_dir / MODEL_STATES
        if not states_path.is_file():
            raise CheckpointError(f"{tag_dir}: neither {MODEL_STATES} nor ZeRO shards "
                                  f"({ZERO_OPTIM_GLOB}) found")
        states = safe_load(states_path)
        state_dict = states.get("module")
        if not state_dict:
            raise CheckpointError(f"{states_path} holds no 'module' weights")
    return {name: tensor.detach().to(torch.float32) if tensor.is_floating_point() else tensor
            for name, tensor in state_dict.items()}


def load_strict(module: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict that names every missing, unexpected and mis-shaped tensor."""
    check_names_and_shapes(module, state_dict, source)
    module.load_state_dict(state_dict, strict=True)


def check_names_and_shapes(module: nn.Module, state_dict: dict[str, torch.Tensor],
                           source: str) -> None:
    """The tensors `module` holds, by name and shape; a module on the meta device will do."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [(name, tuple(state_dict[name].shape), tuple(expected[name].shape))
                  for name in sorted(set(expected) & set(state_dict))
                  if state_dict[name].shape != expected[name].shape]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(source, missing, unexpected, mismatched)
