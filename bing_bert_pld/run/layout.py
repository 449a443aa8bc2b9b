"""Where everything in a run directory lives: file names, checkpoint tags and the `latest` pointer.

A run directory (the trainer's --output_dir):
    run_config.json             the resolved configuration of the latest launch (run.config)
    vocab.txt                   the vocabulary the shards were made with, copied in (run.config)
    metrics.jsonl, tensorboard/ the logged scalars (metrics_log, names in run.metric_names)
    rank_pids/                  the ranks of a live launch, for launch/stop.sh (stop_signal)
    checkpoints/                one directory per checkpoint, and `latest` (run.checkpoint):
        <tag>/                  tag global_step<N> (global_step<N>.<k> when that name is taken,
                                e.g. by a damaged checkpoint a resume fell back from)
        <tag>/mp_rank_00_model_states.pt, *_optim_states.pt
                                DeepSpeed's files (model, optimizer, LR scheduler, step counters)
        <tag>/rank<R>_state.pt  per rank: data-loader position and RNG states, as tensors, ints
                                and lists only (loads with torch.load(weights_only=True))
        <tag>/trainer_state.json step, samples, elapsed time and each stateful component's state
        <tag>/run_config.json   the resolved configuration the checkpoint was written under
        <tag>/vocab.txt         the vocabulary (checkpoints from before issue 13 lack it)
        <tag>/manifest.json     written last: byte count and sha256 of every other file
        latest                  names the tag resume uses
        .saving-<tag>-<id>/     a save in progress or killed; never read, removed by the next
                                successful save

Nothing outside the run package spells these names: everyone else asks RunDir.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
METRICS = "metrics.jsonl"
RANK_PIDS = "rank_pids"
VOCAB = "vocab.txt"
LATEST = "latest"
RUN_CONFIG = "run_config.json"
TRAINER_STATE = "trainer_state.json"
MANIFEST = "manifest.json"
SAVING_PREFIX = ".saving-"
TAG_RE = re.compile(r"^global_step(\d+)(?:\.(\d+))?$")
MODEL_STATES = "mp_rank_00_model_states.pt"
MODEL_STATES_GLOB = "*model_states.pt"
ZERO_OPTIM_GLOB = "*zero_pp_rank_*_optim_states.pt"


class CheckpointError(ValueError):
    """A checkpoint cannot be found, verified or safely read; the message names the path."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file holds pickled objects other than tensors and plain data."""


@dataclass(frozen=True)
class RunDir:
    """The paths of one run directory; nothing is created or read by building one."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def rank_pids(self) -> Path:
        return self.root / RANK_PIDS

    @property
    def vocab(self) -> Path:
        return self.root / VOCAB

    @property
    def run_config(self) -> Path:
        return self.root / RUN_CONFIG


def rank_state_name(rank: int) -> str:
    return f"rank{rank}_state.pt"


def tag_order(name: str) -> Optional[tuple[int, int]]:
    """(step, k) of a tag name, for sorting; None for anything that is not a tag."""
    match = TAG_RE.match(name)
    return (int(match.group(1)), int(match.group(2) or 1)) if match else None


def published_tags(root: Path) -> list[str]:
    """Tag directories in a checkpoints root, newest first (by step, then by later save)."""
    if not root.is_dir():
        return []
    tags = [p.name for p in root.iterdir() if p.is_dir() and tag_order(p.name) is not None]
    return sorted(tags, key=tag_order, reverse=True)


def free_tag(root: Path, step: int) -> str:
    tag, k = f"global_step{step}", 1
    while os.path.lexists(root / tag):  # never reuse a name, whole or damaged
        k += 1
        tag = f"global_step{step}.{k}"
    return tag


def read_latest(root: Path) -> tuple[Optional[str], Optional[str]]:
    """(tag, None), (None, what is wrong with `latest`), or (None, None) without one."""
    marker = root / LATEST
    if not os.path.lexists(marker):
        return None, None
    try:
        text = marker.read_text().strip()
    except (OSError, UnicodeDecodeError) as err:
        return None, f"{marker} is unreadable ({err})"
    if not text:
        return None, f"{marker} is empty"
    if "/" in text or "\\" in text or "\0" in text or text.startswith("."):
        return None, f"{marker} names {text!r}, which is not a tag directory inside {root}"
    directory = root / text
    if not directory.is_dir():
        return None, f"{marker} names {text!r}, which does not exist in {root}"
    if directory.is_symlink() or directory.resolve().parent != root.resolve():
        return None, f"{marker} names {text!r}, which leads outside {root}"
    return text, None


def latest_tag(root: Path) -> Optional[str]:
    return read_latest(root)[0]
