"""Pretraining entry point: parse, build, train.

    deepspeed -m bing_bert_pld.train --deepspeed_config ds_configs/<file>.json \
        --model_config bert-base --train_dir DATA/train --val_dir DATA/validation \
        --output_dir runs/NAME [--max_steps N | --max_samples N | --max_time_minutes M]
    python -m bing_bert_pld.train ...   (one process)

The same command runs on GPUs (NCCL) and on CPU ranks (gloo). Settings have one home
each (see bing_bert_pld/ds_config.py): the command line owns the run, the DeepSpeed JSON
the batch/optimizer/precision/PLD, the model JSON the architecture.
"""

from __future__ import annotations

if __name__ == "__main__":
    # A rank started by a launcher: catch stop signals before the imports below, which
    # take seconds (SIGUSR1's default action would end the rank without a checkpoint).
    from bing_bert_pld import stop_signal

    stop_signal.install()

import argparse
import dataclasses
import functools
import hashlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator

from . import cli, flops, resume_config, run_options, stop_signal
from .run import checkpoint
from .config import BertConfig, ConfigError
from .divergence import EXIT_CODE as NON_FINITE_EXIT_CODE, NonFiniteError, StepLossCheck, \
    require_finite_weights
from .ds_validation import missing_lr_schedule_warning
from .data import PretrainingDataLoader
from .shard_validation import DataError, scan_values, validate_shard_set
from .ds_config import check_setup_against_model, resolve_batch_sizes
from .engine import PLDHook, init_distributed, initialize_engine
from .metrics_log import LOG, make_sink, setup_console_logging
from .model import BertForPreTraining, compile_layers_separately
from .pld import expected_active_layers
from . import progress
from .run import metric_names as names
from .time_saved import TimeSavedEstimator


LOSS_KEYS = ("loss", "mlm_loss", "nsp_loss")


