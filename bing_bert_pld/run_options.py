"""Trainer options that stand in for what DeepSpeedExamples' bing_bert client set outside its DeepSpeed JSON.

Its PLD config (ds_configs/legacy/, kept byte for byte as published) has no scheduler block
and asks for fp16: the client set the learning rate itself at every step, from its command
line (`--lr_schedule LE`) and a second JSON (bert_base_large_lr.json), and ran on V100s.
Two options run that file unedited:

- `--lr_schedule bing_bert`: the client's schedule as our `WarmupExpDecay` with
  warmup_degree 1 (its "LE": linear warmup, then exponential decay), with the values of
  its PLD run: peak = the JSON's optimizer lr (1e-3 there, the same as the client's
  `learning_rate`), warmup over 2% of 200,000 steps, then x0.99 every 1000 steps:
      lr(k) = peak * k / 4000                          for k < 4000
      lr(k) = peak * 0.99 ** ((k - 4000) / 1000)       afterwards
  for the step taken while global_steps == k (the client's `update_learning_rate` ran
  before `engine.step()` with the same k). `--lr_schedule_total_steps` changes the 200,000
  (and so the warmup, 2% of it). Refused when the JSON has a scheduler block: the
  schedule keeps one home.
- `--precision bf16|fp32`: replaces the JSON's precision block (fp16 / bf16), so that a
  file written for GPUs trains on CPU ranks, which have no fp16. The JSON stays the home
  of precision everywhere else; run_config.json records the DeepSpeed dict that ran.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .config import ConfigError
from .ds_config import LRScheduleSpec, TrainingSetup, build_training_setup, read_json

# DeepSpeedExamples bing_bert, PLD run: ds_train_bert_progressive_layer_drop_bsz4k_seq128.sh
# (--lr_schedule LE) with bert_base_large_lr.json's "128" entry.
BING_BERT_SCHEDULE = {"total_steps": 200_000, "warmup_proportion": 0.02, "decay_rate": 0.99,
                      "decay_steps": 1000, "warmup_degree": 1.0}
LR_SCHEDULES = ("bing_bert",)
PRECISIONS = ("bf16", "fp32")
PRECISION_KEYS = ("fp16", "bf16", "bfloat16")  # "bfloat16": DeepSpeed's older name for bf16


def load_setup(path: str | Path, cuda_available: bool, lr_schedule: Optional[str] = None,
               lr_schedule_total_steps: Optional[int] = None,
               precision: Optional[str] = None) -> TrainingSetup:
    """ds_config.load_training_setup with the two options applied; `original` stays the file."""
    source = str(path)
    values = read_json(path)
    setup = build_training_setup(with_precision(values, precision, source), source, cuda_available)
    setup.original = values
    if lr_schedule is not None:
        setup.lr_schedule = bing_bert_schedule(setup, lr_schedule, lr_schedule_total_steps)
    elif lr_schedule_total_steps is not None:
        raise ConfigError("--lr_schedule_total_steps only applies with --lr_schedule bing_bert")
    return setup


def with_precision(values: dict, precision: Optional[str], source: str) -> dict:
    """`values` with its precision blocks replaced by `precision` (None: unchanged)."""
    if precision is None:
        return values
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {list(PRECISIONS)}, got {precision!r}")
    changed = {key: value for key, value in values.items() if key not in PRECISION_KEYS}
    if precision == "bf16":
        changed["bf16"] = {"enabled": True}
    return changed


def bing_bert_schedule(setup: TrainingSetup, name: str,
                       total_steps: Optional[int] = None) -> LRScheduleSpec:
    if name not in LR_SCHEDULES:
        raise ConfigError(f"--lr_schedule must be one of {list(LR_SCHEDULES)}, got {name!r}")
    existing = setup.lr_schedule.name if setup.lr_schedule else \
        setup.deepspeed.get("scheduler", {}).get("type")
    if existing is not None:
        raise ConfigError(f"--lr_schedule {name}: {setup.source} already has a scheduler block "
                          f"({existing}); the LR schedule has one home: remove the option or the block")
    if total_steps is not None and (isinstance(total_steps, bool) or total_steps <= 0):
        raise ConfigError(f"--lr_schedule_total_steps must be a positive integer, got {total_steps!r}")
    params = dict(BING_BERT_SCHEDULE)
    if total_steps is not None:
        params["total_steps"] = total_steps
    return LRScheduleSpec(name="WarmupExpDecay", params=params)
