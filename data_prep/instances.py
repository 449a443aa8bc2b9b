"""Stage `instances`: sentence units -> tokenized, paired, masked records in shuffle buckets.

Output directory:
  plan.json        settings, vocabulary hash, the sentences it read, bucket count
  vocab.txt        the vocabulary used (the shard stage copies it next to the shards)
  unit_00000.npy   the unit's records (records.py), sorted by (split, bucket)
  unit_00000.json  counts and the offsets of each (split, bucket) slice; written last,
                   so its presence marks the unit complete
Each unit's randomness comes from SeedSequence(seed, spawn_key=(UNIT_STREAM, unit)):
documents' train/validation split, segment pairs, masks and bucket draws are the same
whatever the number of processes. Documents, not instances, are split between train and
validation, so duplicated copies of a text never straddle the two.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import shutil
from array import array
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bing_bert_pld.tokenizer import CLS, MASK, SEP, build_word_tokenizer
from data_prep.errors import DataPrepError
from data_prep.fsutil import atomic_path, claim_stage_dir, fingerprint, read_json, read_plan, write_json
from data_prep.masking import MaskingConfig, MaskVocab, mask_batch
from data_prep.pairs import PairBuilder
from data_prep.parallel import run_parallel
from data_prep.records import SPLITS, record_dtype
from data_prep.sentences import summarize, unit_text_path
from data_prep.sentences import unit_stats_path as sentences_unit_stats_path
from data_prep.tokenizer import WordEncoder
from data_prep.vocab import Vocab, load_vocab

log = logging.getLogger(__name__)

VOCAB_FILE = "vocab.txt"
PLAN_VERSION = 2  # 2: truncation draws with getrandbits; bucket draws before masking
_MASK_BATCH = 4096  # instances masked at once: bounds the (batch, seq_len) temporaries
# First word of every spawn key, so unit streams and shuffle streams never coincide.
UNIT_STREAM, SHUFFLE_STREAM = 0, 1


@dataclass(frozen=True)
class InstanceConfig:
    seq_len: int = 128
    max_pred: int = 20
    duplication: int = 5  # passes over the corpus, each with new segments and masks
    short_seq_prob: float = 0.1
    validation_fraction: float = 0.01  # of documents
    seed: int = 12345
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    # Text bytes x duplication per shuffle bucket. The shard stage holds one bucket
    # (about 0.7x this in records) twice, so this bounds its memory per process.
    bucket_mb: int = 64

    def check(self) -> None:
        """Reject settings that cannot produce valid instances, before any work."""
        if self.seq_len < 5:
            raise DataPrepError(f"seq_len {self.seq_len} is too small for two segments: "
                                f"[CLS] A [SEP] B [SEP] needs at least 5")
        if self.seq_len > np.iinfo(np.uint16).max:
            raise DataPrepError(f"seq_len {self.seq_len} is larger than {np.iinfo(np.uint16).max}")
        if not 1 <= self.max_pred <= self.seq_len - 3:
            raise DataPrepError(f"max_pred {self.max_pred} must be between 1 and seq_len - 3 = {self.seq_len - 3}")
        if self.duplication < 1:
            raise DataPrepError(f"duplication factor must be at least 1, got {self.duplication}")
        for name, value in (("short_seq_prob", self.short_seq_prob),
                            ("validation_fraction", self.validation_fraction),
                            ("masking probability", self.masking.probability)):
            if not 0 <= value <= 1:
                raise DataPrepError(f"{name} must be in [0, 1], got {value}")
        if self.masking.mask_fraction + self.masking.random_fraction > 1:
            raise DataPrepError("mask_fraction + random_fraction must not exceed 1")
        if self.bucket_mb < 1:
            raise DataPrepError(f"bucket_mb must be at least 1, got {self.bucket_mb}")

    def describe(self) -> dict:
        described = asdict(self)
        described["masking"] = self.masking.describe(self.max_pred)
        return described


@dataclass(frozen=True)
class InstanceUnitTask:
    index: int
    source_id: int
    text_path: str
    out_dir: str
    vocab_path: str
    lowercase: bool
    config: InstanceConfig
    buckets: int


def plan_instances(sentences_dir: Path, vocab: Vocab, lowercase: bool, config: InstanceConfig) -> dict:
    config.check()
    sentences_plan = read_plan(sentences_dir, "sentences")
    per_source = summarize(sentences_dir)
    text_bytes = sum(s["text_bytes"] for s in per_source.values())
    _check_validation_split(sentences_dir, len(sentences_plan["units"]), config)
    buckets = max(1, math.ceil(text_bytes * config.duplication / (config.bucket_mb << 20)))
    sources = sorted(sentences_plan["sources"])
    if len(sources) > np.iinfo(np.uint8).max + 1:
        raise DataPrepError(f"at most 256 sources per run, got {len(sources)}")
    plan = {
        "version": PLAN_VERSION, "config": config.describe(), "lowercase": lowercase,
        "vocab": {"sha256": vocab.sha256, "size": vocab.size},
        "sentences": {"dir": str(sentences_dir), "fingerprint": sentences_plan["fingerprint"],
                      "cleaning": sentences_plan["cleaning"], "sources": sentences_plan["sources"],
                      "counts": per_source},
        "buckets": buckets, "source_names": sources,
        "units": [sources.index(u["source"]) for u in sentences_plan["units"]],
    }
    plan["fingerprint"] = fingerprint([PLAN_VERSION, plan["config"], lowercase, plan["vocab"],
                                       sentences_plan["fingerprint"], buckets])
    return plan


def run_instances(plan: dict, vocab: Vocab, out_dir: Path, processes: int, show_progress: bool = True) -> None:
    claim_stage_dir(out_dir, plan, "instances")
    vocab_copy = out_dir / VOCAB_FILE
    if not vocab_copy.exists():
        with atomic_path(vocab_copy) as tmp:
            shutil.copyfile(vocab.path, tmp)
    config = _config_from_plan(plan)
    sentences_dir = Path(plan["sentences"]["dir"])
    tasks = [InstanceUnitTask(i, source_id, str(unit_text_path(sentences_dir, i)), str(out_dir), str(vocab_copy),
                              plan["lowercase"], config, plan["buckets"])
             for i, source_id in enumerate(plan["units"]) if not unit_stats_path(out_dir, i).exists()]
    if len(tasks) < len(plan["units"]):
        log.info("instances: %d of %d units already done, skipped", len(plan["units"]) - len(tasks), len(plan["units"]))
    run_parallel(process_unit, tasks, processes, "instances",
                 lambda r: (r["text_bytes"], {"instances": sum(r["instances"].values())}),
                 total=sum(Path(t.text_path).stat().st_size for t in tasks), show_progress=show_progress)


def _config_from_plan(plan: dict) -> InstanceConfig:
    described = dict(plan["config"])
    masking = dict(described.pop("masking"))
    masking.pop("keep_fraction")
    masking.pop("max_predictions_per_seq")
    return InstanceConfig(**described, masking=MaskingConfig(**masking))


def unit_records_path(out_dir: Path, index: int) -> Path:
    return out_dir / f"unit_{index:05d}.npy"


def unit_stats_path(out_dir: Path, index: int) -> Path:
    return out_dir / f"unit_{index:05d}.json"


@functools.lru_cache(maxsize=1)
def _cached_encoder(vocab_path: str, lowercase: bool) -> WordEncoder:
    return WordEncoder(build_word_tokenizer(vocab_path, lowercase))


@functools.lru_cache(maxsize=2)
def _cached_vocab(vocab_path: str) -> tuple[Vocab, MaskVocab]:
    vocab = load_vocab(Path(vocab_path))
    return vocab, MaskVocab(vocab.id_of(MASK), vocab.replacement_ids(), vocab.continuation_mask())


def _unit_rngs(seed: int, unit: int) -> tuple[random.Random, np.random.Generator]:
    """Python's RNG for the per-sentence decisions (fast scalars), numpy's for masks."""
    py_seed, np_seed = np.random.SeedSequence(seed, spawn_key=(UNIT_STREAM, unit)).spawn(2)
    return random.Random(int(py_seed.generate_state(1, np.uint64)[0])), np.random.default_rng(np_seed)


def _validation_draws(rng: random.Random, documents: int, fraction: float) -> list[bool]:
    """Which documents of a unit are held out: the unit RNG's first draws."""
    return [rng.random() < fraction for _ in range(documents)]


