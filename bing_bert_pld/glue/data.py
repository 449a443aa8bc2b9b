"""The nine GLUE tasks, read from the layout the GLUE download script writes.

    <data_dir>/<TASK>/train.tsv, dev.tsv       (MNLI: dev_matched.tsv, dev_mismatched.tsv)

Each task's columns are taken by header name, so the extra columns of MNLI, STS-B and
QQP are ignored wherever they sit. CoLA alone has no header (columns: source, label,
original label, sentence). Files are read as plain tab-separated lines, never through a
CSV quote parser: GLUE text contains unbalanced quotes. A row with too few fields (QQP's
train set has a few) is skipped and counted in the log; an unknown label is an error.

Text is tokenized like the pretraining data, by `encode` with the tokenizer of
bing_bert_pld.tokenizer.build_bert_tokenizer: BERT WordPiece over the checkpoint's
vocab.txt with its lowercasing, [CLS] a [SEP] (b [SEP]), segment ids 0 / 1, pairs
truncated longest-first to max_seq_length.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

logger = logging.getLogger(__name__)

Column = Union[str, int]  # a header name, or an index for CoLA's header-less files


class GlueDataError(ValueError):
    """A GLUE file is missing or malformed; the message names the file (and line)."""


@dataclass(frozen=True)
class TaskSpec:
    name: str  # the directory name in the GLUE layout
    text_a: Column
    text_b: Optional[Column]
    label: Column
    labels: Optional[tuple[str, ...]]  # None: regression (STS-B)
    metrics: tuple[str, ...]  # the first one selects among epochs / seeds in reports
    header: bool = True
    dev_splits: tuple[str, ...] = ("dev",)

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_outputs(self) -> int:
        return 1 if self.labels is None else len(self.labels)


BINARY = ("0", "1")
NLI2 = ("entailment", "not_entailment")

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (
    TaskSpec("CoLA", text_a=3, text_b=None, label=1, labels=BINARY, metrics=("mcc",),
             header=False),
    TaskSpec("SST-2", "sentence", None, "label", BINARY, ("accuracy",)),
    TaskSpec("MRPC", "#1 String", "#2 String", "Quality", BINARY, ("f1", "accuracy")),
    TaskSpec("STS-B", "sentence1", "sentence2", "score", None, ("pearson", "spearman")),
    TaskSpec("QQP", "question1", "question2", "is_duplicate", BINARY, ("f1", "accuracy")),
    TaskSpec("MNLI", "sentence1", "sentence2", "gold_label",
             ("contradiction", "entailment", "neutral"), ("accuracy",),
             dev_splits=("dev_matched", "dev_mismatched")),
    TaskSpec("QNLI", "question", "sentence", "label", NLI2, ("accuracy",)),
    TaskSpec("RTE", "sentence1", "sentence2", "label", NLI2, ("accuracy",)),
    TaskSpec("WNLI", "sentence1", "sentence2", "label", BINARY, ("accuracy",)),
)}


def _key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def get_task(name: str) -> TaskSpec:
    """A task by name, case and dashes ignored: "sst2", "SST-2", "sts-b", "mnli"."""
    for spec in TASKS.values():
        if _key(spec.name) == _key(name):
            return spec
    close = difflib.get_close_matches(_key(name), [_key(t) for t in TASKS], n=1, cutoff=0.5)
    hint = f"did you mean {next(t for t in TASKS if _key(t) == close[0])!r}? " if close else ""
    raise GlueDataError(f"unknown GLUE task {name!r}; {hint}the tasks are {list(TASKS)}")


def task_dir(data_dir: str | Path, spec: TaskSpec) -> Path:
    """<data_dir>/<TASK>, also accepting <data_dir> itself or another spelling of TASK."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise GlueDataError(f"data directory {data_dir} does not exist (expected the GLUE "
                            f"root holding {spec.name}/train.tsv)")
    if (data_dir / spec.name).is_dir():
        return data_dir / spec.name
    if data_dir.is_dir():
        for child in sorted(data_dir.iterdir()):
            if child.is_dir() and _key(child.name) == _key(spec.name):
                return child
        if (data_dir / "train.tsv").is_file() and _key(data_dir.name) == _key(spec.name):
            return data_dir
    raise GlueDataError(f"no {spec.name} directory under {data_dir} (expected "
                        f"{data_dir / spec.name}/train.tsv and dev.tsv, as the GLUE download writes)")


