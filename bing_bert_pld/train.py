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

import argparse
import dataclasses
import hashlib
import json
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator

from . import checkpoint, flops
from .config import BertConfig, ConfigError
from .data import PretrainingDataLoader
from .shard_validation import DataError, scan_values, validate_shard_set
from .ds_config import check_setup_against_model, load_training_setup, resolve_batch_sizes
from .engine import PLDHook, init_distributed, initialize_engine
from .metrics_log import LOG, make_sink, setup_console_logging
from .model import BertForPreTraining, compile_layers_separately
from .pld import expected_active_layers


LOSS_KEYS = ("loss", "mlm_loss", "nsp_loss")


@dataclass(frozen=True)
class RunArgs:
    deepspeed_config: str
    model_config: str
    train_dir: str
    output_dir: str
    val_dir: Optional[str] = None
    max_seq_length: int = 128
    max_predictions_per_seq: int = 20
    max_steps: Optional[int] = None
    max_samples: Optional[int] = None
    max_time_minutes: Optional[float] = None
    seed: int = 42
    log_interval: int = 10
    val_interval: int = 500
    val_batches: int = 50  # per rank per validation; 0 = the whole validation set
    checkpoint_interval: int = 1000
    resume: str = "auto"  # auto: continue from <output_dir>/checkpoints/latest; none: start over
    init_from: Optional[str] = None  # weights of another run (phase 2 from phase 1)
    init_keep_optimizer: bool = False
    vocab_file: Optional[str] = None
    prefetch_batches: int = 8
    loader_workers: int = 1  # 1: a reader thread; more: reader processes (fast GPUs, gzip shards)
    compile_layers: bool = False  # torch.compile each encoder layer on its own (GPU)


def parse_args(argv: Optional[Sequence[str]] = None) -> RunArgs:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    defaults = RunArgs("", "", "", "")
    for f in dataclasses.fields(RunArgs):
        required = f.name in {"deepspeed_config", "model_config", "train_dir", "output_dir"}
        flag = f"--{f.name}"
        if f.type == "bool":
            parser.add_argument(flag, action="store_true")
        else:
            kind = {"int": int, "Optional[int]": int, "float": float,
                    "Optional[float]": float}.get(f.type, str)
            parser.add_argument(flag, type=kind, required=required,
                                default=None if required else getattr(defaults, f.name))
    parser.add_argument("--local_rank", type=int, default=-1, help="set by the deepspeed launcher")
    namespace = vars(parser.parse_args(argv))
    namespace.pop("local_rank")
    args = RunArgs(**namespace)
    if args.resume not in ("auto", "none"):
        parser.error(f"--resume must be 'auto' or 'none', got {args.resume!r}")
    if args.max_steps is None and args.max_samples is None and args.max_time_minutes is None:
        parser.error("give at least one of --max_steps, --max_samples, --max_time_minutes")
    return args


