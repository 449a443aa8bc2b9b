"""End-to-end throughput of data_prep: raw text -> verified HDF5 shards.

Builds a corpus of tens of MB of real English (World English Bible books and the
Wikipedia excerpt that gensim ships, the latter extracted once by wikiextractor),
runs `all` on it with one process per core, and prints MB of raw text per second per
core and the peak memory (sum of the resident sets of all processes, sampled every
50 ms). Separately times wikiextractor on the XML excerpt, since the XML path starts
with it.

Copies of the texts are made different by a letter substitution per copy, so that
each copy brings new words: verbatim copies would flatter the tokenizer's word cache.

    python benchmarks/data_prep_throughput.py [--mb 48] [--processes N] [--seq-len 128]
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path

import psutil

from bing_bert_pld import cli
from data_prep import corpora
from data_prep.extract import extract_wikipedia
from data_prep.instances import InstanceConfig
from data_prep.pipeline import PipelineConfig, run_all
from data_prep.shards import ShardConfig
from data_prep.sources import SourceSpec

# One swap of two letters per copy (both cases): copy k reads like English, new words.
_SWAPS = ["ae", "io", "tn", "sr", "hl", "dc", "um", "wf", "gy", "pb", "vk"]


def _variant(text: str, copy: int) -> str:
    if copy == 0:
        return text
    a, b = _SWAPS[(copy - 1) % len(_SWAPS)]
    pair = str.maketrans(a + b + a.upper() + b.upper(), b + a + b.upper() + a.upper())
    return text.translate(pair)


def build_corpus(root: Path, target_mb: float) -> tuple[Path, Path, int]:
    """books/ (Bible copies) and wiki/ (wikiextractor JSON copies), about half each."""
    books, wiki = root / "books", root / "wiki"
    books.mkdir(parents=True)
    wiki.mkdir()
    bible = corpora.bible_books()
    extracted = extract_wikipedia(corpora.wiki_dump_excerpt(), root / "extracted", processes=2, show_progress=False)
    wiki_text = "".join(p.read_text() for p in sorted(extracted.rglob("wiki_*")))
    total, copy = 0, 0
    while total < target_mb * 1e6:
        for name, text in bible:
            (books / f"c{copy:02d}_{name}").write_text(_variant(text, copy))
        lines = [json.loads(line) for line in wiki_text.splitlines()]
        for line in lines:
            line["text"] = _variant(line["text"], copy)
        (wiki / f"c{copy:02d}_wiki.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and "extracted" not in p.parts)
        copy += 1
    return books, wiki, total


def _cpu_seconds() -> float:
    """User + system time of this process and of its finished children (pool workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class PeakMemory:
    """Samples the summed RSS of this process and its children."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for process in [me, *me.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = cli.ArgumentParser("benchmarks.data_prep_throughput", description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=48.0, help="corpus size in MB of raw text")
    parser.add_argument("--processes", type=int, default=os.cpu_count(),
                        help="data_prep worker processes (default: all cores)")
    parser.add_argument("--seq-len", type=int, default=128, metavar="TOKENS", aliases=("--max_seq_length",),
                        help="as data_prep's")
    parser.add_argument("--max-pred", type=int, default=20, metavar="N",
                        aliases=("--max_predictions_per_seq",), help="as data_prep's")
    parser.add_argument("--duplication", type=int, default=5, help="as data_prep's")
    parser.add_argument("--unit-mb", type=float, default=4.0, metavar="MB", help="as data_prep's")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="keep the corpus and output here; default: a temporary directory, removed")
    args = parser.parse_args()
    logging.basicConfig(format="%(message)s")
    logging.getLogger("data_prep").setLevel(logging.INFO)  # per-stage times

    root = args.keep or Path(tempfile.mkdtemp(prefix="data_prep_bench_"))
    try:
        start = time.perf_counter()
        xml = corpora.wiki_dump_excerpt()
        extract_wikipedia(xml, root / "xml_timing", processes=args.processes, show_progress=False)
        extract_s = time.perf_counter() - start
        extracted_mb = sum(p.stat().st_size for p in (root / "xml_timing").rglob("wiki_*")) / 1e6

        books, wiki, raw_bytes = build_corpus(root / "corpus", args.mb)
        config = PipelineConfig(
            sources=(SourceSpec("books", "books", books), SourceSpec("wiki", "wikiextractor", wiki)),
            out_dir=root / "out", vocab=corpora.bert_uncased_vocab(), unit_mb=args.unit_mb,
            instances=InstanceConfig(seq_len=args.seq_len, max_pred=args.max_pred, duplication=args.duplication),
            shards=ShardConfig(), processes=args.processes, show_progress=False)
        load = os.getloadavg()[0]
        cpu_before = _cpu_seconds()
        with PeakMemory() as memory:
            start = time.perf_counter()
            manifest, report = run_all(config)
            seconds = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu_before
        mb = raw_bytes / 1e6
        rate = mb / seconds / args.processes
        print(json.dumps({
            "raw_text_mb": round(mb, 1),
            "processes": args.processes,
            "cpu_count": os.cpu_count(),
            "load_average_before": round(load, 2),
            "seq_len": args.seq_len, "duplication": args.duplication,
            "wall_s": round(seconds, 1),
            "mb_per_s_per_core": round(rate, 3),
            # On a shared machine wall time includes waiting for other jobs' processes;
            # MB per CPU-second is what one uncontended core does.
            "cpu_s": round(cpu, 1),
            "mb_per_cpu_s": round(mb / cpu, 3),
            "peak_rss_mb_all_processes": round(memory.peak / 1e6),
            "train_instances": manifest["splits"]["train"]["instances"],
            "shard_mb": round(sum(p.stat().st_size for p in (root / "out").glob("*/*.hdf5")) / 1e6),
            "verify_ok": report.ok,
            "wikiextractor": {"xml_bz2_mb": round(xml.stat().st_size / 1e6, 2), "text_mb": round(extracted_mb, 2),
                              "seconds": round(extract_s, 1), "processes": args.processes},
            # Wikipedia (~14 GB of extracted text) + BookCorpus (~1 GB) on 64 cores:
            "estimate_64_cores_15gb_text_min": round(15_000 / (rate * 64) / 60, 1),
            "estimate_64_cores_15gb_text_min_at_cpu_rate": round(15_000 / (mb / cpu * 64) / 60, 1),
        }, indent=1))
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
