"""Bad input gets one clear error (exit 2) before any work starts."""

from __future__ import annotations

import json
import shutil

import pytest

from prep_helpers import FAST, run_cli


def _all(source: str, out, *extra) -> list:
    return ["all", "--source", source, "--output", out, "--processes", 1, *FAST, *extra]


def _fails_before_work(capsys, args, out, message: str) -> None:
    assert run_cli(*args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert not (out / "work").exists()


def test_missing_path(tmp_path, vocab_path, capsys):
    out = tmp_path / "out"
    _fails_before_work(capsys, _all(f"books:{tmp_path / 'nowhere'}", out, "--vocab", vocab_path), out,
                       "path does not exist")


@pytest.mark.parametrize("files", [{}, {"a.txt": "", "b.txt": ""}])
def test_empty_corpus(tmp_path, vocab_path, capsys, files):
    books = tmp_path / "books"
    books.mkdir()
    for name, text in files.items():
        (books / name).write_text(text)
    out = tmp_path / "out"
    _fails_before_work(capsys, _all(f"books:{books}", out, "--vocab", vocab_path), out, "empty corpus")


def test_a_corpus_that_cleaning_empties(tmp_path, vocab_path, capsys):
    books = tmp_path / "books"
    books.mkdir()
    (books / "headings.txt").write_text("Chapter One\n\nChapter Two\n")
    assert run_cli(*_all(f"books:{books}", tmp_path / "out", "--vocab", vocab_path)) == 2
    assert "no document survived cleaning" in capsys.readouterr().err


@pytest.mark.parametrize("token", ["[CLS]", "[SEP]", "[MASK]", "[PAD]"])
def test_vocabulary_without_a_special_token(tmp_path, vocab_path, epistles_dir, capsys, token):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("".join(t + "\n" for t in vocab_path.read_text().splitlines() if t != token))
    out = tmp_path / "out"
    _fails_before_work(capsys, _all(f"books:{epistles_dir}", out, "--vocab", vocab), out, f"lacks the special tokens ['{token}']")


def test_vocabulary_with_pad_not_at_id_0(tmp_path, vocab_path, epistles_dir, capsys):
    tokens = vocab_path.read_text().splitlines()
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("".join(t + "\n" for t in tokens[1:2] + tokens[:1] + tokens[2:]))
    out = tmp_path / "out"
    _fails_before_work(capsys, _all(f"books:{epistles_dir}", out, "--vocab", vocab), out, "[PAD] must be id 0")


@pytest.mark.parametrize("extra, message", [
    (["--seq-len", 4], "too small for two segments"),
    (["--seq-len", 16, "--max-pred", 14], "max_pred 14 must be between 1 and seq_len - 3 = 13"),
    (["--duplication", 0], "duplication factor must be at least 1"),
    (["--rows-per-shard", 0], "rows per shard must be at least 1"),
])
def test_impossible_sizes(tmp_path, vocab_path, epistles_dir, capsys, extra, message):
    out = tmp_path / "out"
    _fails_before_work(capsys, _all(f"books:{epistles_dir}", out, "--vocab", vocab_path, *extra), out, message)


def test_output_directory_with_shards_of_another_manifest(tmp_path, wiki_run, wiki_xml, vocab_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(wiki_run, out, ignore=shutil.ignore_patterns("work"))
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    _fails_before_work(capsys, _all(f"wiki=wiki-xml:{wiki_xml}", out, "--vocab", vocab_path, "--seq-len", 64),
                       out, "already holds shards made with different settings (differing: seq_len)")
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_output_directory_with_shards_but_no_manifest(tmp_path, wiki_run, wiki_xml, vocab_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(wiki_run / "train", out / "train")
    _fails_before_work(capsys, _all(f"wiki=wiki-xml:{wiki_xml}", out, "--vocab", vocab_path), out,
                       "holds shards without a manifest")


def test_malformed_source_argument(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("all", "--source", "novel:/tmp", "--vocab", "v", "--output", "o")
    assert exit_info.value.code == 2
    assert "unknown kind 'novel'" in capsys.readouterr().err


def test_the_same_request_on_a_finished_directory_only_rechecks(tmp_path, wiki_run, wiki_xml, vocab_path):
    out = tmp_path / "out"
    shutil.copytree(wiki_run, out)
    manifest = (out / "manifest.json").read_bytes()
    shards = {p: p.stat().st_mtime_ns for p in out.rglob("*.hdf5")}
    assert run_cli(*_all(f"wiki=wiki-xml:{wiki_xml}", out, "--vocab", vocab_path, "--unit-mb", 1,
                         "--processes", 2)) == 0
    assert (out / "manifest.json").read_bytes() == manifest
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.hdf5")} == shards  # none rewritten
    assert json.loads(manifest)["splits"]["train"]["instances"] > 0
