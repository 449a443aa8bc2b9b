"""`python -m data_prep <stage>` (or `bbp-data <stage>`): one command per stage, and `all`.

Exit status: 0 success, 1 `verify` found defects, 2 a usage or input error (one line
on stderr), including a file system that refuses a write (full, read-only, no permission).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Iterator

from bing_bert_pld import cli as bbp_cli
from data_prep.cleaning import CleaningConfig
from data_prep.errors import DataPrepError
from data_prep.extract import extract_wikipedia
from data_prep.fsutil import NO_SPACE, check_writable_dir, read_plan
from data_prep.instances import InstanceConfig, plan_instances, run_instances
from data_prep.masking import MaskingConfig
from data_prep.pipeline import PipelineConfig, run_all
from data_prep.sentences import plan_sentences, run_sentences, summarize, unit_text_path
from data_prep.shards import ShardConfig, run_shards
from data_prep.sources import check_sources, check_text_files, list_files, parse_source, with_encodings
from data_prep.tokenizer import train_vocab
from data_prep.verify import verify
from data_prep.vocab import load_vocab

_DEFAULTS = InstanceConfig()
_SHARD_SET_OUTPUT = "where train/, validation/, manifest.json go"
# OSErrors that the machine causes, not the code: reported in one line, like bad input.
_ENVIRONMENT_ERRNOS = {*NO_SPACE, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EIO}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(format="%(message)s", stream=sys.stderr)
    logging.getLogger("data_prep").setLevel(logging.INFO)
    try:
        return args.run(args)
    except DataPrepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # what the early checks could not foresee
        if error.errno not in _ENVIRONMENT_ERRNOS:
            raise
        where = f"{error.filename}: " if error.filename else ""
        print(f"error: {where}{os.strerror(error.errno)}; expected a writable, readable path with free space",
              file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = bbp_cli.ArgumentParser("data_prep", description=__doc__.splitlines()[0])
    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE",
                                   help="one stage, or all of them; python -m data_prep STAGE -h "
                                        "describes its flags")

    with _stage(stages, "extract", "Wikipedia XML dump -> wikiextractor JSON (runs wikiextractor)",
                _run_extract) as p:
        p.add_argument("--input", type=Path, required=True, help="dump file (.xml or .xml.bz2)")
        p.add_argument("--output", type=Path, required=True, help="directory for the extracted JSON")

    with _stage(stages, "sentences", "sources -> cleaned, sentence-split text units", _run_sentences) as p:
        _add_source_options(p)
        p.add_argument("--output", type=Path, required=True, help="directory for the text units and their plan")

    with _stage(stages, "vocab", "train a WordPiece vocab.txt on a sentences directory", _run_vocab) as p:
        _add_stage_input(p, "sentences")
        p.add_argument("--vocab-size", type=int, required=True,
                       help="word pieces in the vocabulary (30522 as bert-base)")
        _add_lowercase(p)
        p.add_argument("--output", type=Path, required=True, help="vocab.txt to write")

    with _stage(stages, "instances", "sentences -> tokenized, paired, masked instance records",
                _run_instances) as p:
        _add_stage_input(p, "sentences")
        p.add_argument("--vocab", type=Path, required=True, aliases=("--vocab_file",), help="vocab.txt")
        _add_lowercase(p)
        _add_instance_options(p)
        p.add_argument("--output", type=Path, required=True, help="directory for the instance records")

    with _stage(stages, "shards", "instance records -> shuffled HDF5 shards + manifest", _run_shards) as p:
        _add_stage_input(p, "instances")
        _add_shard_options(p)
        p.add_argument("--output", type=Path, required=True, help=_SHARD_SET_OUTPUT)

    with _stage(stages, "verify", "check a shard set (ours or NVIDIA's); exit 1 on a defect", _run_verify) as p:
        p.add_argument("path", type=Path, help="output directory, split directory or one shard")
        p.add_argument("--vocab", type=Path, aliases=("--vocab_file",),
                       help="vocab.txt (default: the one beside the manifest)")
        p.add_argument("--vocab-size", type=int,
                       help="when no vocab.txt is at hand (default: the vocab.txt's size)")
        p.add_argument("--json", action="store_true", help="print the report as JSON")

    with _stage(stages, "all", "the whole pipeline: sources -> verified shards", _run_all) as p:
        _add_source_options(p)
        vocab = p.add_mutually_exclusive_group(required=True)
        vocab.add_argument("--vocab", type=Path, aliases=("--vocab_file",), help="a bert-base compatible vocab.txt")
        vocab.add_argument("--vocab-size", type=int, help="train a vocabulary of this size on the corpus")
        _add_lowercase(p)
        _add_instance_options(p)
        _add_shard_options(p)
        p.add_argument("--output", type=Path, required=True, help=_SHARD_SET_OUTPUT)
        p.add_argument("--work-dir", type=Path, help="intermediate files (default: OUTPUT/work); reusable across runs")
    return parser


@contextlib.contextmanager
def _stage(stages, name: str, help: str,
           run: Callable[[argparse.Namespace], int]) -> Iterator[argparse.ArgumentParser]:
    """A stage's subcommand: the flags the with block adds, then the run options every stage
    takes (last in its --help), and `run`, which main() calls with the parsed flags."""
    p = stages.add_parser(name, help=help)
    yield p
    _add_run_options(p)
    p.set_defaults(run=run)


def _add_stage_input(p: argparse.ArgumentParser, stage: str) -> None:
    p.add_argument(f"--{stage}", type=Path, required=True, help=f"the {stage} stage's --output")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="worker processes (default: all cores)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")


def _add_lowercase(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lowercase", action=argparse.BooleanOptionalAction, default=True,
                   help="lowercase and strip accents, as bert-base-uncased (default: on)")


def _add_source_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", dest="sources", action="append", required=True, type=_source_argument,
                   metavar="[NAME=]KIND:PATH",
                   help="repeatable; KIND is wiki-xml, wikiextractor, books, text or jsonl")
    cleaning = CleaningConfig()
    p.add_argument("--min-line-words", type=int, default=cleaning.min_line_words,
                   help="shorter lines are headings and are dropped (default: %(default)s)")
    p.add_argument("--min-doc-words", type=int, default=cleaning.min_doc_words,
                   help="shorter documents are dropped (default: %(default)s)")
    p.add_argument("--unit-mb", type=float, default=4.0, metavar="MB",
                   help="input MB per work unit: the grain of parallelism and of memory (default: %(default)s)")
    p.add_argument("--encoding", dest="encodings", action="append", default=[], metavar="NAME=CODEC",
                   help="repeatable; the text encoding of the books, text or jsonl source NAME (default: utf-8)")


def _source_argument(text: str):
    try:
        return parse_source(text)
    except DataPrepError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_instance_options(p: argparse.ArgumentParser) -> None:
    # The trainer's names are aliases: the same number, typed as the trainer's flag.
    p.add_argument("--seq-len", type=int, default=_DEFAULTS.seq_len, metavar="TOKENS",
                   aliases=("--max_seq_length",), help="tokens per sequence, as the trainer's (128 or 512)")
    p.add_argument("--max-pred", type=int, default=_DEFAULTS.max_pred, metavar="N",
                   aliases=("--max_predictions_per_seq",),
                   help="masked positions per sequence, as the trainer's (20 or 80)")
    p.add_argument("--duplication", type=int, default=_DEFAULTS.duplication,
                   help="dupe factor: passes over the corpus, each with new pairs and masks (default: %(default)s)")
    p.add_argument("--short-seq-prob", type=float, default=_DEFAULTS.short_seq_prob, metavar="P",
                   help="probability of a shorter target length for a pair, as BERT's create_pretraining_data")
    p.add_argument("--masked-lm-prob", type=float, default=MaskingConfig().probability, metavar="P",
                   help="fraction of tokens masked (80%% [MASK], 10%% random, 10%% kept)")
    p.add_argument("--whole-word-mask", action="store_true", help="mask whole words, not single word pieces")
    p.add_argument("--validation-fraction", type=float, default=_DEFAULTS.validation_fraction,
                   help="fraction of documents held out (default: %(default)s)")
    p.add_argument("--seed", type=int, default=_DEFAULTS.seed,
                   help="seeds the held-out split, pairing, masking and the shard shuffle: the same "
                        "seed and inputs give the same bytes")
    p.add_argument("--bucket-mb", type=int, default=_DEFAULTS.bucket_mb, metavar="MB",
                   help="text MB x duplication per shuffle bucket; bounds the shard stage's memory")


def _add_shard_options(p: argparse.ArgumentParser) -> None:
    defaults = ShardConfig()
    p.add_argument("--rows-per-shard", type=int, default=defaults.rows_per_shard,
                   help="target rows per shard; all shards get the same size (default: %(default)s)")
    p.add_argument("--compression", choices=("gzip", "lzf"), help="compress shards (default: none)")
    p.add_argument("--chunk-rows", type=int, default=defaults.chunk_rows, help="rows per chunk when compressed")


def _cleaning(args) -> CleaningConfig:
    return CleaningConfig(min_line_words=args.min_line_words, min_doc_words=args.min_doc_words)


def _instance_config(args) -> InstanceConfig:
    masking = MaskingConfig(probability=args.masked_lm_prob, whole_word=args.whole_word_mask)
    return InstanceConfig(seq_len=args.seq_len, max_pred=args.max_pred, duplication=args.duplication,
                          short_seq_prob=args.short_seq_prob, validation_fraction=args.validation_fraction,
                          seed=args.seed, masking=masking, bucket_mb=args.bucket_mb)


def _shard_config(args) -> ShardConfig:
    return ShardConfig(rows_per_shard=args.rows_per_shard, compression=args.compression, chunk_rows=args.chunk_rows)


def _run_extract(args) -> int:
    check_writable_dir(args.output, "--output")
    extract_wikipedia(args.input, args.output, args.processes, args.progress)
    return 0


def _run_sentences(args) -> int:
    sources = with_encodings(args.sources, args.encodings)
    check_sources(sources)
    check_writable_dir(args.output, "--output")
    for source in sources:
        check_text_files(source, list_files(source))
    plan = plan_sentences(sources, _cleaning(args), int(args.unit_mb * (1 << 20)))
    counts = run_sentences(plan, args.output, args.processes, args.progress)
    print(json.dumps(counts, indent=1))
    return 0


def _run_vocab(args) -> int:
    plan = read_plan(args.sentences, "sentences")
    summarize(args.sentences)  # fails unless every unit is finished
    units = [unit_text_path(args.sentences, i) for i in range(len(plan["units"]))]
    if args.output.is_dir():
        raise DataPrepError(f"--output {args.output} is a directory; expected the path of the vocab.txt to write")
    check_writable_dir(args.output.parent, "--output")
    train_vocab(units, args.vocab_size, args.lowercase, args.output, args.progress)
    return 0


def _run_instances(args) -> int:
    vocab = load_vocab(args.vocab)
    check_writable_dir(args.output, "--output")
    plan = plan_instances(args.sentences, vocab, args.lowercase, _instance_config(args))
    run_instances(plan, vocab, args.output, args.processes, args.progress)
    return 0


def _run_shards(args) -> int:
    check_writable_dir(args.output, "--output")
    run_shards(args.instances, args.output, _shard_config(args), args.processes, args.progress)
    return _run_verify(argparse.Namespace(path=args.output, vocab=None, vocab_size=None, json=False,
                                          processes=args.processes, progress=args.progress))


def _run_verify(args) -> int:
    report = verify(args.path, vocab=args.vocab, vocab_size=args.vocab_size, processes=args.processes,
                    show_progress=args.progress)
    if args.json:
        print(json.dumps({"ok": report.ok, "shards": report.shards, "stats": report.stats,
                          "defects": [vars(d) for d in report.defects]}, indent=1))
    else:
        print(report.format())
    return 0 if report.ok else 1


def _run_all(args) -> int:
    config = PipelineConfig(
        sources=tuple(with_encodings(args.sources, args.encodings)), out_dir=args.output, vocab=args.vocab,
        vocab_size=args.vocab_size, lowercase=args.lowercase, work_dir=args.work_dir, cleaning=_cleaning(args),
        unit_mb=args.unit_mb, instances=_instance_config(args), shards=_shard_config(args), processes=args.processes,
        show_progress=args.progress)
    run_all(config)
    return 0