def check_task_files(data_dir: str | Path, spec: TaskSpec) -> list[Path]:
    """The train and dev files of the task, every one checked to exist (cheap, before a
    model is loaded); the error names each missing file."""
    directory = task_dir(data_dir, spec)
    paths = [directory / f"{split}.tsv" for split in ("train",) + spec.dev_splits]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise GlueDataError(f"{spec.name}: {', '.join(missing)} not found (a task directory "
                            f"holds {', '.join(p.name for p in paths)})")
    return paths


@dataclass(frozen=True)
class Example:
    text_a: str
    text_b: Optional[str]
    label: Union[int, float]  # class index, or the STS-B score


def read_split(data_dir: str | Path, spec: TaskSpec, split: str) -> list[Example]:
    path = task_dir(data_dir, spec) / f"{split}.tsv"
    if not path.is_file():
        raise GlueDataError(f"{path} not found")
    with open(path, encoding="utf-8-sig", newline="\n") as file:  # -sig: MRPC starts with a BOM
        lines = [line.rstrip("\n").rstrip("\r") for line in file]
    if spec.header:
        if not lines:
            raise GlueDataError(f"{path} is empty (expected a header line)")
        header, lines, first = lines[0].split("\t"), lines[1:], 2
    else:
        header, first = [], 1
    columns = [_column_index(col, header, path) for col in (spec.text_a, spec.text_b, spec.label)
               if col is not None]
    needed = max(columns) + 1
    examples, skipped = [], 0
    for number, line in enumerate(lines, start=first):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) < needed:
            skipped += 1
            continue
        text_a = cells[columns[0]]
        text_b = cells[columns[1]] if spec.text_b is not None else None
        examples.append(Example(text_a, text_b, _label(spec, cells[columns[-1]], path, number)))
    if skipped:
        logger.warning("%s: skipped %d row(s) with fewer than %d fields", path, skipped, needed)
    if not examples:
        raise GlueDataError(f"{path} holds no examples")
    return examples


def _column_index(column: Column, header: list[str], path: Path) -> int:
    if isinstance(column, int):
        return column
    if column not in header:
        raise GlueDataError(f"{path}: column {column!r} not in the header {header}")
    return header.index(column)


def _label(spec: TaskSpec, value: str, path: Path, line: int) -> Union[int, float]:
    value = value.strip()
    if spec.labels is None:
        try:
            return float(value)
        except ValueError:
            raise GlueDataError(f"{path}:{line}: score {value!r} is not a number") from None
    if value not in spec.labels:
        raise GlueDataError(f"{path}:{line}: label {value!r} is not one of {list(spec.labels)}")
    return spec.labels.index(value)


# ---------------------------------------------------------------- token ids

@dataclass
class GlueBatch:
    """One micro-batch; the field names of the pretraining batches where they overlap."""

    input_ids: torch.Tensor  # (B, T) int64
    input_mask: torch.Tensor  # (B, T) 1 = token, 0 = padding
    segment_ids: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B,) int64 classes, or float32 scores

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str) -> "GlueBatch":
        return GlueBatch(**{f.name: getattr(self, f.name).to(device, non_blocking=True)
                            for f in fields(self)})


class GlueDataset(torch.utils.data.Dataset):
    """Token ids of one split, padded per batch by `collate`."""

    def __init__(self, input_ids: list[list[int]], segment_ids: list[list[int]],
                 labels: Sequence[Union[int, float]], regression: bool, pad_id: int):
        self.input_ids, self.segment_ids = input_ids, segment_ids
        self.labels = torch.tensor(labels, dtype=torch.float32 if regression else torch.long)
        self.pad_id = pad_id

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> int:
        return index

    def collate(self, indices: list[int]) -> GlueBatch:
        length = max(len(self.input_ids[i]) for i in indices)
        input_ids = torch.full((len(indices), length), self.pad_id, dtype=torch.long)
        segment_ids = torch.zeros((len(indices), length), dtype=torch.long)
        input_mask = torch.zeros((len(indices), length), dtype=torch.long)
        for row, index in enumerate(indices):
            ids = self.input_ids[index]
            input_ids[row, :len(ids)] = torch.tensor(ids)
            segment_ids[row, :len(ids)] = torch.tensor(self.segment_ids[index])
            input_mask[row, :len(ids)] = 1
        return GlueBatch(input_ids, input_mask, segment_ids, self.labels[indices])


def encode(examples: list[Example], tokenizer, spec: TaskSpec, pad_id: int) -> GlueDataset:
    inputs = [ex.text_a if ex.text_b is None else (ex.text_a, ex.text_b) for ex in examples]
    encodings = tokenizer.encode_batch(inputs)
    return GlueDataset([enc.ids for enc in encodings], [enc.type_ids for enc in encodings],
                       [ex.label for ex in examples], spec.is_regression, pad_id)
