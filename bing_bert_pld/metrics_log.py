"""Where training metrics go and how they are read back: TensorBoard and metrics.jsonl, written by rank 0 only.

Only global rank 0 writes; every other rank gets the NullSink, so call sites never
test the rank themselves.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping, Protocol

from .run.layout import RunDir

LOG = logging.getLogger("bing_bert_pld")


class MetricsSink(Protocol):
    def scalars(self, step: int, values: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


class NullSink:
    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardSink:
    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class JsonLinesSink:
    """metrics.jsonl: the same numbers as TensorBoard, for scripts and tests."""

    def __init__(self, path: Path):
        self.file = open(path, "a", encoding="utf-8")

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        self.file.write(json.dumps({"step": step, **values}) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class FanOut:
    def __init__(self, *sinks: MetricsSink):
        self.sinks = sinks

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        for sink in self.sinks:
            sink.scalars(step, values)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def make_sink(global_rank: int, run_dir: RunDir) -> MetricsSink:
    if global_rank != 0:
        return NullSink()
    run_dir.root.mkdir(parents=True, exist_ok=True)
    return FanOut(TensorBoardSink(run_dir.tensorboard), JsonLinesSink(run_dir.metrics))


def read_metrics(run_dir: RunDir) -> list[dict]:
    """The rows JsonLinesSink wrote to a run's metrics.jsonl, in order; [] before the first."""
    if not run_dir.metrics.is_file():
        return []
    return [json.loads(line) for line in run_dir.metrics.read_text().splitlines() if line.strip()]


def setup_console_logging(global_rank: int) -> None:
    logging.basicConfig(
        level=logging.INFO if global_rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank{global_rank}] %(message)s", datefmt="%H:%M:%S")
