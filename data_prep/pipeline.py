"""`all`: every stage in order, each resumable, with every input checked before work.

Work directories are named by the fingerprint of what they depend on, so one work
directory can serve several runs (phase 1 and phase 2 reuse the extraction and the
sentences) and an interrupted run, started again with the same arguments, finds its
own finished units and skips them.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bing_bert_pld.tokenizer import SPECIAL_TOKENS
from data_prep import manifest as manifest_io
from data_prep.cleaning import CleaningConfig
from data_prep.errors import DataPrepError
from data_prep.extract import extract_wikipedia
from data_prep.fsutil import check_writable_dir, fingerprint
from data_prep.instances import InstanceConfig, plan_instances, run_instances
from data_prep.parallel import worker_pool
from data_prep.sentences import plan_sentences, run_sentences, unit_text_path
from data_prep.shards import ShardConfig, run_shards
from data_prep.sources import SourceSpec, check_sources, check_text_files, list_files
from data_prep.tokenizer import train_vocab
from data_prep.verify import VerifyReport, verify
from data_prep.vocab import load_vocab

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineConfig:
    sources: tuple[SourceSpec, ...]
    out_dir: Path
    vocab: Path | None = None  # a given vocab.txt, or
    vocab_size: int | None = None  # the size of one to train on the corpus
    lowercase: bool = True
    work_dir: Path | None = None  # default: <out_dir>/work
    cleaning: CleaningConfig = field(default_factory=CleaningConfig)
    unit_mb: float = 4.0
    instances: InstanceConfig = field(default_factory=InstanceConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    processes: int = 1
    show_progress: bool = True


@contextmanager
def _stage(name: str):
    start = time.perf_counter()
    yield
    log.info("%s: done in %.1f s", name, time.perf_counter() - start)


def check_config(config: PipelineConfig) -> None:
    """Everything that can be checked without doing the work."""
    check_sources(list(config.sources))
    config.instances.check()
    if (config.vocab is None) == (config.vocab_size is None):
        raise DataPrepError("give exactly one of --vocab (a vocab.txt) and --vocab-size (train one)")
    if config.vocab_size is not None and config.vocab_size <= len(SPECIAL_TOKENS):
        raise DataPrepError(f"vocab size {config.vocab_size} leaves no room beside the special tokens")
    if config.unit_mb <= 0:
        raise DataPrepError(f"unit size must be positive, got {config.unit_mb} MB")
    config.shards.check()
    check_writable_dir(config.out_dir, "--output")
    if config.work_dir is not None:
        check_writable_dir(config.work_dir, "--work-dir")
    vocab = load_vocab(config.vocab) if config.vocab else None
    sources = {}
    for source in config.sources:
        files = list_files(source)
        if source.kind != "wiki-xml":  # a dump was checked as MediaWiki XML by check_sources
            check_text_files(source, files)
        sources[source.name] = {**source.describe(), "inputs": [{"name": f.name, "size": f.size} for f in files]}
    request = manifest_io.build_request(
        config.instances.describe(), config.lowercase,
        {"size": vocab.size, "sha256": vocab.sha256} if vocab else {"size": None, "sha256": None},
        config.cleaning.describe(), sources, config.shards.describe())
    manifest_io.check_output_dir(config.out_dir, request, ignore=() if vocab else manifest_io.VOCAB_KEYS)


def run_all(config: PipelineConfig) -> tuple[dict, VerifyReport]:
    check_config(config)
    with worker_pool(config.processes):
        return _run_stages(config)


def _run_stages(config: PipelineConfig) -> tuple[dict, VerifyReport]:
    work = config.work_dir or config.out_dir / "work"
    work.mkdir(parents=True, exist_ok=True)

    readable = []
    for source in config.sources:
        if source.kind == "wiki-xml":
            stat = source.path.stat()
            extracted = work / f"extracted-{source.name}-{fingerprint([source.path.name, stat.st_size, stat.st_mtime_ns])}"
            with _stage(f"extract {source.name}"):
                extract_wikipedia(source.path, extracted, config.processes, config.show_progress)
            source = SourceSpec(source.name, "wikiextractor", extracted)
        readable.append(source)

    with _stage("sentences"):
        sentences_plan = plan_sentences(readable, config.cleaning, int(config.unit_mb * (1 << 20)))
        sentences_dir = work / f"sentences-{sentences_plan['fingerprint']}"
        run_sentences(sentences_plan, sentences_dir, config.processes, config.show_progress)

    if config.vocab is not None:
        vocab_path = config.vocab
    else:
        vocab_path = work / f"vocab-{fingerprint([sentences_plan['fingerprint'], config.vocab_size, config.lowercase])}.txt"
        if not vocab_path.exists():
            with _stage(f"vocab ({config.vocab_size} entries)"):
                units = [unit_text_path(sentences_dir, i) for i in range(len(sentences_plan["units"]))]
                train_vocab(units, config.vocab_size, config.lowercase, vocab_path, config.show_progress)
    vocab = load_vocab(vocab_path)

    with _stage("instances"):
        instances_plan = plan_instances(sentences_dir, vocab, config.lowercase, config.instances)
        instances_dir = work / f"instances-{instances_plan['fingerprint']}"
        run_instances(instances_plan, vocab, instances_dir, config.processes, config.show_progress)

    with _stage("shards"):
        manifest = run_shards(instances_dir, config.out_dir, config.shards, config.processes, config.show_progress)
    with _stage("verify"):
        report = verify(config.out_dir, processes=config.processes, show_progress=config.show_progress)
    log.info("verify:\n%s", report.format())
    if not report.ok:
        raise DataPrepError(f"verify found {len(report.defects)} defects in {config.out_dir}")
    return manifest, report
