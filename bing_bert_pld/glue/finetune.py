"""Fine-tune a pretrained checkpoint on one GLUE task: full depth, no PLD.

    deepspeed --num_gpus 1 --module bing_bert_pld.glue.finetune \
        --deepspeed_config ds_configs/glue_finetune.json --task RTE --data_dir GLUE/ \
        --init runs/pld --output_dir runs/glue/RTE/seed1 --seed 1
    python -m bing_bert_pld.glue.finetune ...      # one process, CPU or one GPU

--init takes a training output dir, a checkpoint root, a tag dir, or a directory written
by bing_bert_pld.hf_export. The model is built from the checkpoint's recorded config (or
--model_config) and loaded strictly: any missing, unexpected or mis-shaped tensor stops
the run with the list of names. The text is tokenized with the checkpoint's vocab.txt.

Ownership: the DeepSpeed JSON owns batch size, optimizer (Adam, lr), precision and the
LR schedule (WarmupPolyDecay: linear warmup then linear decay; its total_steps is
computed here from the data and the epochs); its "glue" block owns the epochs, the
sequence length and the evaluation batch size. The command line owns the run, and its
usual overrides replace the file's values (command line > file > defaults):
--learning_rate (optimizer.params.lr), --num_train_epochs (glue.epochs),
--per_device_train_batch_size (train_micro_batch_size_per_gpu), --train_batch_size (the
global batch; with it alone the micro-batch is train_batch_size / ranks),
--warmup_proportion (scheduler.params.warmup_proportion, where the schedule has one).

Writes to --output_dir:
- settings.json, before training: the resolved values (learning rate, epochs, batch
  sizes, warmup, optimizer steps, seed, ...) and which of them the command line set;
- results.json: final dev metrics, every epoch's metrics, the settings;
- predictions_<dev set>.tsv: index (the example's place among the rows read),
  prediction (label string, or the STS-B score) and label, from the final model;
- model/: the fine-tuned model, its config and tokenizer (glue/saved_model.py: our
  `load_finetuned` and transformers' AutoModelForSequenceClassification load it);
- tensorboard/ and metrics.jsonl (train/loss, train/lr, eval/<split>/<metric> against
  the optimizer step).
A progress bar per epoch goes to stderr on rank 0. `python -m bing_bert_pld.glue.summary
DIR` tabulates many runs. A mistake in the input (unknown task, missing data, a bad
--init or configuration) is one `error:` line and exit 2, before the model is built.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from .. import cli
from ..config import BertConfig, ConfigError
from ..ds_config import (TrainingSetup, build_training_setup, check_setup_against_model, read_json,
                         resolve_batch_sizes)
from ..engine import init_distributed, initialize_engine
from ..lr_schedules import SCHEDULES
from ..metrics_log import LOG, make_sink, setup_console_logging
from ..run import metric_names as names
from ..run.layout import RunDir
from ..run.pretrained import CheckpointError, read_pretrained
from ..strict_dict import POSITIVE_INT, checked
from ..tokenizer import build_bert_tokenizer
from .data import GlueDataset, check_task_files, encode, get_task, read_split
from .metrics import compute_metrics, predictions_from_logits
from .model import BertForSequenceClassification
from .saved_model import is_finetuned_dir, save_finetuned

GLUE_KEY = "glue"
RESULTS = "results.json"
SETTINGS = "settings.json"
MODEL_DIR = "model"
PREDICTIONS = "predictions_{split}.tsv"
# Seconds between progress-bar redraws, keyed by "stderr is a terminal": a log file gets
# one line in 30 s rather than ten a second.
PROGRESS_INTERVAL_S = {True: 1.0, False: 30.0}


@dataclass(frozen=True)
class Overrides:
    """Command-line values that replace the fine-tuning JSON's (see the module docstring)."""

    learning_rate: Optional[float] = None
    num_train_epochs: Optional[int] = None
    per_device_train_batch_size: Optional[int] = None
    train_batch_size: Optional[int] = None
    warmup_proportion: Optional[float] = None

    def given(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def describe(self, path: str | Path) -> str:
        """The config's name in messages: the file, and the flags that changed it."""
        given = self.given()
        return str(path) + (" with " + " ".join(f"--{k} {v}" for k, v in given.items())
                            if given else "")

    def apply(self, values: dict, path: str | Path) -> dict:
        """The JSON's values with the overrides in; ConfigError names the flag."""
        values = json.loads(json.dumps(values))  # a deep copy of plain JSON
        lr, warmup = self.learning_rate, self.warmup_proportion
        if lr is not None and not (math.isfinite(lr) and lr > 0):
            raise ConfigError(f"--learning_rate must be a positive number, got {lr}")
        if warmup is not None and not 0 <= warmup < 1:  # NaN fails too
            raise ConfigError(f"--warmup_proportion must be in [0, 1), got {warmup}")
        for name in ("num_train_epochs", "per_device_train_batch_size", "train_batch_size"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"--{name} must be a positive integer, got {value}")
        if self.learning_rate is not None:
            params = (values.get("optimizer") or {}).get("params")
            if not isinstance(params, dict):
                raise ConfigError(f"--learning_rate: {path} has no optimizer.params whose lr "
                                  "it could set")
            params["lr"] = self.learning_rate
        if self.num_train_epochs is not None:
            values.setdefault(GLUE_KEY, {})["epochs"] = self.num_train_epochs
        # Batch sizes: the flags given win; what they leave open DeepSpeed derives
        # (train_batch_size = micro x accumulation x ranks).
        if self.train_batch_size is not None:
            values["train_batch_size"] = self.train_batch_size
            values.pop("gradient_accumulation_steps", None)
            if self.per_device_train_batch_size is None:
                values.pop("train_micro_batch_size_per_gpu", None)
        if self.per_device_train_batch_size is not None:
            values["train_micro_batch_size_per_gpu"] = self.per_device_train_batch_size
            if self.train_batch_size is None:
                values.pop("train_batch_size", None)
        if self.warmup_proportion is not None:
            scheduler = values.get("scheduler") or {}
            params = scheduler.get("params") if isinstance(scheduler, dict) else None
            if not isinstance(params, dict) or "warmup_proportion" not in params:
                raise ConfigError(f"--warmup_proportion: the scheduler in {path} "
                                  f"({scheduler.get('type') if isinstance(scheduler, dict) else None}) "
                                  "has no warmup_proportion to set")
            params["warmup_proportion"] = self.warmup_proportion
        return values


@dataclass(frozen=True)
class FinetuneSettings:
    """The "glue" block of the fine-tuning JSON."""

    epochs: int = 3
    max_seq_length: int = 128
    eval_batch_size: int = 64
    log_every: int = 50  # optimizer steps between train/loss points

    @classmethod
    def from_dict(cls, values: dict, source: str) -> "FinetuneSettings":
        rules = {f.name: POSITIVE_INT for f in dataclasses.fields(cls)}
        return cls(**checked(values, source, rules, path=GLUE_KEY))


def read_finetune_config(path: str | Path, cuda_available: bool,
                         overrides: Overrides = Overrides()
                         ) -> tuple[FinetuneSettings, TrainingSetup]:
    """The "glue" block, and DeepSpeed's part with a placeholder total_steps of 1 in the
    schedule: the number of optimizer steps follows from the data and glue.epochs, so the
    file must not set it; with_total_steps sets it once the data is read. `overrides`
    (the command line's) replace the file's values first."""
    values = overrides.apply(read_json(path), path)
    path = overrides.describe(path)  # messages name the flags that changed the file
    settings = FinetuneSettings.from_dict(values.get(GLUE_KEY, {}), str(path))
    ds = {key: value for key, value in values.items() if key != GLUE_KEY}
    scheduler = ds.get("scheduler")
    if isinstance(scheduler, dict) and scheduler.get("type") in SCHEDULES:
        params = dict(scheduler.get("params", {}))
        if "total_steps" in params:
            raise ConfigError(f"{path}: scheduler.params.total_steps is computed from the data "
                              f"and {GLUE_KEY}.epochs in fine-tuning; remove it")
        ds["scheduler"] = {**scheduler, "params": {**params, "total_steps": 1}}
    setup = build_training_setup(ds, str(path), cuda_available)
    if setup.pld is not None:
        raise ConfigError(f"{path}: progressive_layer_drop is enabled, but fine-tuning runs "
                          "every layer; remove the block or set enabled to false")
    return settings, setup


@dataclass
class FinetuneArgs:
    task: str
    data_dir: str
    init: str
    output_dir: str
    deepspeed_config: str
    seed: int = 42
    model_config: Optional[str] = None
    vocab: Optional[str] = None
    lowercase: Optional[bool] = None
    learning_rate: Optional[float] = None
    num_train_epochs: Optional[int] = None
    per_device_train_batch_size: Optional[int] = None
    train_batch_size: Optional[int] = None
    warmup_proportion: Optional[float] = None
    no_save_model: bool = False

    @property
    def overrides(self) -> Overrides:
        return Overrides(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Overrides)})


