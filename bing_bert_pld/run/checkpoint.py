"""Checkpoints: published only when whole, verified before use, loaded without running pickled code.

The layout is run.layout's. Publication: every rank writes into a new `.saving-*`
directory and hashes what it wrote (while the bytes are still in the page cache), the
digests are gathered to rank 0, which writes the JSON files and the manifest, renames the
directory to its tag, and then replaces `latest` (temporary file, fsync, rename). A kill
at any moment leaves `latest` naming a whole checkpoint, and a tag that `latest` names is
never written again.

Resume (`find_resumable`): the checkpoint `latest` names is verified first (every file the
manifest lists present, of its size and sha256, every .pt file readable weights-only); when
it is damaged, or `latest` is missing or names anything but a tag directory inside the
root, the newest whole checkpoint is used instead, with one logged line saying why.
Checkpoints written before manifests existed are checked by their files' zip CRCs.

Safe loading is run.safe_load's; DeepSpeed's own loads go through `_VerifiedWriter`, which
replaces its checkpoint engine's `torch.load`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist

from .files import atomic_write_text, file_digest, fsync_dir, read_json_object, write_synced
from .layout import (LATEST, MANIFEST, MODEL_STATES_GLOB, RUN_CONFIG, SAVING_PREFIX, TRAINER_STATE, VOCAB,
                     CheckpointError, UnsafeCheckpointError, free_tag, published_tags, rank_state_name,
                     read_latest)
from .safe_load import safe_load

__all__ = ["CheckpointError", "UnsafeCheckpointError", "Resumable", "find_resumable", "load",
           "load_weights_only", "preload_all", "read_rank_state", "resolve_checkpoint",
           "restore_rng_state", "rng_state", "safe_load", "save", "verify"]

MANIFEST_FORMAT = 1
RANK_STATE_FORMAT = 2  # 1 (no "format" key): numpy/python RNG states pickled as objects

# Test hook, not an interface: "STEP:SIGNAL[,STEP:SIGNAL...]" (e.g. "4:USR1,4:KILL"). Each
# rank sends itself SIGNAL once its files of a save of optimizer step STEP are written and
# hashed, before anything is published; a step's items go to its saves in order (the
# first save of step 4 gets USR1, a second one KILL). tests/test_checkpoint_faults.py
# uses it to stop a real run exactly on a checkpoint step and to kill it mid-save.
FAULT_ENV = "BBP_TEST_FAULT_IN_SAVE"
_saves_of_step: dict[int, int] = {}


class _VerifiedWriter:
    """DeepSpeed's checkpoint engine with its loads made weights-only and its saves hashed.

    DeepSpeed reads and writes every checkpoint file through `engine.checkpoint_engine`;
    this wrapper delegates everything else to the engine it replaces."""

    def __init__(self, inner):
        self.inner = inner
        self.written: dict[str, dict] = {}  # path -> {"bytes", "sha256"} since the last reset

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def save(self, state_dict, path: str) -> None:
        self.inner.save(state_dict, path)
        self.written[str(path)] = file_digest(Path(path), sync=True)

    def load(self, path: str, map_location=None):
        return safe_load(Path(path), map_location)


def _verified_writer(engine) -> _VerifiedWriter:
    current = engine.checkpoint_engine
    if not isinstance(current, _VerifiedWriter):
        if current.is_decoupled():
            raise CheckpointError(
                f"DeepSpeed's checkpoint writer {type(current).__name__} writes in the "
                "background; a checkpoint could be published before it is whole. Remove the "
                "'checkpoint' writer setting from the DeepSpeed JSON.")
        current = engine.checkpoint_engine = _VerifiedWriter(current)
    return current

# ------------------------------------------------------------------ rank state

def rng_state() -> dict:
    """Every RNG a rank uses, as tensors, ints and lists (weights-only loadable)."""
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
            "python": {"version": version, "state": list(internal), "gauss_next": gauss_next}}


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state, python_state = state["numpy"], state["python"]
    if isinstance(numpy_state, dict):
        np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32),
                             numpy_state["pos"], numpy_state["has_gauss"],
                             numpy_state["cached_gaussian"]))
        random.setstate((python_state["version"], tuple(python_state["state"]),
                         python_state["gauss_next"]))
    else:  # format 1: the objects np.random.get_state() and random.getstate() return
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def read_rank_state(directory: Path, rank: int) -> dict:
    legacy = not (directory / MANIFEST).is_file()
    return safe_load(directory / rank_state_name(rank), legacy_rank_state=legacy)

# ------------------------------------------------------------------ save

def save(engine, root: Path, step: int, trainer_state: dict, rank_state: dict,
         run_config: dict, vocab: Optional[Path] = None) -> Path:
    """Collective: every rank calls it. Returns the published checkpoint directory, which
    holds a copy of `vocab` (rank 0's file) when one is given."""
    writer = _verified_writer(engine)
    rank, world = dist.get_rank(), dist.get_world_size()
    names: list = [None, None]
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        tag = free_tag(root, step)
        names = [tag, f"{SAVING_PREFIX}{tag}-{uuid.uuid4().hex[:8]}"]
    dist.broadcast_object_list(names, src=0)
    tag, saving = names
    staging = root / saving

    writer.written.clear()
    engine.save_checkpoint(str(root), tag=saving, save_latest=False)
    failure: Optional[BaseException] = None
    files: dict[str, dict] = {}
    try:
        rank_file = staging / rank_state_name(rank)
        torch.save(rank_state, rank_file)
        files = {Path(p).relative_to(staging).as_posix(): d for p, d in writer.written.items()}
        files[rank_file.name] = file_digest(rank_file, sync=True)
        _test_fault(step)
    except Exception as err:  # told to every rank below, so that none publishes
        failure = err
    reports: list = [None] * world
    dist.all_gather_object(reports, {"files": files,
                                     "error": None if failure is None else f"{type(failure).__name__}: {failure}"})
    if failure is not None:
        raise failure
    failed = [(r, report["error"]) for r, report in enumerate(reports) if report["error"]]
    if failed:
        raise CheckpointError(f"checkpoint {tag} not saved: rank {failed[0][0]}: {failed[0][1]}")

    outcome: list = [None]
    if rank == 0:
        try:
            merged = {name: d for report in reports for name, d in report["files"].items()}
            _publish(root, staging, tag, merged, step, world, trainer_state, run_config, vocab)
        except OSError as err:
            outcome = [f"{type(err).__name__}: {err}"]
    dist.broadcast_object_list(outcome, src=0)
    if outcome[0] is not None:
        raise CheckpointError(f"checkpoint {tag} not published: {outcome[0]}")
    return root / tag


def _publish(root: Path, staging: Path, tag: str, files: dict[str, dict], step: int,
             world: int, trainer_state: dict, run_config: dict, vocab: Optional[Path]) -> None:
    if vocab is not None:
        shutil.copyfile(vocab, staging / VOCAB)  # hashed with the other unsaved files below
    files[TRAINER_STATE] = write_synced(staging / TRAINER_STATE, json.dumps(trainer_state, indent=2))
    files[RUN_CONFIG] = write_synced(staging / RUN_CONFIG,
                                      json.dumps(run_config, indent=2, default=str))
    for path in sorted(staging.rglob("*")):  # e.g. DeepSpeed's zero_to_fp32.py, copied, not saved
        name = path.relative_to(staging).as_posix()
        if path.is_file() and name not in files:
            files[name] = file_digest(path, sync=True)
    manifest = {"format": MANIFEST_FORMAT, "tag": tag, "step": step, "world_size": world,
                "files": dict(sorted(files.items()))}
    write_synced(staging / MANIFEST, json.dumps(manifest, indent=2))
    fsync_dir(staging)
    os.rename(staging, root / tag)  # the tag appears whole, or not at all
    fsync_dir(root)
    atomic_write_text(root / LATEST, tag)
    for leftover in root.glob(SAVING_PREFIX + "*"):  # saves killed before they were published
        shutil.rmtree(leftover, ignore_errors=True)


def _test_fault(step: int) -> None:
    items = [item.partition(":") for item in os.environ.get(FAULT_ENV, "").split(",") if item]
    mine = [name for at, _, name in items if int(at) == step]
    nth = _saves_of_step[step] = _saves_of_step.get(step, 0) + 1
    if nth <= len(mine):
        os.kill(os.getpid(), signal.Signals["SIG" + mine[nth - 1].upper()])


# ------------------------------------------------------------------ verification

def verify(directory: Path, rank: int = 0, world: int = 1) -> Optional[str]:
    """What is wrong with a checkpoint directory, or None when it is whole.

    The cheap checks (files present, sizes, JSON) run on every rank; the reads (sha256, a
    weights-only load of each .pt file) are split: this rank reads files[rank::world]."""
    if not directory.is_dir():
        return "the directory does not exist"
    if (directory / MANIFEST).is_file():
        return _verify_with_manifest(directory, rank, world)
    return _verify_legacy(directory, rank, world)


def _check_trainer_state(directory: Path) -> tuple[Optional[dict], Optional[str]]:
    state, problem = read_json_object(directory / TRAINER_STATE)
    if problem:
        return None, problem
    missing = [key for key in ("step", "samples", "elapsed_s") if not isinstance(state.get(key), (int, float))]
    if missing:
        return None, f"{TRAINER_STATE} has no number for {', '.join(missing)}"
    return state, None


def _expected_names(world: int) -> list[str]:
    return [TRAINER_STATE, RUN_CONFIG] + [rank_state_name(r) for r in range(world)]


def _verify_with_manifest(directory: Path, rank: int, world: int) -> Optional[str]:
    manifest, problem = read_json_object(directory / MANIFEST)
    if problem:
        return problem
    files, ranks = manifest.get("files"), manifest.get("world_size")
    if manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict) \
            or not isinstance(ranks, int) or ranks < 1:
        return f"{MANIFEST} is not a format-{MANIFEST_FORMAT} manifest"
    for name in _expected_names(ranks):
        if name not in files:
            return f"{MANIFEST} does not list {name}"
    if not any(Path(name).match(MODEL_STATES_GLOB) for name in files):
        return f"{MANIFEST} lists no DeepSpeed model states ({MODEL_STATES_GLOB})"
    for name, recorded in files.items():
        path = directory / name
        if not isinstance(recorded, dict):
            return f"{MANIFEST} has no size and sha256 for {name}"
        if Path(name).is_absolute() or ".." in Path(name).parts:
            return f"{MANIFEST} lists {name!r}, outside the checkpoint"
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size == 0 or size != recorded.get("bytes"):
            return f"{name} has {size} bytes, the manifest records {recorded.get('bytes')}"
    _, problem = _check_trainer_state(directory)
    if problem:
        return problem
    for name in sorted(files)[rank::world]:
        if file_digest(directory / name)["sha256"] != files[name].get("sha256"):
            return f"{name} does not match the sha256 recorded when it was saved"
        if name.endswith(".pt"):
            problem = _try_load(directory / name, legacy_rank_state=False)
            if problem:
                return problem
    return None


