"""Pretraining entry point: parse, build, train.

    deepspeed -m bing_bert_pld.train --deepspeed_config ds_configs/<file>.json \
        --model_config bert-base --train_dir DATA/train --val_dir DATA/validation \
        --output_dir runs/NAME [--max_steps N | --max_samples N | --max_time_minutes M]
    python -m bing_bert_pld.train ...   (one process)

The same command runs on GPUs (NCCL) and on CPU ranks (gloo). Settings have one home
each (see bing_bert_pld/ds_config.py): the command line owns the run, the DeepSpeed JSON
the batch/optimizer/precision/PLD, the model JSON the architecture, and the shards the
sequence shape and vocabulary (preflight.py checks them all before the engine exists).
Without a stopping rule the run ends where the JSON's LR schedule does.
"""

from __future__ import annotations

if __name__ == "__main__":
    # A rank started by a launcher: catch stop signals before the imports below, which
    # take seconds (SIGUSR1's default action would end the rank without a checkpoint).
    from bing_bert_pld import stop_signal

    stop_signal.install()

import argparse
import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator

from . import cli, flops, preflight, progress, resume_config, run_options, stop_signal, train_state
from .config import ConfigError
from .data import PretrainingDataLoader
from .divergence import EXIT_CODE as NON_FINITE_EXIT_CODE, NonFiniteError, StepLossCheck, \
    require_finite_weights
from .engine import PLDHook, initialize_engine
from .metrics_log import LOG, make_sink
from .model import BertForPreTraining, compile_layers_separately
from .pld import expected_active_layers
from .run import checkpoint
from .run import metric_names as names
from .run.config import write_launch_config
from .shard_validation import DataError
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
        "the run's directory: checkpoints/, tensorboard/, metrics.jsonl, run_config.json, "
        "vocab.txt (bing_bert_pld/run/layout.py); a "
        "new launch with the same directory resumes (--resume)")})
    val_dir: Optional[str] = field(default=None, metadata={"metavar": "DIR", "help": (
        "validation shards (data_prep's OUTPUT/validation); default: no validation")})
    max_seq_length: Optional[int] = field(default=None, metadata={"metavar": "TOKENS", "help": (
        "tokens per sequence, checked against the shards (their manifest, else their shapes); "
        "default: the shards' (128 for phase 1, 512 for phase 2 with data_prep's defaults)")})
    max_predictions_per_seq: Optional[int] = field(default=None, metadata={"metavar": "N", "help": (
        "masked positions per sequence, checked against the shards; default: the shards'")})
    max_steps: Optional[int] = field(default=None, metadata={"metavar": "STEPS", "help": (
        "stop after this many optimizer steps; the first of --max_steps, --max_samples and "
        "--max_time_minutes reached stops the run. Default, when none of the three is given: "
        "the LR schedule's total steps (the DeepSpeed JSON's scheduler)")})
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
        "vocab.txt, checked against the shards' manifest (vocab_sha256) and copied into the "
        "run directory and every checkpoint for export and fine-tuning; default: the vocab.txt "
        "data_prep wrote beside the shards, else the run directory's copy")})
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
    return RunArgs(**namespace)