def _check_validation_split(sentences_dir: Path, units: int, config: InstanceConfig) -> None:
    """Replay the held-out draws from the document counts, to fail before the work
    rather than after it when the corpus has too few documents for the fraction."""
    if config.validation_fraction == 0:
        return
    for unit in range(units):
        documents = read_json(sentences_unit_stats_path(sentences_dir, unit))["documents_kept"]
        if any(_validation_draws(_unit_rngs(config.seed, unit)[0], documents, config.validation_fraction)):
            return
    raise DataPrepError(f"no document was drawn for validation at --validation-fraction "
                        f"{config.validation_fraction}: the corpus has too few documents; raise the fraction "
                        f"or set it to 0")


def process_unit(task: InstanceUnitTask) -> dict:
    config = task.config
    vocab, mask_vocab = _cached_vocab(task.vocab_path)
    special = vocab.special_ids()
    py_rng, np_rng = _unit_rngs(config.seed, task.index)
    text = Path(task.text_path).read_text(encoding="utf-8")
    documents = [doc.split("\n") for doc in text.split("\n\n") if doc]
    validation = _validation_draws(py_rng, len(documents), config.validation_fraction)
    flat, lengths = _cached_encoder(task.vocab_path, task.lowercase).encode([s for doc in documents for s in doc])
    # Sentences that tokenize to nothing are removed, then documents left empty.
    nonempty = lengths > 0
    doc_of_sentence = np.repeat(np.arange(len(documents)), [len(d) for d in documents])
    per_doc = np.bincount(doc_of_sentence[nonempty], minlength=len(documents))
    keep = np.flatnonzero(per_doc)
    doc_offsets = np.concatenate([[0], np.cumsum(per_doc[keep])]).tolist()
    validation = np.array(validation, dtype=bool)[keep]
    sentence_offsets = np.concatenate([[0], np.cumsum(lengths[nonempty])]).tolist()

    builder = PairBuilder(sentence_offsets, doc_offsets, config.seq_len - 3, config.short_seq_prob)
    pairs = array("q")
    pairs_per_doc = []
    for _ in range(config.duplication):
        for doc in range(len(keep)):
            before = len(pairs)
            builder.add_document(doc, py_rng, pairs)
            pairs_per_doc.append((len(pairs) - before) // 5)
    doc_of_pair = np.repeat(np.tile(np.arange(len(keep)), config.duplication), pairs_per_doc)
    split = validation[doc_of_pair].astype(np.int64)
    bucket = np_rng.integers(task.buckets, size=len(split))
    key = split * task.buckets + bucket
    # Records are laid out already sorted by (split, bucket): no second copy to sort.
    order = np.argsort(key, kind="stable")
    pairs_array = np.frombuffer(pairs, dtype=np.int64).reshape(-1, 5)[order]

    records = np.zeros(len(pairs_array), dtype=record_dtype(config.seq_len, config.max_pred, vocab.size))
    for start in range(0, len(records), _MASK_BATCH):
        _fill_records(records[start:start + _MASK_BATCH], pairs_array[start:start + _MASK_BATCH], flat, special,
                      mask_vocab, config, np_rng)
    records["source"] = task.source_id
    out_dir = Path(task.out_dir)
    with atomic_path(unit_records_path(out_dir, task.index)) as tmp, open(tmp, "wb") as f:
        np.save(f, records)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(key, minlength=2 * task.buckets))])
    stats = {
        "source_id": task.source_id,
        "text_bytes": Path(task.text_path).stat().st_size,
        "tokens": int(flat.size),
        "documents": {name: int((validation == i).sum()) for i, name in enumerate(SPLITS)},
        "instances": {name: int((split == i).sum()) for i, name in enumerate(SPLITS)},
        # offsets[s][b]: first record of split s, bucket b (plus the end)
        "bucket_offsets": [offsets[i * task.buckets:(i + 1) * task.buckets + 1].tolist()
                           for i in range(len(SPLITS))],
    }
    write_json(unit_stats_path(out_dir, task.index), stats)
    return stats