def _verify_legacy(directory: Path, rank: int, world: int) -> Optional[str]:
    """A checkpoint from before manifests: files present, JSON readable, zip CRCs intact."""
    state, problem = _check_trainer_state(directory)
    if problem:
        return problem
    _, problem = read_json_object(directory / RUN_CONFIG)
    if problem:
        return problem
    for name in _expected_names(int(state.get("world_size", 1))):
        if not (directory / name).is_file():
            return f"{name} is missing"
    pt_files = sorted(p for p in directory.rglob("*.pt"))
    if not any(p.match(MODEL_STATES_GLOB) for p in pt_files):
        return f"no DeepSpeed model states ({MODEL_STATES_GLOB})"
    for path in pt_files:
        if path.stat().st_size == 0:
            return f"{path.name} is empty"
    for path in pt_files[rank::world]:
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()  # reads every member and checks its CRC-32
        except (OSError, zipfile.BadZipFile) as err:
            return f"{path.name} is not a whole torch file ({err})"
        if bad is not None:
            return f"{path.name}: {bad} does not match its CRC (damaged after it was written)"
        problem = _try_load(path, legacy_rank_state=path.name.startswith("rank"))
        if problem:
            return problem
    return None


def _try_load(path: Path, legacy_rank_state: bool) -> Optional[str]:
    """A weights-only load, memory-mapped (the tensors are not read): proves the file is
    safe to hand to DeepSpeed before DeepSpeed opens it."""
    try:
        safe_load(path, mmap=True, legacy_rank_state=legacy_rank_state)
    except CheckpointError as err:
        return str(err).replace(f"{path}: ", f"{path.name}: ", 1)
    return None


