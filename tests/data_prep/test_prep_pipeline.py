"""The pipeline end to end on real text: Wikipedia XML, books, stages one by one,
determinism across process counts, and resumption after a kill."""

from __future__ import annotations

import json
import re
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from bing_bert_pld.run.files import sha256_of
from data_prep.cleaning import CleaningConfig, clean_document
from data_prep.fsutil import write_json
from data_prep.manifest import IN_PROGRESS_NAME, REQUEST_KEYS
from data_prep.shard_writer import write_shard
from data_prep.splitting import split_sentences
from data_prep.verify import verify
from prep_helpers import FAST, output_files, run_cli

REPO = Path(__file__).resolve().parents[2]
# 21 books are 21 documents: hold out a larger fraction so that validation is not empty.
BOOKS = ["--processes", 1, "--unit-mb", 0.2, *FAST, "--validation-fraction", 0.2, "--rows-per-shard", 500]


def _check_statistics(report, split="train"):
    stats = report.stats[split]
    assert stats["masked_fraction"] == pytest.approx(0.15, abs=0.003)
    assert stats["masked_as"]["mask"] == pytest.approx(0.8, abs=0.008)
    assert stats["masked_as"]["random"] == pytest.approx(0.1, abs=0.006)
    assert stats["masked_as"]["kept"] == pytest.approx(0.1, abs=0.006)
    assert stats["nsp_random_fraction"] == pytest.approx(0.5, abs=0.02)


def _check_manifest_counts(out: Path, manifest: dict) -> None:
    for split, info in manifest["splits"].items():
        rows = {entry["rows"] for entry in info["shards"]}
        assert len(rows) == 1, "shards of one split have equal sizes"
        assert sum(entry["rows"] for entry in info["shards"]) == info["instances"]
        assert sum(s["instances"][split] for s in manifest["sources"].values()) == info["instances"]
        for entry in info["shards"]:
            assert sum(entry["sources"].values()) == entry["rows"]
            with h5py.File(out / split / entry["name"]) as f:
                assert f["input_ids"].shape == (entry["rows"], manifest["seq_len"])
    assert sha256_of(out / "vocab.txt") == manifest["vocab_sha256"]


def test_wikipedia_end_to_end_from_xml(wiki_run, wiki_xml):
    manifest = json.loads((wiki_run / "manifest.json").read_text())
    assert manifest["inputs"] == [{"source": "wiki", "name": wiki_xml.name, "size": wiki_xml.stat().st_size}]
    assert manifest["build"]["sources"] == {"wiki": {"kind": "wiki-xml", "path": str(wiki_xml)}}
    assert (manifest["seq_len"], manifest["max_pred"], manifest["vocab_size"], manifest["lowercase"]) == (
        128, 20, 30522, True)
    wiki = manifest["sources"]["wiki"]
    # wikiextractor gives 106 articles: each is kept or dropped for a stated reason.
    assert sum(wiki["documents"].values()) + sum(wiki["documents_dropped"].values()) == 106
    assert sum(wiki["documents"].values()) > 95
    assert wiki["share"] == {"train": 1.0, "validation": 1.0}
    assert manifest["splits"]["train"]["instances"] > 10_000
    _check_manifest_counts(wiki_run, manifest)
    report = verify(wiki_run)
    assert report.ok, report.format()
    _check_statistics(report)


@pytest.fixture(scope="module")
def books_run(tmp_path_factory, epistles_dir) -> Path:
    out = tmp_path_factory.mktemp("books") / "out"
    assert run_cli("all", "--source", f"books:{epistles_dir}", "--vocab-size", 3000, "--output", out,
                   *BOOKS) == 0
    return out