def _fill_records(records: np.ndarray, pairs: np.ndarray, flat: np.ndarray, special: dict[str, int], mask_vocab: MaskVocab,
                  config: InstanceConfig, rng: np.random.Generator) -> None:
    """Lay out "[CLS] A [SEP] B [SEP]" rows for a batch of pairs, mask them, store them."""
    a_start, a_len, b_start, b_len, random_next = pairs.T
    length = a_len + b_len + 3
    pos = np.arange(config.seq_len)
    ids = np.zeros((len(pairs), config.seq_len), dtype=np.int64)
    in_a = (pos >= 1) & (pos <= a_len[:, None])
    ids[in_a] = flat[(a_start[:, None] + pos - 1)[in_a]]
    b_first = (a_len + 2)[:, None]
    in_b = (pos >= b_first) & (pos < b_first + b_len[:, None])
    ids[in_b] = flat[(b_start[:, None] + pos - b_first)[in_b]]
    rows = np.arange(len(pairs))
    ids[:, 0] = special[CLS]
    ids[rows, a_len + 1] = special[SEP]
    ids[rows, length - 1] = special[SEP]
    masked, positions, labels = mask_batch(ids, length, a_len, config.max_pred, config.masking, mask_vocab, rng)
    records["input_ids"] = masked
    records["length"] = length
    records["a_length"] = a_len
    records["masked_lm_positions"] = positions
    records["masked_lm_ids"] = labels
    records["next_sentence_label"] = random_next