# ------------------------------------------------------------------ resume

@dataclass
class Resumable:
    directory: Path
    trainer_state: dict
    run_config: dict
    note: Optional[str] = None  # one line to log: why this is not the checkpoint `latest` names


def find_resumable(root: Path) -> Optional[Resumable]:
    """Collective. The checkpoint to resume from: `latest` when whole, else the newest whole
    one. None when the root holds no checkpoint at all; CheckpointError when none is whole."""
    rank, world = dist.get_rank(), dist.get_world_size()
    plan: list = [None]
    if rank == 0:
        latest, latest_problem = read_latest(root)
        others = [t for t in published_tags(root) if t != latest]
        plan = [(latest, latest_problem, ([latest] if latest else []) + others)]
    dist.broadcast_object_list(plan, src=0)
    latest, latest_problem, candidates = plan[0]
    if latest is None and latest_problem is None and not candidates:
        return None

    skipped = [] if latest_problem is None else [latest_problem]
    if latest is None and latest_problem is None:
        skipped.append(f"{root / LATEST} is missing")
    for tag in candidates:
        directory = root / tag
        problems: list = [None] * world
        dist.all_gather_object(problems, verify(directory, rank, world))
        problem = next((p for p in problems if p), None)
        if problem is None:
            trainer_state, _ = _check_trainer_state(directory)
            run_config, _ = read_json_object(directory / RUN_CONFIG)
            note = None
            if skipped:
                note = (f"not resuming from the checkpoint `latest` names: {'; '.join(skipped)}. "
                        f"Resuming from {directory}, the newest whole checkpoint.")
            return Resumable(directory, trainer_state, run_config or {}, note)
        skipped.append(f"{directory} is damaged: {problem}")
    raise CheckpointError(f"no whole checkpoint to resume from in {root}: {'; '.join(skipped)}. "
                          "Move the damaged checkpoints away to start over, or pass --resume none.")