def parse_args(argv: Optional[Sequence[str]] = None) -> FinetuneArgs:
    parser = cli.ArgumentParser(
        "bing_bert_pld.glue.finetune",
        description="Fine-tune a pretrained checkpoint on one GLUE task: full depth, no PLD. "
                    "Several ranks: deepspeed --module bing_bert_pld.glue.finetune ...")
    parser.add_argument("--task", required=True, help="CoLA, SST-2, MRPC, STS-B, QQP, MNLI, "
                        "QNLI, RTE or WNLI (case and dashes ignored)")
    parser.add_argument("--data_dir", required=True, metavar="DIR",
                        help="the GLUE root: <data_dir>/<TASK>/train.tsv")
    parser.add_argument("--init", required=True, metavar="CKPT", aliases=("--init_from",),
                        help="pretraining output dir, checkpoint root or tag dir, or an export dir")
    parser.add_argument("--output_dir", required=True, metavar="DIR",
                        help="settings.json, results.json, predictions, model/, tensorboard/")
    parser.add_argument("--deepspeed_config", required=True, metavar="JSON",
                        help="DeepSpeed JSON with a \"glue\" block (ds_configs/glue_finetune.json)")
    parser.add_argument("--seed", type=int, default=42,
                        help="seeds the classifier's initial weights, dropout and the data order")
    parser.add_argument("--model_config", metavar="NAME|JSON",
                        help="build the model from this config; default: the checkpoint's")
    parser.add_argument("--vocab", metavar="PATH", aliases=("--vocab_file",),
                        help="vocab.txt (default: the checkpoint's)")
    case = parser.add_mutually_exclusive_group()
    case.add_argument("--lowercase", dest="lowercase", action="store_true", default=None,
                      help="lowercase the text (default: as the checkpoint records)")
    case.add_argument("--cased", dest="lowercase", action="store_false",
                      help="keep the text's case (default: as the checkpoint records)")
    overrides = parser.add_argument_group(
        "overrides of the DeepSpeed JSON (command line > file > defaults; recorded in "
        "OUTPUT_DIR/settings.json)")
    overrides.add_argument("--learning_rate", type=float, metavar="LR",
                           help="peak learning rate; default: the JSON's optimizer.params.lr")
    overrides.add_argument("--num_train_epochs", type=int, metavar="EPOCHS",
                           help="passes over the training set; default: the JSON's glue.epochs, "
                                f"else {FinetuneSettings.epochs}")
    overrides.add_argument("--per_device_train_batch_size", type=int, metavar="SAMPLES",
                           help="micro-batch per rank; default: the JSON's "
                                "train_micro_batch_size_per_gpu")
    overrides.add_argument("--train_batch_size", type=int, metavar="SAMPLES",
                           help="global batch per optimizer step; alone, the micro-batch is "
                                "SAMPLES / ranks, with --per_device_train_batch_size the gradient "
                                "accumulation follows; default: the JSON's train_batch_size")
    overrides.add_argument("--warmup_proportion", type=float, metavar="FRACTION",
                           help="share of the optimizer steps spent warming up; default: the "
                                "JSON's scheduler.params.warmup_proportion")
    parser.add_argument("--no_save_model", action="store_true",
                        help="do not write OUTPUT_DIR/model (about 440 MB per BERT-base run: "
                             "for sweeps over seeds and learning rates)")
    parser.add_argument("--local_rank", type=int, default=None,
                        help=argparse.SUPPRESS)  # passed by the deepspeed launcher; LOCAL_RANK rules
    values = vars(parser.parse_args(argv))
    values.pop("local_rank")
    return FinetuneArgs(**values)