@dataclass(frozen=True)
class RunArgs:
    """The command line, one flag per field (parse_args): metadata["help"] is the flag's
    help, "metavar" and "choices" go to argparse as they are."""
    deepspeed_config: str = field(metadata={"metavar": "JSON", "help": (
        "DeepSpeed JSON: batch sizes, optimizer, LR schedule, precision, ZeRO and PLD "
        "(ds_configs/README.md)")})
    model_config: str = field(metadata={"metavar": "NAME|JSON", "help": (
        "the architecture: a packaged name (bert-tiny, bert-small, bert-quickstart, bert-base, "
        "bert-base-postln, bert-large) or a model JSON path")})
    train_dir: str = field(metadata={"metavar": "DIR", "help": (
        "training shards: data_prep's OUTPUT/train (or NVIDIA's HDF5 shards), checked before "
        "the engine is built")})
    output_dir: str = field(metadata={"metavar": "DIR", "help": (
        "the run's directory: checkpoints/, tensorboard/, metrics.jsonl, run_config.json; a "
        "new launch with the same directory resumes (--resume)")})
    val_dir: Optional[str] = field(default=None, metadata={"metavar": "DIR", "help": (
        "validation shards (data_prep's OUTPUT/validation); default: no validation")})
    max_seq_length: int = field(default=128, metadata={"metavar": "TOKENS", "help": (
        "tokens per sequence; must equal the shards' (128 for phase 1, 512 for phase 2)")})
    max_predictions_per_seq: int = field(default=20, metadata={"metavar": "N", "help": (
        "masked positions per sequence; must equal the shards' (20 for seq 128, 80 for seq 512)")})
    max_steps: Optional[int] = field(default=None, metadata={"metavar": "STEPS", "help": (
        "stop after this many optimizer steps. At least one of --max_steps, --max_samples, "
        "--max_time_minutes is required; the first one reached stops the run (default: unset)")})
    max_samples: Optional[int] = field(default=None, metadata={"metavar": "SAMPLES", "help": (
        "stop after this many sequences, all ranks together (default: unset)")})
    max_time_minutes: Optional[float] = field(default=None, metadata={"metavar": "MINUTES", "help": (
        "stop after this much wall-clock time in minutes, summed across resumes (default: unset)")})
    seed: int = field(default=42, metadata={"help": (
        "seeds the data order and the PLD gates; torch's RNG (weights, dropout) gets seed + rank")})
    log_interval: int = field(default=10, metadata={"metavar": "STEPS", "help": (
        "optimizer steps between log lines and TensorBoard points")})
    val_interval: int = field(default=500, metadata={"metavar": "STEPS", "help": (
        "optimizer steps between validations (with --val_dir), and one at the end")})
    val_batches: int = field(default=50, metadata={"metavar": "BATCHES", "help": (
        "micro-batches per rank per validation; 0: the whole validation set")})
    checkpoint_interval: int = field(default=1000, metadata={"metavar": "STEPS", "help": (
        "optimizer steps between checkpoints; one is also saved at the end and on a stop signal")})
    resume: str = field(default="auto", metadata={"choices": ("auto", "none"), "help": (
        "auto: continue from the newest whole checkpoint in OUTPUT_DIR/checkpoints, if any; "
        "none: start over")})
    allow_config_change: bool = field(default=False, metadata={"help": (
        "resume although the configuration differs from the checkpoint's (resume_config.py); "
        "the differences are applied and recorded in trainer_state.json's history")})
    init_from: Optional[str] = field(default=None, metadata={"metavar": "CKPT", "help": (
        "start from the weights of another run's checkpoint (phase 2 from phase 1); "
        "default: fresh weights. Ignored when OUTPUT_DIR has a checkpoint to resume")})
    init_keep_optimizer: bool = field(default=False, metadata={"help": (
        "with --init_from, also keep its optimizer state, LR schedule position and sample count")})
    vocab_file: Optional[str] = field(default=None, metadata={"metavar": "PATH", "help": (
        "vocab.txt, checked against the shards' manifest (vocab_sha256) and recorded for "
        "export and fine-tuning; default: TRAIN_DIR/../vocab.txt (where data_prep writes it), "
        "if there is one")})
    prefetch_batches: int = field(default=8, metadata={"metavar": "BATCHES", "help": (
        "micro-batches each rank reads ahead")})
    loader_workers: int = field(default=1, metadata={"metavar": "N", "help": (
        "1: one reader thread per rank; more: that many reader processes per rank (fast GPUs, "
        "gzip shards)")})
    compile_layers: bool = field(default=False, metadata={"help": (
        "torch.compile each encoder layer on its own, so skipped layers stay free (GPU; no "
        "gain on CPU)")})
    # For DeepSpeed JSONs that leave these to the client, as DeepSpeedExamples' (run_options.py).
    lr_schedule: Optional[str] = field(default=None, metadata={
        "choices": run_options.LR_SCHEDULES,
        "help": "bing_bert: DeepSpeedExamples bing_bert's PLD-run schedule for a JSON without a "
                "scheduler block (refused with one): linear warmup over 2%% of 200000 steps to the "
                "JSON's optimizer lr, then x0.99 every 1000 steps; default: the JSON's schedule"})
    lr_schedule_total_steps: Optional[int] = field(default=None, metadata={"metavar": "STEPS",
        "help": "total_steps of --lr_schedule bing_bert (default 200000); warmup is 2%% of it"})
    precision: Optional[str] = field(default=None, metadata={
        "choices": run_options.PRECISIONS,
        "help": "replace the JSON's fp16/bf16 block, e.g. to train a GPU file on CPU ranks "
                "(no fp16 there); default: the JSON's precision"})