def load(engine, found: Resumable, load_optimizer_states: bool = True) -> dict:
    """Restore the engine from a verified checkpoint; returns this rank's rank state."""
    _verified_writer(engine)
    directory = found.directory
    load_path, _ = engine.load_checkpoint(str(directory.parent), tag=directory.name,
                                          load_optimizer_states=load_optimizer_states)
    if load_path is None:
        raise CheckpointError(f"DeepSpeed could not load checkpoint {directory}")
    return read_rank_state(directory, dist.get_rank())


# ------------------------------------------------------------------ reading elsewhere

def resolve_checkpoint(path: Path) -> Path:
    """An output dir, a checkpoints root or a tag dir -> the tag dir, checked to be whole
    (for --init_from, export and fine-tuning: no fallback, the caller named this one)."""
    path = Path(path)
    for root in (path, path / "checkpoints"):
        if os.path.lexists(root / LATEST):
            tag, problem = read_latest(root)
            if problem:
                raise CheckpointError(problem)
            directory = root / tag
            break
    else:
        if (path / RUN_CONFIG).is_file() or any(path.glob(MODEL_STATES_GLOB)):
            directory = path
        else:
            raise CheckpointError(
                f"{path}: no DeepSpeed checkpoint here: expected a '{LATEST}' file (checkpoint root), "
                f"'checkpoints/{LATEST}' (output dir), or a tag directory with {RUN_CONFIG} and "
                f"{MODEL_STATES_GLOB}")
    if (directory / MANIFEST).is_file():
        problem = _verify_with_manifest(directory, 0, 1)
        if problem:
            raise CheckpointError(f"checkpoint {directory} cannot be used: {problem}")
    return directory


def preload_all(directory: Path) -> None:
    """Weights-only pre-load of every .pt file, before DeepSpeed code that calls
    torch.load(weights_only=False) itself (zero_to_fp32) opens any of them."""
    legacy = not (directory / MANIFEST).is_file()
    for path in sorted(directory.rglob("*.pt")):
        safe_load(path, mmap=True, legacy_rank_state=legacy and path.name.startswith("rank"))


def load_weights_only(engine, checkpoint: Path, keep_optimizer: bool) -> dict[str, Any]:
    """Start from another run's checkpoint (phase 2 from phase 1).

    `checkpoint` is an output dir or checkpoints root (its `latest` is used) or a tag
    directory. With keep_optimizer the optimizer, LR schedule and step counter carry over.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise CheckpointError(f"--init_from {checkpoint}: no such checkpoint directory")
    directory = resolve_checkpoint(checkpoint)
    preload_all(directory)
    _verified_writer(engine)
    load_path, _ = engine.load_checkpoint(
        str(directory.parent), tag=directory.name, load_module_strict=True,
        load_optimizer_states=keep_optimizer, load_lr_scheduler_states=keep_optimizer,
        load_module_only=not keep_optimizer)
    if load_path is None:
        raise CheckpointError(f"--init_from {directory}: DeepSpeed found no checkpoint")
    state, _ = read_json_object(directory / TRAINER_STATE)
    return state or {}
