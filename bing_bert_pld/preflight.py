"""Everything a launch checks before the engine exists: configs, data, vocabulary, resume point.

A refusal here costs seconds, not an engine build. The sequence length, the masked
positions per sequence, the vocabulary's sha256 and its lowercasing are facts of the
shards (their manifest, else their shapes): the command line may state them as checks,
and need not. Every rank runs this; the checks that read files share their verdicts, so
all ranks stop with the same error.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import torch
import torch.distributed as dist

from . import resume_config, run_options
from .config import BertConfig, ConfigError
from .ds_config import TrainingSetup, check_sequence_fits, check_setup_against_model, resolve_batch_sizes
from .ds_validation import missing_lr_schedule_warning
from .engine import init_distributed
from .metrics_log import LOG, setup_console_logging
from .run import checkpoint
from .run.config import data_facts, find_vocab, keep_vocab_copy
from .run.files import sha256_of
from .run.layout import RUN_CONFIG, RunDir
from .shard_validation import DataError, ShardSetInfo, scan_values, validate_shard_set

T = TypeVar("T")


@dataclass
class LaunchPlan:
    """What the trainer builds from: checked configurations, data, vocabulary, resume point."""

    args: Any  # train.RunArgs, with max_steps from the LR schedule when no stopping rule was given
    run_dir: RunDir
    model_config: BertConfig
    setup: TrainingSetup
    rank: int
    world_size: int
    train_set: ShardSetInfo
    val_set: Optional[ShardSetInfo]
    vocab_file: Optional[Path]  # the run directory's copy
    run_config: dict  # recorded with every checkpoint, compared on resume
    resume: Optional[resume_config.ResumePlan]

    @property
    def seq_len(self) -> int:
        return self.train_set.seq_len

    @property
    def max_pred(self) -> int:
        return self.train_set.max_pred


def check(args) -> LaunchPlan:
    """args: train.RunArgs. Raises ConfigError / DataError with one line to print."""
    run_dir = RunDir(Path(args.output_dir))
    model_config = BertConfig.from_json(args.model_config)
    cuda = torch.cuda.is_available()
    setup = run_options.load_setup(args.deepspeed_config, cuda, args.lr_schedule,
                                   args.lr_schedule_total_steps, args.precision)
    check_setup_against_model(setup, model_config, args.model_config, args.max_seq_length,
                              fp16_on_this_cpu=not cuda)
    init_distributed()
    rank, world_size = dist.get_rank(), dist.get_world_size()
    setup_console_logging(rank)
    if warning := missing_lr_schedule_warning(setup):
        LOG.info("warning: %s", warning)  # INFO: rank 0's level, so one line per run
    batch = resolve_batch_sizes(setup.deepspeed, world_size, args.deepspeed_config)
    args = _with_stopping_rule(args, setup)

    train_set = _validate_on_all_ranks(args.train_dir, "train", args.max_seq_length,
                                       args.max_predictions_per_seq, model_config, rank, world_size,
                                       given_by="the command line")
    if args.max_seq_length is None:  # a given one is checked above, and equals the shards'
        check_sequence_fits(model_config, train_set.seq_len, f"the shards' seq_len ({args.train_dir})")
    val_set = None
    if args.val_dir:
        val_set = _validate_on_all_ranks(args.val_dir, "validation", train_set.seq_len,
                                         train_set.max_pred, model_config, rank, world_size,
                                         given_by=f"the training shards ({args.train_dir})")
    vocab, vocab_sha256 = _on_every_rank(lambda: _checked_vocab(args, train_set, run_dir), world_size)

    run_config = {"model_config": model_config.to_dict(), "run": dataclasses.asdict(args),
                  "deepspeed_setup": setup.summary(), "world_size": world_size, "batch": batch,
                  "vocab_file": vocab.name if vocab else None,
                  "vocab_sha256": vocab_sha256,
                  "data": data_facts(train_set)}
    resume = _resume_plan(args, run_dir, run_config)
    if vocab is not None:  # only once the launch is accepted: a refused one changes nothing
        vocab = _copy_vocab_into_run(vocab, run_dir, rank)
    return LaunchPlan(args, run_dir, model_config, setup, rank, world_size, train_set, val_set,
                      vocab, run_config, resume)


def schedule_total_steps(setup: TrainingSetup) -> Optional[int]:
    """Where the LR schedule ends: ours (total_steps) or DeepSpeed's (total_num_steps);
    None for a schedule without an end (WarmupLR) or without a schedule."""
    if setup.lr_schedule is not None:
        total = setup.lr_schedule.params.get("total_steps")
    else:
        params = (setup.deepspeed.get("scheduler") or {}).get("params") or {}
        total = params.get("total_num_steps", params.get("total_steps"))
    return total if isinstance(total, int) and not isinstance(total, bool) and total > 0 else None


def _with_stopping_rule(args, setup: TrainingSetup):
    """A run given no stopping rule ends where its LR schedule does (BERT pretraining's
    usual length); one whose schedule has no end is refused before it starts."""
    if args.max_steps is not None or args.max_samples is not None or args.max_time_minutes is not None:
        return args
    total = schedule_total_steps(setup)
    if total is None:
        raise ConfigError(f"no stopping rule: give --max_steps, --max_samples or --max_time_minutes "
                          f"({setup.source} has no LR schedule with total steps to stop at)")
    LOG.info("stopping rule: %d steps, where the LR schedule of %s ends (no --max_steps, "
             "--max_samples or --max_time_minutes given)", total, setup.source)
    return dataclasses.replace(args, max_steps=total)


def _validate_on_all_ranks(path: str, split: str, seq_len: Optional[int], max_pred: Optional[int],
                           model_config: BertConfig, rank: int, world_size: int,
                           given_by: str) -> ShardSetInfo:
    """Structure on every rank (cheap); the value scan split across ranks (it reads every
    id once)."""
    def check() -> ShardSetInfo:
        try:
            info = validate_shard_set(path, seq_len, max_pred, model_config.vocab_size,
                                      check_values=False, given_by=given_by)
            scan_values(info, info.files[rank::world_size])
        except DataError as err:
            raise DataError(f"{split} data: {err}") from None
        return info

    return _on_every_rank(check, world_size)


def _on_every_rank(check: Callable[[], T], world_size: int) -> T:
    """check() on every rank, its refusal shared: every rank raises the first rank's
    error (ConfigError or DataError), so none is left waiting in a collective when only
    some of them see a problem (a rank-local file system)."""
    result, error = None, None
    try:
        result = check()
    except (ConfigError, DataError) as err:
        error = (type(err).__name__, str(err))
    errors: list = [None] * world_size
    dist.all_gather_object(errors, error)
    found = next((e for e in errors if e is not None), None)
    if found is not None:
        raise (DataError if found[0] == "DataError" else ConfigError)(found[1])
    return result


def _checked_vocab(args, train_set: ShardSetInfo, run_dir: RunDir) -> tuple[Optional[Path], Optional[str]]:
    """--vocab_file, or data_prep's vocab.txt beside the shards, or the run's own copy;
    checked against the manifest's vocab_sha256."""
    given = Path(args.vocab_file) if args.vocab_file is not None else None
    if given is not None and not given.is_file():
        raise ConfigError(f"--vocab_file {given} does not exist")
    vocab, found_as = find_vocab(given, train_set.manifest_dir, Path(args.train_dir), run_dir)
    if vocab is None:
        return None, None
    try:
        digest = sha256_of(vocab)
    except OSError as err:
        raise ConfigError(f"{found_as} {vocab} cannot be read: {err.strerror or err}") from None
    recorded = train_set.vocab_sha256
    if recorded and recorded != digest:
        raise ConfigError(f"{found_as} {vocab} is not the vocabulary the shards were made "
                          f"with (their manifest's vocab_sha256 is {recorded})")
    return vocab, digest


