"""Checkpoints that resume exactly and are never picked up half-written.

Layout of `<output_dir>/checkpoints/`:
    <tag>/                      DeepSpeed's files (model, optimizer, LR scheduler, step counters)
    <tag>/rank<R>_state.pt      per rank: data-loader position and RNG states (torch, numpy, python)
    <tag>/trainer_state.json    readable: step, samples, elapsed time, theta, PLD gate counts
    <tag>/run_config.json       the resolved configuration of the run (model, DeepSpeed, command line)
    latest                      the tag resume uses; replaced atomically, only once every
                                rank has finished writing, so a crash mid-save leaves the
                                previous checkpoint as the one picked.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist

LATEST = "latest"
RUN_CONFIG = "run_config.json"
TRAINER_STATE = "trainer_state.json"


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def latest_tag(root: Path) -> Optional[str]:
    marker = root / LATEST
    return marker.read_text().strip() if marker.is_file() else None


def save(engine, root: Path, tag: str, trainer_state: dict, rank_state: dict,
         run_config: dict) -> Path:
    """Collective: every rank calls it. Returns the checkpoint directory."""
    root.mkdir(parents=True, exist_ok=True)
    engine.save_checkpoint(str(root), tag=tag, save_latest=False)
    directory = root / tag
    rank = dist.get_rank()
    torch.save(rank_state, directory / f"rank{rank}_state.pt")
    dist.barrier()  # every rank's files are on disk before the tag becomes the latest
    if rank == 0:
        atomic_write_text(directory / TRAINER_STATE, json.dumps(trainer_state, indent=2))
        atomic_write_text(directory / RUN_CONFIG, json.dumps(run_config, indent=2, default=str))
        atomic_write_text(root / LATEST, tag)
    dist.barrier()
    return directory


def load(engine, root: Path, tag: str) -> tuple[dict, dict]:
    """Restore engine state; return (trainer_state, this rank's rank_state)."""
    directory = root / tag
    rank = dist.get_rank()
    rank_file = directory / f"rank{rank}_state.pt"
    state_file = directory / TRAINER_STATE
    for needed in (rank_file, state_file):
        if not needed.is_file():
            raise FileNotFoundError(
                f"checkpoint {directory} has no {needed.name}: it was written by a different "
                f"number of ranks or not by this trainer")
    load_path, _ = engine.load_checkpoint(str(root), tag=tag)
    if load_path is None:
        raise FileNotFoundError(f"DeepSpeed could not load checkpoint {directory}")
    rank_state = torch.load(rank_file, weights_only=False)
    return json.loads(state_file.read_text()), rank_state


def load_weights_only(engine, checkpoint: Path, keep_optimizer: bool) -> dict[str, Any]:
    """Start from another run's checkpoint (phase 2 from phase 1).

    `checkpoint` is a checkpoints root (its `latest` is used) or a tag directory.
    With keep_optimizer the optimizer, LR schedule and step counter carry over.
    """
    checkpoint = Path(checkpoint)
    if (checkpoint / LATEST).is_file():
        root, tag = checkpoint, latest_tag(checkpoint)
    elif checkpoint.is_dir():
        root, tag = checkpoint.parent, checkpoint.name
    else:
        raise FileNotFoundError(f"--init_from {checkpoint}: no such checkpoint directory")
    load_path, _ = engine.load_checkpoint(
        str(root), tag=tag, load_module_strict=True,
        load_optimizer_states=keep_optimizer, load_lr_scheduler_states=keep_optimizer,
        load_module_only=not keep_optimizer)
    if load_path is None:
        raise FileNotFoundError(f"--init_from {root / tag}: DeepSpeed found no checkpoint")
    state_file = root / tag / TRAINER_STATE
    return json.loads(state_file.read_text()) if state_file.is_file() else {}