class StopRequest:
    """SIGUSR1 / SIGTERM (SLURM's warning before the time limit): checkpoint, exit 0."""

    def __init__(self):
        self.signal_name: Optional[str] = None
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name


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
        self.setup = load_training_setup(args.deepspeed_config, cuda)
        check_setup_against_model(self.setup, self.model_config, args.model_config,
                                  args.max_seq_length, fp16_on_this_cpu=not cuda)
        init_distributed()
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        setup_console_logging(self.rank)
        resolve_batch_sizes(self.setup.deepspeed, self.world_size, args.deepspeed_config)
        self.train_set = self._validate_data(args.train_dir, "train")
        self.val_set = self._validate_data(args.val_dir, "validation") if args.val_dir else None
        self._check_vocab()

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
        self.elapsed_before_launch = 0.0
        self.train_seconds = 0.0  # time inside training steps, across resumes
        if args.compile_layers:
            compile_layers_separately(self.engine.module.bert.encoder.layer)
        self.stop_request = StopRequest()
        self._restore()
        self.launch_started = time.perf_counter()

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

    def run_config(self) -> dict:
        return {"model_config": self.model_config.to_dict(), "run": dataclasses.asdict(self.args),
                "deepspeed_setup": self.setup.summary(), "world_size": self.world_size,
                "vocab_file": str(self.vocab_file) if self.vocab_file else None}

    def _restore(self) -> None:
        tag = checkpoint.latest_tag(self.checkpoint_root) if self.args.resume == "auto" else None
        if tag is not None:
            self._check_resumable(tag)
            state, rank_state = checkpoint.load(self.engine, self.checkpoint_root, tag)
            self.loader.load_state_dict(rank_state["loader"])
            checkpoint.restore_rng_state(rank_state["rng"])
            self.samples = state["samples"]
            self.elapsed_before_launch = state["elapsed_s"]
            # Checkpoints from before train_time_s was kept: their elapsed time.
            self.train_seconds = state.get("train_time_s", state["elapsed_s"])
            if self.pld is not None:
                self.pld.stats.total_micro_batches = state["pld_micro_batches"]
                self.pld.stats.total_active_layers = state["pld_active_layers"]
                self.pld.stats.total_empty_micro_batches = state.get("pld_empty_micro_batches", 0)
            LOG.info("resumed from %s at step %d (%d samples)", self.checkpoint_root / tag,
                     self.engine.global_steps, self.samples)
        elif self.args.init_from:
            state = checkpoint.load_weights_only(self.engine, Path(self.args.init_from),
                                                 self.args.init_keep_optimizer)
            if self.args.init_keep_optimizer:
                self.samples = state.get("samples", 0)
            LOG.info("initialized from %s (optimizer and schedule %s)", self.args.init_from,
                     "kept" if self.args.init_keep_optimizer else "reset")

    def _check_resumable(self, tag: str) -> None:
        """The data position means something only for the same ranks and batch shape."""
        recorded = json.loads((self.checkpoint_root / tag / checkpoint.TRAINER_STATE).read_text())
        now = {"world_size": self.world_size, "micro_batch": self.micro_batch}
        changed = {key: (recorded.get(key), value) for key, value in now.items()
                   if recorded.get(key) != value}
        if changed:
            raise ConfigError(
                f"cannot resume {self.checkpoint_root / tag}: " + ", ".join(
                    f"{key} was {old}, is {new}" for key, (old, new) in changed.items())
                + "; resume with the same layout, or start a new run with --init_from")

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
        stop check's all-reduce needs anyway).
        """
        totals = torch.zeros(len(LOSS_KEYS), device=self.engine.device)
        for _ in range(self.accumulation):
            batch = next(self.loader).to(self.engine.device, non_blocking=True)
            output = self.engine(batch)
            self.engine.backward(output.loss)
            self.engine.step()
            totals += torch.stack([getattr(output, key).detach().float() for key in LOSS_KEYS])
        self.samples += self.engine.train_batch_size()
        get_accelerator().synchronize()
        return totals / self.accumulation

    def should_stop(self) -> Optional[str]:
        """Every rank must agree, so the decision is all-reduced once per step."""
        args = self.args
        local = [self.stop_request.signal_name is not None,
                 args.max_time_minutes is not None and self.elapsed() >= 60 * args.max_time_minutes]
        flags = torch.tensor(local, dtype=torch.int32, device=self.engine.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        stop_signal, over_time = flags.tolist()  # one copy to the host
        if stop_signal:
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
        if self.step % args.checkpoint_interval != 0 or reason == "signal":
            self.save()
        LOG.info("stopped at step %d (%s), %d samples, %.1f s", self.step, reason,
                 self.samples, self.elapsed())
        self.loader.close()
        self.sink.close()
        return reason

    def _log_training(self, interval: "_Interval") -> None:
        means = interval.losses.double() / interval.steps
        dist.all_reduce(means)
        means /= self.world_size
        layers = self.model_config.num_hidden_layers
        values = {f"train/{k}": v for k, v in zip(LOSS_KEYS, means.tolist())}
        step_time = interval.seconds / interval.steps
        active = (self.pld.stats.interval_mean_active() if self.pld else float(layers))
        values.update({
            "train/lr": self.engine.get_lr()[0],
            "train/samples": self.samples,
            "pld/theta": interval.theta_sum / interval.steps,
            "pld/expected_active_layers": expected_active_layers(
                interval.theta_sum / interval.steps, layers),
            "pld/active_layers": active,
            "pld/encoder_flops_skipped_frac": self._flops_skipped(),
            "perf/samples_per_sec": self.engine.train_batch_size() / step_time,
            "perf/step_time_s": step_time,
            "perf/elapsed_s": self.elapsed(),
            "perf/train_time_s": self.train_seconds,
        })
        if self.pld:
            self.pld.stats.reset_interval()
        self.sink.scalars(self.step, values)
        LOG.info("step %d | loss %.4f (mlm %.4f nsp %.4f) | lr %.3g | theta %.3f | layers %.2f "
                 "| %.1f samples/s | %.1f s", self.step, values["train/loss"],
                 values["train/mlm_loss"], values["train/nsp_loss"], values["train/lr"],
                 values["pld/theta"], active, values["perf/samples_per_sec"], values["perf/elapsed_s"])

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
        tag = f"global_step{self.step}"
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
        }
        rank_state = {"loader": self.loader.state_dict(), "rng": checkpoint.rng_state()}
        directory = checkpoint.save(self.engine, self.checkpoint_root, tag, trainer_state,
                                    rank_state, self.run_config())
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
    args = parse_args(argv)
    try:
        trainer = Trainer(args)
    except (ConfigError, DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    trainer.train()
    return 0


if __name__ == "__main__":
    sys.exit(main())
