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
sequence length and the evaluation batch size. The command line owns the run.

Writes to --output_dir: results.json (final dev metrics, every epoch's metrics, the
settings), tensorboard/ and metrics.jsonl (train/loss, train/lr, eval/<split>/<metric>
against the optimizer step). `python -m bing_bert_pld.glue.summary DIR` tabulates many
runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from ..config import BertConfig, ConfigError
from ..ds_config import (TrainingSetup, build_training_setup, check_setup_against_model, read_json,
                         resolve_batch_sizes)
from ..engine import init_distributed, initialize_engine
from ..lr_schedules import SCHEDULES
from ..metrics_log import LOG, make_sink, setup_console_logging
from ..pretrained import read_pretrained
from .data import GlueDataset, build_tokenizer, encode, get_task, read_split
from .metrics import compute_metrics, predictions_from_logits
from .model import BertForSequenceClassification

GLUE_KEY = "glue"
RESULTS = "results.json"


@dataclass(frozen=True)
class FinetuneSettings:
    """The "glue" block of the fine-tuning JSON."""

    epochs: int = 3
    max_seq_length: int = 128
    eval_batch_size: int = 64
    log_every: int = 50  # optimizer steps between train/loss points

    @classmethod
    def from_dict(cls, values: dict, source: str) -> "FinetuneSettings":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {unknown} in '{GLUE_KEY}'; "
                              f"known keys are {sorted(known)}")
        settings = cls(**values)
        for name in known:
            value = getattr(settings, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{source}: {GLUE_KEY}.{name} must be a positive integer, "
                                  f"got {value!r}")
        return settings


def read_finetune_config(path: str | Path, cuda_available: bool
                         ) -> tuple[FinetuneSettings, TrainingSetup]:
    """The "glue" block, and DeepSpeed's part with a placeholder total_steps of 1 in the
    schedule: the number of optimizer steps follows from the data and glue.epochs, so the
    file must not set it; with_total_steps sets it once the data is read."""
    values = read_json(path)
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


def parse_args(argv: Optional[Sequence[str]] = None) -> FinetuneArgs:
    parser = argparse.ArgumentParser(description="Fine-tune on one GLUE task")
    parser.add_argument("--task", required=True, help="CoLA, SST-2, MRPC, STS-B, QQP, MNLI, "
                        "QNLI, RTE or WNLI (case and dashes ignored)")
    parser.add_argument("--data_dir", required=True, help="the GLUE root: <data_dir>/<TASK>/train.tsv")
    parser.add_argument("--init", required=True,
                        help="pretraining output dir, checkpoint root or tag dir, or an export dir")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--deepspeed_config", required=True)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--model_config",
                        help="build the model from this config instead of the checkpoint's")
    parser.add_argument("--vocab", help="vocab.txt (default: the checkpoint's)")
    case = parser.add_mutually_exclusive_group()
    case.add_argument("--lowercase", dest="lowercase", action="store_true", default=None,
                      help="lowercase the text (default: as the checkpoint records)")
    case.add_argument("--cased", dest="lowercase", action="store_false")
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
        self.spec = get_task(args.task)
        self.output_dir = Path(args.output_dir)
        self.settings, self.setup = read_finetune_config(args.deepspeed_config,
                                                         torch.cuda.is_available())
        init_distributed()
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        setup_console_logging(self.rank)
        batches = resolve_batch_sizes(self.setup.deepspeed, self.world_size, args.deepspeed_config)

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
        self.sink = make_sink(self.rank, self.output_dir)

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
        tokenizer = build_tokenizer(vocab, lowercase, self.settings.max_seq_length)
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
            for batch in self.loader:
                output = self.engine(batch.to(self.engine.device))
                self.engine.backward(output.loss)
                step_before = self.engine.global_steps
                self.engine.step()
                interval_loss += output.loss.item()
                interval_batches += 1
                step = self.engine.global_steps
                if step != step_before and (step % self.settings.log_every == 0
                                            or step == self.total_steps):
                    self.sink.scalars(step, {"train/loss": interval_loss / interval_batches,
                                             "train/lr": self.engine.get_lr()[0]})
                    interval_loss, interval_batches = 0.0, 0
            metrics = self.evaluate()
            step = self.engine.global_steps
            self.sink.scalars(step, {f"eval/{split}/{name}": value
                                     for split, values in metrics.items()
                                     for name, value in values.items()})
            LOG.info("%s epoch %d (step %d): %s", self.spec.name, epoch + 1, step, metrics)
            history.append({"epoch": epoch + 1, "step": step, "metrics": metrics})
        results = self._results(history, time.perf_counter() - started)
        if self.rank == 0:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / RESULTS).write_text(json.dumps(_json_safe(results), indent=2) + "\n")
        self.sink.close()
        return results

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
        }


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
    Finetuner(parse_args(argv)).train()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