def parse_args(argv: Optional[Sequence[str]] = None) -> RunArgs:
    parser = cli.ArgumentParser(
        "bing_bert_pld.train",
        description="Pretrain BERT through DeepSpeed, with Progressive Layer Dropping when the "
                    "DeepSpeed JSON enables it. Several ranks: deepspeed --module "
                    "bing_bert_pld.train ... (launch/ has the scripts).")
    defaults = RunArgs("", "", "", "")
    for f in dataclasses.fields(RunArgs):
        required = f.default is dataclasses.MISSING
        flag = f"--{f.name}"
        if f.type == "bool":
            parser.add_argument(flag, action="store_true", help=f.metadata["help"])
        else:
            kind = {"int": int, "Optional[int]": int, "float": float,
                    "Optional[float]": float}.get(f.type, str)
            parser.add_argument(flag, type=kind, required=required,
                                default=None if required else getattr(defaults, f.name),
                                choices=f.metadata.get("choices"), metavar=f.metadata.get("metavar"),
                                help=f.metadata["help"])
    parser.add_argument("--local_rank", type=int, default=-1,
                        help=argparse.SUPPRESS)  # passed by the deepspeed launcher; LOCAL_RANK rules
    namespace = vars(parser.parse_args(argv))
    namespace.pop("local_rank")
    args = RunArgs(**namespace)
    if args.max_steps is None and args.max_samples is None and args.max_time_minutes is None:
        parser.error("give at least one of --max_steps, --max_samples, --max_time_minutes")
    return args


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Trainer:
    def __init__(self, args: RunArgs):
        self.args = args
        self.output_dir = Path(args.output_dir)
        self.checkpoint_root = self.output_dir / "checkpoints"
        # Everything that can be wrong with the input is checked before the engine exists.
        self.model_config = BertConfig.from_json(args.model_config)
        cuda = torch.cuda.is_available()
        self.setup = run_options.load_setup(args.deepspeed_config, cuda, args.lr_schedule,
                                            args.lr_schedule_total_steps, args.precision)
        check_setup_against_model(self.setup, self.model_config, args.model_config,
                                  args.max_seq_length, fp16_on_this_cpu=not cuda)
        init_distributed()
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        setup_console_logging(self.rank)
        if warning := missing_lr_schedule_warning(self.setup):
            LOG.info("warning: %s", warning)  # INFO: rank 0's level, so one line per run
        resolve_batch_sizes(self.setup.deepspeed, self.world_size, args.deepspeed_config)
        self.train_set = self._validate_data(args.train_dir, "train")
        self.val_set = self._validate_data(args.val_dir, "validation") if args.val_dir else None
        self._check_vocab()
        self.resume_plan = self._check_resumable()  # before the engine: a refusal costs nothing

        torch.manual_seed(args.seed + self.rank)  # dropout differs per rank, gates do not
        self.engine = initialize_engine(BertForPreTraining(self.model_config), self.setup)
        self.pld = PLDHook(self.engine, self.setup.pld, args.seed) if self.setup.pld else None
        self.micro_batch = self.engine.train_micro_batch_size_per_gpu()
        self.accumulation = self.engine.gradient_accumulation_steps()
        self.loader = PretrainingDataLoader(self.train_set, self.micro_batch, self.rank,
                                            self.world_size, args.seed,
                                            prefetch_batches=args.prefetch_batches,
                                            num_workers=args.loader_workers)
        self.sink = make_sink(self.rank, self.output_dir)
        self.samples = 0
        self.loss_check = StepLossCheck()
        self.elapsed_before_launch = 0.0
        self.train_seconds = 0.0  # time inside training steps, across resumes
        if args.compile_layers:
            compile_layers_separately(self.engine.module.bert.encoder.layer)
        self.stop_request = stop_signal.install()  # installed at process start in a rank
        self._restore()
        self.launch_started = time.perf_counter()
        self._start_live_estimates()

    # ------------------------------------------------------------------ setup
    def _validate_data(self, path: str, split: str):
        """Structure on every rank (cheap); the value scan split across ranks (it reads
        every id once). Every rank's verdict is shared, so all stop with the same error
        even when only some of them see a problem (a rank-local file system)."""
        info, error = None, None
        try:
            info = validate_shard_set(path, self.args.max_seq_length,
                                      self.args.max_predictions_per_seq,
                                      self.model_config.vocab_size, check_values=False)
            scan_values(info, info.files[self.rank::self.world_size])
        except DataError as err:
            error = str(err)
        errors = [None] * self.world_size
        dist.all_gather_object(errors, error)
        found = [e for e in errors if e is not None]
        if found:
            raise DataError(f"{split} data: {found[0]}")
        return info

    def _check_vocab(self) -> None:
        """--vocab_file, or the vocab.txt data_prep wrote beside the shards; checked against
        the manifest's vocab_sha256 and recorded in run_config.json, so that export and
        fine-tuning tokenize as pretraining did."""
        if self.args.vocab_file is None:
            beside_shards = Path(self.args.train_dir).parent / "vocab.txt"
            vocab, option = (beside_shards if beside_shards.is_file() else None), "vocab.txt beside the shards"
        else:
            vocab, option = Path(self.args.vocab_file), "--vocab_file"
            if not vocab.is_file():
                raise ConfigError(f"--vocab_file {vocab} does not exist")
        self.vocab_file = vocab.resolve() if vocab is not None else None
        recorded = self.train_set.vocab_sha256
        if vocab is not None and recorded and recorded != sha256_of(vocab):
            raise ConfigError(f"{option} {vocab} is not the vocabulary the shards were made "
                              f"with (their manifest's vocab_sha256 is {recorded})")

    @functools.cached_property
    def vocab_sha256(self) -> Optional[str]:
        return sha256_of(self.vocab_file) if self.vocab_file else None

    def run_config(self) -> dict:
        """The resolved configuration: recorded with every checkpoint, compared on resume
        (resume_config.py), read by export and fine-tuning (model_config, vocab_file)."""
        return {"model_config": self.model_config.to_dict(), "run": dataclasses.asdict(self.args),
                "deepspeed_setup": self.setup.summary(), "world_size": self.world_size,
                "batch": resolve_batch_sizes(self.setup.deepspeed, self.world_size),
                "vocab_file": str(self.vocab_file) if self.vocab_file else None,
                "vocab_sha256": self.vocab_sha256, "data": {"train": self.train_set.identity()}}

    def _check_resumable(self) -> Optional[resume_config.ResumePlan]:
        """The checkpoint to resume from (the newest whole one, checkpoint.find_resumable)
        and what this launch's configuration changes against it: refused unless
        --allow_config_change allows it, and refused always where it cannot work."""
        if self.args.resume != "auto":
            return None
        found = checkpoint.find_resumable(self.checkpoint_root)
        if found is None:
            return None
        if found.note:
            LOG.info("warning: %s", found.note)  # INFO: rank 0's level, so one line per run
        if "data" not in found.run_config:
            LOG.info("note: %s records no data identity (written by an older version): the "
                     "training data is not compared with it", found.directory / checkpoint.RUN_CONFIG)
        changes = resume_config.differences(found.run_config, found.trainer_state, self.run_config())
        fixed = [d for d in changes if d.fixed_reason]
        if fixed:
            raise ConfigError(
                f"cannot resume from {found.directory}: {resume_config.listing(fixed, True)}. "
                f"Resume with the checkpoint's settings, or start a new run from its weights "
                f"with --init_from {found.directory}")
        if changes and not self.args.allow_config_change:
            raise ConfigError(
                f"cannot resume from {found.directory}: the configuration differs from the "
                f"checkpoint's: {resume_config.listing(changes)}. Resume with the checkpoint's "
                "configuration, or pass --allow_config_change to continue with the new one "
                "(recorded in trainer_state.json's history)")
        return resume_config.ResumePlan(found, changes)

    def _restore(self) -> None:
        self.history: list[dict] = []  # trainer_state.json's: allowed changes, fallbacks
        self.checkpointed: Optional[tuple[int, Path]] = None  # (step, directory) last saved or resumed
        plan = self.resume_plan
        if plan is not None:
            found = plan.checkpoint
            fresh = resume_config.snapshot_hyperparameters(self.engine.optimizer)
            rank_state = checkpoint.load(self.engine, found,
                                         load_optimizer_states=not plan.fresh_optimizer)
            if plan.changes_optimizer_values:
                resume_config.apply_hyperparameters(self.engine, fresh)
            self.loader.load_state_dict(rank_state["loader"])
            checkpoint.restore_rng_state(rank_state["rng"])
            state = found.trainer_state
            self.samples = state["samples"]
            self.elapsed_before_launch = state["elapsed_s"]
            # Checkpoints from before train_time_s was kept: their elapsed time.
            self.train_seconds = state.get("train_time_s", state["elapsed_s"])
            if self.pld is not None:
                self.pld.stats.total_micro_batches = state["pld_micro_batches"]
                self.pld.stats.total_active_layers = state["pld_active_layers"]
                self.pld.stats.total_empty_micro_batches = state.get("pld_empty_micro_batches", 0)
            self.history = list(state.get("history", []))
            if found.note:
                self.history.append({"step": self.step, "event": "fallback", "note": found.note})
            if plan.changes:
                self.history.append({"step": self.step, "event": "config_change",
                                     "changes": [str(d) for d in plan.changes],
                                     "fresh_optimizer_state": plan.fresh_optimizer})
                LOG.info("warning: resuming with a changed configuration (--allow_config_change): "
                         "%s%s", resume_config.listing(plan.changes),
                         "; the optimizer type changed, so its state starts fresh (moments and "
                         "step counts reset; the LR schedule continues)" if plan.fresh_optimizer else "")
            self.checkpointed = (self.step, found.directory)
            LOG.info("resumed from %s at step %d (%d samples)", found.directory,
                     self.engine.global_steps, self.samples)
        elif self.args.init_from:
            state = checkpoint.load_weights_only(self.engine, Path(self.args.init_from),
                                                 self.args.init_keep_optimizer)
            if self.args.init_keep_optimizer:
                self.samples = state.get("samples", 0)
            LOG.info("initialized from %s (optimizer and schedule %s)", self.args.init_from,
                     "kept" if self.args.init_keep_optimizer else "reset")

    # --------------------------------------------------------------- training
    @property
    def step(self) -> int:
        return self.engine.global_steps

    def elapsed(self) -> float:
        return self.elapsed_before_launch + time.perf_counter() - self.launch_started

    def theta(self) -> float:
        return self.pld.theta if self.pld is not None else 1.0

    def train_step(self) -> torch.Tensor:
        """One optimizer step over `accumulation` micro-batches.

        Returns this rank's mean (loss, mlm_loss, nsp_loss) as a tensor on the device,
        read (.item()) once per log line. The step ends by waiting for the device, so the
        step time is the step's own and not the queue's (one wait per step, which the
        stop check's all-reduce needs anyway). A non-finite loss on a step DeepSpeed applied
        (not an fp16 overflow it skipped) raises NonFiniteError on every rank.
        """
        totals = torch.zeros(len(LOSS_KEYS), device=self.engine.device)
        skipped_before = self.engine.skipped_steps
        for _ in range(self.accumulation):
            batch = next(self.loader).to(self.engine.device, non_blocking=True)
            output = self.engine(batch)
            self.engine.backward(output.loss)
            self.engine.step()
            totals += torch.stack([getattr(output, key).detach().float() for key in LOSS_KEYS])
        self.samples += self.engine.train_batch_size()
        get_accelerator().synchronize()
        losses = totals / self.accumulation
        self.loss_check(losses, self.engine.skipped_steps > skipped_before, self.step,
                        self.engine.get_lr()[0])
        return losses

    def should_stop(self) -> Optional[str]:
        """Every rank must agree, so the decision is all-reduced once per step."""
        args = self.args
        local = [self.stop_request.signal_name is not None,
                 args.max_time_minutes is not None and self.elapsed() >= 60 * args.max_time_minutes]
        flags = torch.tensor(local, dtype=torch.int32, device=self.engine.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        stop_requested, over_time = flags.tolist()  # one copy to the host
        if stop_requested:
            return "signal"
        if over_time:
            return "time budget"
        if args.max_steps is not None and self.step >= args.max_steps:
            return "max_steps"
        if args.max_samples is not None and self.samples >= args.max_samples:
            return "max_samples"
        return None

    def train(self) -> str:
        args = self.args
        LOG.info("training: world size %d, micro batch %d, accumulation %d, global batch %d, "
                 "PLD %s", self.world_size, self.micro_batch, self.accumulation,
                 self.engine.train_batch_size(),
                 f"theta_bar={self.setup.pld.theta_bar} gamma={self.setup.pld.gamma}"
                 if self.pld else "off")
        interval = _Interval()
        reason = self.should_stop()
        while reason is None:
            theta = self.theta()  # the theta this step's gates are drawn with
            started = time.perf_counter()
            losses = self.train_step()
            seconds = time.perf_counter() - started
            self.train_seconds += seconds
            interval.add(losses, seconds, theta)
            if self.time_saved is not None:  # the blocks this step ran: the counter's increase
                self.time_saved.observe(self.pld.stats.total_active_layers, seconds)
            if self.step % args.log_interval == 0:
                self._log_training(interval)
                interval = _Interval()
            if self.val_set is not None and self.step % args.val_interval == 0:
                self.validate()
            if self.step % args.checkpoint_interval == 0:
                self.save()
            reason = self.should_stop()
        if interval.steps:
            self._log_training(interval)
        if self.val_set is not None and self.step % args.val_interval != 0:
            self.validate()
        self.save()  # not written again when this step is checkpointed already
        LOG.info("stopped at step %d (%s), %d samples, %.1f s", self.step, reason,
                 self.samples, self.elapsed())
        self.loader.close()
        self.sink.close()
        return reason

    def _start_live_estimates(self) -> None:
        """The pace for the ETA (from this launch's first step) and, with PLD, the live
        estimate of the time saved against full depth (time_saved.py), continued from the
        checkpoint resumed."""
        self.pace = progress.Pace(self.step, self.elapsed())
        self.time_saved: Optional[TimeSavedEstimator] = None
        if self.pld is not None:
            resumed = self.resume_plan.checkpoint.trainer_state if self.resume_plan else {}
            self.time_saved = TimeSavedEstimator(
                self.model_config.num_hidden_layers * self.accumulation,
                layers_total=self.pld.stats.total_active_layers,
                state=resumed.get("time_saved"))

    def _log_training(self, interval: "_Interval") -> None:
        means = interval.losses.double() / interval.steps
        dist.all_reduce(means)
        means /= self.world_size
        layers = self.model_config.num_hidden_layers
        values = dict(zip((names.TRAIN_LOSS, names.TRAIN_MLM_LOSS, names.TRAIN_NSP_LOSS),
                          means.tolist()))
        step_time = interval.seconds / interval.steps
        active = (self.pld.stats.interval_mean_active() if self.pld else float(layers))
        elapsed = self.elapsed()
        values.update({
            names.LR: self.engine.get_lr()[0],
            names.SAMPLES: self.samples,
            names.THETA: interval.theta_sum / interval.steps,
            names.EXPECTED_ACTIVE: expected_active_layers(interval.theta_sum / interval.steps, layers),
            names.ACTIVE: active,
            names.SKIPPED_FRAC: self._flops_skipped(),
            names.SAMPLES_PER_SEC: self.engine.train_batch_size() / step_time,
            names.STEP_TIME: step_time,
            names.ELAPSED: elapsed,
            names.TRAIN_TIME: self.train_seconds,
        })
        saved = self.time_saved.update() if self.time_saved is not None else None
        if saved is not None:
            values.update(saved.scalars())
        if self.pld:
            self.pld.stats.reset_interval()
        self.sink.scalars(self.step, values)
        args = self.args
        done = progress.estimate(
            self.step, self.samples, elapsed, self.pace.seconds_per_step(self.step, elapsed),
            self.engine.train_batch_size(), args.max_steps, args.max_samples,
            None if args.max_time_minutes is None else 60 * args.max_time_minutes)
        line = (f"{progress.format_step(self.step, done)} | loss {values[names.TRAIN_LOSS]:.4f} "
                f"(mlm {values[names.TRAIN_MLM_LOSS]:.4f} nsp {values[names.TRAIN_NSP_LOSS]:.4f}) | "
                f"lr {values[names.LR]:.3g} | theta {values[names.THETA]:.3f} | layers {active:.2f} | "
                f"{values[names.SAMPLES_PER_SEC]:.1f} samples/s | {elapsed:.1f} s")
        if saved is not None:
            line += f" | saved {saved.time_saved_s:.1f} s ({saved.speedup:.2f}x now)"
        if eta := progress.format_eta(done):
            line += f" | {eta}"
        LOG.info("%s", line)

    def _flops_skipped(self) -> float:
        # Exact over the whole run: the layers each micro-batch ran, the last of them
        # sparse (see flops.LayerRuns), against the same micro-batches at full depth.
        if self.pld is None or self.pld.stats.total_micro_batches == 0:
            return 0.0
        stats = self.pld.stats
        runs = flops.LayerRuns.from_counts(stats.total_micro_batches, stats.total_active_layers,
                                           stats.total_empty_micro_batches)
        return flops.encoder_flops_skipped_fraction(
            self.model_config, self.args.max_seq_length, self.args.max_predictions_per_seq, runs)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """MLM loss/accuracy and NSP accuracy over the validation set, full depth."""
        self.engine.eval()
        loader = PretrainingDataLoader(self.val_set, self.micro_batch, self.rank, self.world_size,
                                       seed=0, drop_last=True, prefetch_batches=2)
        batches = loader.batches_per_epoch
        if self.args.val_batches:
            batches = min(batches, self.args.val_batches)
        # sums: mlm loss x count, mlm correct, mlm count, nsp loss x count, nsp correct, nsp count
        sums = torch.zeros(6, dtype=torch.float64, device=self.engine.device)
        with loader:
            for _ in range(batches):
                out = self.engine(next(loader).to(self.engine.device))
                sums += torch.stack([out.mlm_loss * out.mlm_count, out.mlm_correct, out.mlm_count,
                                     out.nsp_loss * out.nsp_count, out.nsp_correct,
                                     out.nsp_count]).double()
        dist.all_reduce(sums)
        sums = sums.cpu()
        self.engine.train()
        mlm_loss, nsp_loss = sums[0] / sums[2], sums[3] / sums[5]
        values = {"val/mlm_loss": float(mlm_loss), "val/mlm_acc": float(sums[1] / sums[2]),
                  "val/nsp_loss": float(nsp_loss), "val/nsp_acc": float(sums[4] / sums[5]),
                  "val/loss": float(mlm_loss + nsp_loss)}
        self.sink.scalars(self.step, values)
        LOG.info("validation at step %d | mlm loss %.4f acc %.4f | nsp acc %.4f", self.step,
                 values["val/mlm_loss"], values["val/mlm_acc"], values["val/nsp_acc"])
        return values

    def save(self) -> Path:
        """Publish a checkpoint of this step (checkpoint.save). A step that is checkpointed
        already (saved by the loop, or the one this launch resumed from) is not saved
        again: that checkpoint holds this very state, and rewriting it is what a kill
        during the save could damage."""
        if self.checkpointed is not None and self.checkpointed[0] == self.step:
            LOG.info("step %d is checkpointed already in %s: not saving it again", self.step,
                     self.checkpointed[1])
            return self.checkpointed[1]
        require_finite_weights(self.engine.module, self.step, self.engine.device)
        stats = self.pld.stats if self.pld else None
        trainer_state = {
            "step": self.step, "samples": self.samples, "elapsed_s": self.elapsed(),
            "train_time_s": self.train_seconds,
            "world_size": self.world_size, "micro_batch": self.micro_batch,
            "theta": self.theta(),
            "pld_micro_batches": stats.total_micro_batches if stats else 0,
            "pld_active_layers": stats.total_active_layers if stats else 0,
            "pld_empty_micro_batches": stats.total_empty_micro_batches if stats else 0,
            "loader": self.loader.state_dict(),
            "history": self.history,
            "time_saved": self.time_saved.state_dict() if self.time_saved is not None else None,
        }
        rank_state = {"format": checkpoint.RANK_STATE_FORMAT, "loader": self.loader.state_dict(),
                      "rng": checkpoint.rng_state()}
        directory = checkpoint.save(self.engine, self.checkpoint_root, self.step, trainer_state,
                                    rank_state, self.run_config())
        self.checkpointed = (self.step, directory)
        LOG.info("checkpoint %s", directory)
        return directory


class _Interval:
    """Accumulates per-step numbers between two log lines (losses stay on the device)."""

    def __init__(self):
        self.steps = 0
        self.seconds = 0.0
        self.theta_sum = 0.0
        self.losses: torch.Tensor | float = 0.0

    def add(self, losses: torch.Tensor, seconds: float, theta: float) -> None:
        self.steps += 1
        self.seconds += seconds
        self.theta_sum += theta
        self.losses = self.losses + losses


def main(argv: Optional[Sequence[str]] = None) -> int:
    """argv None: this process is the trainer (a rank); otherwise an in-process call."""
    stop_signal.install()  # a rank did at its start already; `bbp-train` and callers do here
    try:
        return _run(parse_args(argv))
    finally:
        if argv is None:
            stop_signal.ignore_further()


def _run(args: RunArgs) -> int:
    output_dir = Path(args.output_dir)
    created = not output_dir.exists()
    # Registered before the slow part of the start (data scan, engine build): from here a
    # launch script passes a stop on to this rank, which remembers it; the check after
    # the build below then ends the launch before its first step.
    try:
        registration = stop_signal.register(output_dir, int(os.environ.get("RANK", "0")))
    except OSError as err:
        print(f"error: cannot register this rank for stop requests under "
              f"{stop_signal.registry_dir(output_dir)}: {err}", file=sys.stderr)
        return 2
    try:
        try:
            trainer = Trainer(args)
        except (ConfigError, DataError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if trainer.should_stop() == "signal":  # all ranks agree
            LOG.info("stop requested (%s) before the first step: no step ran in this launch, "
                     "so there is nothing new to checkpoint", trainer.stop_request.signal_name)
            trainer.loader.close()
            trainer.sink.close()
            return 0
        try:
            trainer.train()
        except NonFiniteError as err:
            print(f"error: {err}", file=sys.stderr)
            trainer.loader.close()
            trainer.sink.close()
            return NON_FINITE_EXIT_CODE
        return 0
    finally:
        registration.remove()
        if created:
            try:
                output_dir.rmdir()  # a run that never started leaves nothing behind
            except OSError:
                pass  # it has content: the run started


if __name__ == "__main__":
    sys.exit(main())