def with_total_steps(setup: TrainingSetup, total_steps: int) -> TrainingSetup:
    """The setup with our LR schedule running over `total_steps` optimizer steps."""
    spec = setup.lr_schedule
    if spec is None or spec.name not in SCHEDULES:
        return setup
    return dataclasses.replace(setup, lr_schedule=dataclasses.replace(
        spec, params={**spec.params, "total_steps": total_steps}))


class Finetuner:
    def __init__(self, args: FinetuneArgs):
        self.args = args
        # The user's input first, cheapest first: task, data files, --init, configuration.
        self.spec = get_task(args.task)
        check_task_files(args.data_dir, self.spec)
        if not Path(args.init).is_dir():
            raise CheckpointError(f"--init {args.init}: no such directory (expected a "
                                  "pretraining output dir, checkpoint root or tag dir, or an "
                                  "hf_export directory)")
        if is_finetuned_dir(args.init):
            raise CheckpointError(f"--init {args.init} is a fine-tuned GLUE model; --init takes "
                                  "a pretrained model (a pretraining output dir, checkpoint or "
                                  "hf_export directory)")
        self.output_dir = Path(args.output_dir)
        self.settings, self.setup = read_finetune_config(args.deepspeed_config,
                                                         torch.cuda.is_available(), args.overrides)
        self.config_source = args.overrides.describe(args.deepspeed_config)
        init_distributed()
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        setup_console_logging(self.rank)
        self.batches = batches = resolve_batch_sizes(self.setup.deepspeed, self.world_size,
                                                     self.config_source)

        pretrained = read_pretrained(args.init)
        self.init_source = pretrained.source
        self.model_config = (BertConfig.from_json(args.model_config) if args.model_config
                             else pretrained.config)
        check_setup_against_model(self.setup, self.model_config, args.model_config or args.init,
                                  self.settings.max_seq_length, "glue.max_seq_length",
                                  fp16_on_this_cpu=not torch.cuda.is_available())
        _seed_everything(args.seed)  # the same fresh head on every rank
        model = BertForSequenceClassification.from_pretrained(  # strict: fails before the data
            pretrained, self.spec.num_outputs, self.model_config)
        self.train_set, self.dev_sets = self._load_data(pretrained)
        del pretrained
        micro, accumulation = (batches["train_micro_batch_size_per_gpu"],
                               batches["gradient_accumulation_steps"])
        self.micro_batches_per_epoch = math.ceil(math.ceil(len(self.train_set) / self.world_size) / micro)
        self.total_steps = self.settings.epochs * self.micro_batches_per_epoch // accumulation
        if self.total_steps == 0:
            raise ConfigError(f"{len(self.train_set)} training examples make no optimizer step "
                              f"with batch {batches['train_batch_size']}")
        self.setup = with_total_steps(self.setup, self.total_steps)
        self.engine = initialize_engine(model, self.setup)
        torch.manual_seed(args.seed + self.rank)  # dropout differs per rank
        self.sampler = torch.utils.data.DistributedSampler(
            self.train_set, num_replicas=self.world_size, rank=self.rank, shuffle=True,
            seed=args.seed, drop_last=False)
        self.loader = torch.utils.data.DataLoader(
            self.train_set, batch_size=micro, sampler=self.sampler,
            collate_fn=self.train_set.collate)
        self.sink = make_sink(self.rank, RunDir(self.output_dir))  # the same tensorboard/, metrics.jsonl
        self.predictions: dict[str, np.ndarray] = {}  # per dev set, from the last evaluation
        if self.rank == 0:
            _write_json(self.output_dir / SETTINGS, self.resolved_settings())

    def resolved_settings(self) -> dict:
        """The values this run trains with, whichever of file and command line set them."""
        optimizer = (self.setup.client_optimizer.params if self.setup.client_optimizer
                     else self.setup.deepspeed.get("optimizer", {}).get("params", {}))
        schedule = self.setup.lr_schedule
        return {
            "task": self.spec.name, "init": self.init_source, "data_dir": self.args.data_dir,
            "seed": self.args.seed, "deepspeed_config": self.args.deepspeed_config,
            "command_line_overrides": self.args.overrides.given(),
            "learning_rate": optimizer.get("lr"),
            "num_train_epochs": self.settings.epochs,
            "train_batch_size": self.batches["train_batch_size"],
            "per_device_train_batch_size": self.batches["train_micro_batch_size_per_gpu"],
            "gradient_accumulation_steps": self.batches["gradient_accumulation_steps"],
            "world_size": self.world_size,
            "warmup_proportion": schedule.params.get("warmup_proportion") if schedule else None,
            "lr_schedule": schedule.name if schedule else None,
            "optimizer_steps": self.total_steps,
            "max_seq_length": self.settings.max_seq_length,
            "eval_batch_size": self.settings.eval_batch_size,
        }

    def _load_data(self, pretrained) -> tuple[GlueDataset, dict[str, GlueDataset]]:
        vocab = Path(self.args.vocab) if self.args.vocab else pretrained.vocab_path
        if vocab is None or not vocab.is_file():
            raise ConfigError(f"no vocab.txt for {pretrained.source} (none recorded, or the "
                              "recorded one is missing): pass --vocab")
        lowercase = self.args.lowercase if self.args.lowercase is not None else pretrained.lowercase
        if lowercase is None:
            raise ConfigError(f"{pretrained.source} does not record whether the pretraining text "
                              "was lowercased: pass --lowercase or --cased")
        self.vocab, self.lowercase = vocab, lowercase
        tokenizer = build_bert_tokenizer(vocab, lowercase, self.settings.max_seq_length)
        pad_id = self.model_config.pad_token_id
        if tokenizer.token_to_id("[PAD]") != pad_id:
            raise ConfigError(f"{vocab}: [PAD] has id {tokenizer.token_to_id('[PAD]')}, the model's "
                              f"pad_token_id is {pad_id}")
        if tokenizer.get_vocab_size() > self.model_config.vocab_size:
            raise ConfigError(f"{vocab} has {tokenizer.get_vocab_size()} tokens, the model "
                              f"{self.model_config.vocab_size} embeddings")
        data_dir = self.args.data_dir
        train = encode(read_split(data_dir, self.spec, "train"), tokenizer, self.spec, pad_id)
        dev = {split: encode(read_split(data_dir, self.spec, split), tokenizer, self.spec, pad_id)
               for split in self.spec.dev_splits}
        LOG.info("%s: %d train examples, dev %s", self.spec.name, len(train),
                 {split: len(data) for split, data in dev.items()})
        return train, dev

    # ------------------------------------------------------------------ loop
    def train(self) -> dict:
        started = time.perf_counter()
        history = []
        interval_loss, interval_batches = 0.0, 0
        self.engine.train()
        for epoch in range(self.settings.epochs):
            self.sampler.set_epoch(epoch)
            bar = self._progress_bar(epoch)
            for batch in bar:
                output = self.engine(batch.to(self.engine.device))
                self.engine.backward(output.loss)
                step_before = self.engine.global_steps
                self.engine.step()
                interval_loss += output.loss.item()
                interval_batches += 1
                step = self.engine.global_steps
                if step != step_before and (step % self.settings.log_every == 0
                                            or step == self.total_steps):
                    self.sink.scalars(step, {names.TRAIN_LOSS: interval_loss / interval_batches,
                                             names.LR: self.engine.get_lr()[0]})
                    bar.set_postfix(loss=f"{interval_loss / interval_batches:.4f}", refresh=False)
                    interval_loss, interval_batches = 0.0, 0
            bar.close()
            metrics = self.evaluate()
            step = self.engine.global_steps
            self.sink.scalars(step, {f"eval/{split}/{name}": value
                                     for split, values in metrics.items()
                                     for name, value in values.items()})
            LOG.info("%s epoch %d (step %d): %s", self.spec.name, epoch + 1, step, metrics)
            history.append({"epoch": epoch + 1, "step": step, "metrics": metrics})
        results = self._results(history, time.perf_counter() - started)
        # Every rank takes part (ZeRO-3 gathers the weights).
        weights = None if self.args.no_save_model else self._full_state_dict()
        if self.rank == 0:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._write_predictions()
            if weights is not None:
                model_dir = save_finetuned(weights, self.model_config, self.spec,
                                           self.output_dir / MODEL_DIR, self.vocab,
                                           self.lowercase, self.settings.max_seq_length,
                                           self.init_source)
                LOG.info("saved the fine-tuned model to %s", model_dir)
            _write_json(self.output_dir / RESULTS, _json_safe(results))
        self.sink.close()
        return results

    def _progress_bar(self, epoch: int):
        """tqdm over the epoch's micro-batches on rank 0: redrawn each second on a
        terminal, every 30 s into a log file (a SLURM log is not flooded)."""
        from tqdm import tqdm

        interactive = sys.stderr.isatty()
        return tqdm(self.loader, desc=f"{self.spec.name} epoch {epoch + 1}/{self.settings.epochs}",
                    unit="batch", disable=self.rank != 0, dynamic_ncols=interactive,
                    mininterval=PROGRESS_INTERVAL_S[interactive], file=sys.stderr)

    def _full_state_dict(self) -> Optional[dict[str, torch.Tensor]]:
        """Rank 0: the module's weights on the CPU in fp32, as evaluated (under ZeRO-3
        gathered from every rank, which all call this); other ranks: None."""
        module = self.engine.module
        if self.engine.zero_optimization_stage() == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                return ({k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}
                        if self.rank == 0 else None)
        return ({k: v.detach().float().cpu() for k, v in module.state_dict().items()}
                if self.rank == 0 else None)

    def _write_predictions(self) -> None:
        for split, predictions in self.predictions.items():
            gold = self.dev_sets[split].labels.numpy()
            rows = ["index\tprediction\tlabel"]
            for index, (predicted, label) in enumerate(zip(predictions, gold)):
                rows.append(f"{index}\t{self._label_text(predicted)}\t{self._label_text(label)}")
            path = self.output_dir / PREDICTIONS.format(split=split)
            partial = path.with_name(path.name + ".partial")
            partial.write_text("\n".join(rows) + "\n")
            partial.replace(path)

    def _label_text(self, value) -> str:
        return (f"{float(value):.6f}" if self.spec.is_regression
                else self.spec.labels[int(value)])

    @torch.no_grad()
    def evaluate(self) -> dict[str, dict[str, float]]:
        """Every rank scores a strided share of each dev set; all ranks get all metrics."""
        self.engine.eval()
        metrics = {}
        for split, dataset in self.dev_sets.items():
            indices = list(range(self.rank, len(dataset), self.world_size))
            logits = [self.engine(dataset.collate(indices[i:i + self.settings.eval_batch_size])
                                  .to(self.engine.device)).logits.float().cpu()
                      for i in range(0, len(indices), self.settings.eval_batch_size)]
            local = (indices, torch.cat(logits).numpy() if logits else
                     np.zeros((0, self.spec.num_outputs), dtype=np.float32))
            shares = [None] * self.world_size
            dist.all_gather_object(shares, local)
            all_logits = np.zeros((len(dataset), self.spec.num_outputs), dtype=np.float32)
            for share_indices, share_logits in shares:
                all_logits[share_indices] = share_logits
            predictions = predictions_from_logits(self.spec, all_logits)
            self.predictions[split] = predictions
            metrics[split] = compute_metrics(self.spec, predictions, dataset.labels.numpy())
        self.engine.train()
        return metrics

    def _results(self, history: list[dict], seconds: float) -> dict:
        return {
            "task": self.spec.name, "seed": self.args.seed, "init": self.init_source,
            "metrics": history[-1]["metrics"], "history": history,
            "train_examples": len(self.train_set),
            "dev_examples": {split: len(data) for split, data in self.dev_sets.items()},
            "optimizer_steps": self.engine.global_steps, "train_time_s": seconds,
            "world_size": self.world_size, "settings": dataclasses.asdict(self.settings),
            "deepspeed_setup": self.setup.summary(), "model_config": self.model_config.to_dict(),
            "vocab": str(self.vocab), "lowercase": self.lowercase, "args": dataclasses.asdict(self.args),
            "resolved": self.resolved_settings(),
        }


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _write_json(path: Path, values: dict) -> None:
    """Written whole under a temporary name, then renamed: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(values, indent=2) + "\n")
    partial.replace(path)


def _json_safe(value):
    """NaN (a correlation against constant predictions) becomes null in the JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        finetuner = Finetuner(args)
    except (ValueError, CheckpointError) as err:  # ConfigError, GlueDataError: bad input
        print(f"error: {err}", file=sys.stderr)
        return 2
    finetuner.train()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