def test_books_path_with_a_trained_vocabulary(books_run, epistles_dir):
    manifest = json.loads((books_run / "manifest.json").read_text())
    books = sorted(epistles_dir.iterdir())
    assert manifest["inputs"] == [{"source": "books", "name": p.name, "size": p.stat().st_size} for p in books]
    assert sum(manifest["sources"]["books"]["documents"].values()) == len(books)  # a book is a document
    assert manifest["vocab_size"] == 3000
    assert (books_run / "vocab.txt").read_text().splitlines()[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    _check_manifest_counts(books_run, manifest)
    report = verify(books_run)
    assert report.ok, report.format()
    _check_statistics(report)


def test_stage_commands_one_by_one_give_what_all_gives(books_run, epistles_dir, tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    common = ["--processes", 1, "--no-progress"]
    assert run_cli("sentences", "--source", f"books:{epistles_dir}", "--unit-mb", 0.2, "--output",
                   work / "sentences", *common) == 0
    assert run_cli("vocab", "--sentences", work / "sentences", "--vocab-size", 3000, "--output",
                   work / "vocab.txt", *common) == 0
    assert run_cli("instances", "--sentences", work / "sentences", "--vocab", work / "vocab.txt",
                   "--duplication", 2, "--validation-fraction", 0.2, "--output", work / "instances", *common) == 0
    assert run_cli("shards", "--instances", work / "instances", "--rows-per-shard", 500, "--output", out,
                   *common) == 0
    assert output_files(out) == output_files(books_run)


def test_same_inputs_and_seed_give_identical_bytes_whatever_the_process_count(
        tmp_path, epistles_dir, wiki_extracted, vocab_path, caplog):
    outputs = []
    for processes in (1, 2):
        out = tmp_path / f"p{processes}"
        caplog.clear()
        assert run_cli("all", "--source", f"books=books:{epistles_dir}", "--source", f"wiki=wikiextractor:{wiki_extracted}",
                       "--vocab", vocab_path, "--whole-word-mask", "--output", out, "--processes", processes,
                       "--unit-mb", 0.3, *FAST) == 0
        outputs.append(output_files(out))
    assert outputs[0] == outputs[1]
    assert len([name for name in outputs[0] if name.endswith(".hdf5")]) > 4
    # Both sources' shares are in the manifest and in the log.
    manifest = json.loads(outputs[0]["manifest.json"])
    shares = {name: s["share"]["train"] for name, s in manifest["sources"].items()}
    tokens = {name: s["tokens"] for name, s in manifest["sources"].items()}
    assert sum(shares.values()) == pytest.approx(1.0)
    for name in shares:  # each source's share of instances follows its share of the text
        assert shares[name] == pytest.approx(tokens[name] / sum(tokens.values()), abs=0.03)
    assert "source books:" in caplog.text and "% of train" in caplog.text


def test_a_killed_run_resumes_where_it_stopped(tmp_path, epistles_dir, vocab_path):
    args = ["all", "--source", f"books:{epistles_dir}", "--vocab", vocab_path, *BOOKS, "--unit-mb", 0.05]
    reference = tmp_path / "reference"
    assert run_cli(*args, "--output", reference) == 0

    out = tmp_path / "resumed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "data_prep", *map(str, args), "--output", str(out)],
                               cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    done_units = []
    while time.time() < deadline and len(done_units) < 3:
        done_units = list(out.glob("work/instances-*/unit_*.json"))
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert len(done_units) >= 3 and not (out / "manifest.json").exists(), "the run was not caught mid-way"
    total_units = len(list(reference.glob("work/instances-*/unit_*.json")))
    finished_before = len(list(out.glob("work/instances-*/unit_*.json")))
    assert finished_before < total_units

    assert run_cli(*args, "--output", out) == 0
    assert output_files(out) == output_files(reference)


def test_an_interrupted_shard_stage_rewrites_only_missing_shards(books_run, tmp_path, epistles_dir, caplog):
    out = tmp_path / "out"
    shutil.copytree(books_run, out)
    manifest = json.loads((out / "manifest.json").read_text())
    # The state a crash during the shard stage leaves: the request in progress, some shards missing.
    write_json(out / IN_PROGRESS_NAME, {k: manifest[k] for k in REQUEST_KEYS})
    (out / "manifest.json").unlink()
    (out / "train" / "shard_00001.hdf5").unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in (out / "train").iterdir()}
    assert run_cli("all", "--source", f"books:{epistles_dir}", "--vocab-size", 3000, "--output", out, *BOOKS) == 0
    assert output_files(out) == output_files(books_run)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "train").iterdir() if p.name in kept} == kept
    # The earlier stages' work is reused whole (the shards' own reuse is the mtimes above).
    for stage in ("sentences", "instances"):
        done = re.search(rf"{stage}: (\d+) of (\d+) units already done, skipped", caplog.text)
        assert done and done.group(1) == done.group(2), stage
    assert not (out / IN_PROGRESS_NAME).exists()


def test_a_shard_that_fails_mid_write_never_appears_under_its_name(tmp_path):
    columns = {"input_ids": np.zeros((4, 8), dtype=np.int32)}  # the other datasets are missing
    with pytest.raises(KeyError):
        write_shard(tmp_path / "shard_00000.hdf5", columns, {}, None, 64)
    assert list(tmp_path.iterdir()) == []


def test_generic_text_and_jsonl_sources_at_phase_two_lengths(tmp_path, epistles_dir, vocab_path):
    """BERT-format text and JSON lines, seq_len 512 with 80 predictions."""
    books = sorted(epistles_dir.iterdir())
    bert_format, jsonl = tmp_path / "text.txt", tmp_path / "docs.jsonl"
    with open(bert_format, "w") as text, open(jsonl, "w") as lines:
        for i, path in enumerate(books):
            kept, _ = clean_document(path.read_text().splitlines(), CleaningConfig())
            if i % 2:
                text.write("\n".join(split_sentences(kept)) + "\n\n")
            else:
                lines.write(json.dumps({"id": i, "text": "\n".join(kept)}) + "\n")
    out = tmp_path / "out"
    assert run_cli("all", "--source", f"text:{bert_format}", "--source", f"jsonl:{jsonl}", "--vocab", vocab_path,
                   "--seq-len", 512, "--max-pred", 80, "--output", out, *BOOKS) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["seq_len"], manifest["max_pred"]) == (512, 80)
    documents = {name: sum(s["documents"].values()) for name, s in manifest["sources"].items()}
    assert documents == {"text": len(books) // 2, "jsonl": len(books) - len(books) // 2}
    with h5py.File(out / "train" / "shard_00000.hdf5") as f:
        assert f["input_ids"].shape[1] == 512 and f["masked_lm_positions"].shape[1] == 80
    report = verify(out)
    assert report.ok, report.format()
    assert report.stats["train"]["masked_fraction"] == pytest.approx(0.15, abs=0.003)
    assert report.stats["train"]["masked_per_instance"] > 60  # most rows are long: up to 80 predictions