class Trainer:
    """The training loop over a checked launch plan (preflight.py): steps, logs,
    validations and checkpoints, until a stopping rule or a signal ends it."""

    def __init__(self, args: RunArgs):
        plan = self.plan = preflight.check(args)  # a refusal here costs no engine build
        self.args = args = plan.args  # with the stopping rule it settled
        if plan.rank == 0:
            write_launch_config(plan.run_dir, plan.run_config)

        torch.manual_seed(args.seed + plan.rank)  # dropout differs per rank, gates do not
        self.engine = initialize_engine(BertForPreTraining(plan.model_config), plan.setup)
        self.pld = PLDHook(self.engine, plan.setup.pld, args.seed) if plan.setup.pld else None
        self.micro_batch = self.engine.train_micro_batch_size_per_gpu()
        self.accumulation = self.engine.gradient_accumulation_steps()
        self.loader = PretrainingDataLoader(plan.train_set, self.micro_batch, plan.rank,
                                            plan.world_size, args.seed,
                                            prefetch_batches=args.prefetch_batches,
                                            num_workers=args.loader_workers)
        self.sink = make_sink(plan.rank, plan.run_dir)
        self.loss_check = StepLossCheck()
        self.progress = train_state.Progress()
        # The live estimate of the wall clock PLD saves against full depth (time_saved.py).
        self.time_saved = (TimeSavedEstimator(plan.model_config.num_hidden_layers * self.accumulation)
                           if self.pld is not None else None)
        # Saved and restored as one set (train_state.py).
        self.parts = {"progress": self.progress, "pld": self.pld.stats if self.pld else None,
                      "loader": self.loader, "time_saved": self.time_saved}
        if args.compile_layers:
            compile_layers_separately(self.engine.module.bert.encoder.layer)
        self.stop_request = stop_signal.install()  # installed at process start in a rank
        self.checkpointed: Optional[tuple[int, Path]] = None  # (step, directory) last saved or resumed
        self._restore()
        self.progress.start_launch()
        self.pace = progress.Pace(self.step, self.elapsed())  # for the ETA: this launch's pace

    def _restore(self) -> None:
        resume = self.plan.resume
        if resume is not None:
            found = resume.checkpoint
            fresh = resume_config.snapshot_hyperparameters(self.engine.optimizer)
            rank_state = checkpoint.load(self.engine, found,
                                         load_optimizer_states=not resume.fresh_optimizer)
            if resume.changes_optimizer_values:
                resume_config.apply_hyperparameters(self.engine, fresh)
            train_state.restore(self.parts, found.trainer_state)
            self.loader.load_state_dict(rank_state["loader"])  # this rank's, not rank 0's
            checkpoint.restore_rng_state(rank_state["rng"])
            history = self.progress.history
            if found.note:
                history.append({"step": self.step, "event": "fallback", "note": found.note})
            if resume.changes:
                history.append({"step": self.step, "event": "config_change",
                                "changes": [str(d) for d in resume.changes],
                                "fresh_optimizer_state": resume.fresh_optimizer})
                LOG.info("warning: resuming with a changed configuration (--allow_config_change): "
                         "%s%s", resume_config.listing(resume.changes),
                         "; the optimizer type changed, so its state starts fresh (moments and "
                         "step counts reset; the LR schedule continues)" if resume.fresh_optimizer else "")
            self.checkpointed = (self.step, found.directory)
            LOG.info("resumed from %s at step %d (%d samples)", found.directory,
                     self.engine.global_steps, self.samples)
        elif self.args.init_from:
            state = checkpoint.load_weights_only(self.engine, Path(self.args.init_from),
                                                 self.args.init_keep_optimizer)
            if self.args.init_keep_optimizer:
                self.progress.samples = state.get("samples", 0)
            LOG.info("initialized from %s (optimizer and schedule %s)", self.args.init_from,
                     "kept" if self.args.init_keep_optimizer else "reset")

    # --------------------------------------------------------------- training
    @property
    def step(self) -> int:
        return self.engine.global_steps

    @property
    def samples(self) -> int:
        return self.progress.samples

    def elapsed(self) -> float:
        return self.progress.elapsed()

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
        self.progress.samples += self.engine.train_batch_size()
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
                 "PLD %s", self.plan.world_size, self.micro_batch, self.accumulation,
                 self.engine.train_batch_size(),
                 f"theta_bar={self.plan.setup.pld.theta_bar} gamma={self.plan.setup.pld.gamma}"
                 if self.pld else "off")
        interval = _Interval()
        reason = self.should_stop()
        while reason is None:
            theta = self.theta()  # the theta this step's gates are drawn with
            started = time.perf_counter()
            losses = self.train_step()
            seconds = time.perf_counter() - started
            self.progress.train_seconds += seconds
            interval.add(losses, seconds, theta)
            if self.time_saved is not None:  # the blocks this step ran: the counter's increase
                self.time_saved.observe(self.pld.stats.total_active_layers, seconds)
            if self.step % args.log_interval == 0:
                self._log_training(interval)
                interval = _Interval()
            if self.plan.val_set is not None and self.step % args.val_interval == 0:
                self.validate()
            if self.step % args.checkpoint_interval == 0:
                self.save()
            reason = self.should_stop()
        if interval.steps:
            self._log_training(interval)
        if self.plan.val_set is not None and self.step % args.val_interval != 0:
            self.validate()
        self.save()  # not written again when this step is checkpointed already
        LOG.info("stopped at step %d (%s), %d samples, %.1f s", self.step, reason,
                 self.samples, self.elapsed())
        self.loader.close()
        self.sink.close()
        return reason

    def _log_training(self, interval: "_Interval") -> None:
        means = interval.losses.double() / interval.steps
        dist.all_reduce(means)
        means /= self.plan.world_size
        layers = self.plan.model_config.num_hidden_layers
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
            names.SKIPPED_FRAC: self.flops_skipped(),
            names.SAMPLES_PER_SEC: self.engine.train_batch_size() / step_time,
            names.STEP_TIME: step_time,
            names.ELAPSED: elapsed,
            names.TRAIN_TIME: self.progress.train_seconds,
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

    def flops_skipped(self) -> float:
        """Exact over the whole run, from the gates drawn (flops.LayerRuns)."""
        runs = self.pld.stats.layer_runs() if self.pld is not None else None
        if runs is None:
            return 0.0
        return flops.encoder_flops_skipped_fraction(self.plan.model_config, self.plan.seq_len,
                                                    self.plan.max_pred, runs)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """MLM loss/accuracy and NSP accuracy over the validation set, full depth."""
        self.engine.eval()
        loader = PretrainingDataLoader(self.plan.val_set, self.micro_batch, self.plan.rank, self.plan.world_size,
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
        values = {names.VAL_MLM_LOSS: float(mlm_loss), names.VAL_MLM_ACC: float(sums[1] / sums[2]),
                  names.VAL_NSP_LOSS: float(nsp_loss), names.VAL_NSP_ACC: float(sums[4] / sums[5]),
                  names.VAL_LOSS: float(mlm_loss + nsp_loss)}
        self.sink.scalars(self.step, values)
        LOG.info("validation at step %d | mlm loss %.4f acc %.4f | nsp acc %.4f", self.step,
                 values[names.VAL_MLM_LOSS], values[names.VAL_MLM_ACC], values[names.VAL_NSP_ACC])
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
        state = train_state.trainer_state(self.parts, step=self.step, world_size=self.plan.world_size,
                                          micro_batch=self.micro_batch, theta=self.theta())
        rank_state = {"format": checkpoint.RANK_STATE_FORMAT, "loader": self.loader.state_dict(),
                      "rng": checkpoint.rng_state()}
        directory = checkpoint.save(self.engine, self.plan.run_dir.checkpoints, self.step, state,
                                    rank_state, self.plan.run_config, vocab=self.plan.vocab_file)
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