def _copy_vocab_into_run(vocab: Path, run_dir: RunDir, rank: int) -> Path:
    """Rank 0 copies the vocabulary into the run directory, so that export and fine-tuning
    tokenize as pretraining did wherever the run goes; its outcome is shared, so that a
    failed copy stops every rank with the same line instead of leaving the others waiting."""
    outcome: list = [None]
    if rank == 0:
        try:
            keep_vocab_copy(vocab, run_dir)
        except OSError as err:
            outcome = [f"cannot copy the vocabulary {vocab} into {run_dir.vocab}: {err.strerror or err}"]
    dist.broadcast_object_list(outcome, src=0)
    if outcome[0] is not None:
        raise ConfigError(outcome[0])
    return run_dir.vocab


def _resume_plan(args, run_dir: RunDir, run_config: dict) -> Optional[resume_config.ResumePlan]:
    """The checkpoint to resume from (the newest whole one, checkpoint.find_resumable)
    and what this launch's configuration changes against it: refused unless
    --allow_config_change allows it, and refused always where it cannot work."""
    if args.resume != "auto":
        return None
    found = checkpoint.find_resumable(run_dir.checkpoints)
    if found is None:
        return None
    if found.note:
        LOG.info("warning: %s", found.note)  # INFO: rank 0's level, so one line per run
    if "data" not in found.run_config:
        LOG.info("note: %s records no data identity (written by an older version): the "
                 "training data is not compared with it", found.directory / RUN_CONFIG)
    changes = resume_config.differences(found.run_config, found.trainer_state, run_config)
    fixed = [d for d in changes if d.fixed_reason]
    if fixed:
        raise ConfigError(
            f"cannot resume from {found.directory}: {resume_config.listing(fixed, True)}. "
            f"Resume with the checkpoint's settings, or start a new run from its weights "
            f"with --init_from {found.directory}")
    if changes and not args.allow_config_change:
        raise ConfigError(
            f"cannot resume from {found.directory}: the configuration differs from the "
            f"checkpoint's: {resume_config.listing(changes)}. Resume with the checkpoint's "
            "configuration, or pass --allow_config_change to continue with the new one "
            "(recorded in trainer_state.json's history)")
    return resume_config.ResumePlan(found, changes)
