"""Bad input gets one clear error (exit 2) before any work starts."""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest

from prep_helpers import FAST, one_error_line, run_cli, tmpfs


def _all(source: str, out, *extra) -> list:
    return ["all", "--source", source, "--output", out, "--processes", 1, *FAST, *extra]


def _fails_before_work(capsys, args, out, message: str) -> str:
    assert run_cli(*args) == 2
    err = capsys.readouterr().err
    line = one_error_line(err)
    assert err.startswith("error: ") and message in line, err
    assert not (out / "work").exists()
    return line


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


@pytest.mark.parametrize("garbage", ["random", "ls"])
def test_binary_files_are_not_text(tmp_path, vocab_path, epistles_dir, capsys, garbage):
    """200 KB of random bytes once became 457 training instances, and /bin/ls 234."""
    books = tmp_path / "books"
    shutil.copytree(epistles_dir, books)
    noise = books / "zz_noise.txt"
    if garbage == "random":
        noise.write_bytes(np.random.default_rng(0).bytes(200_000))
    else:
        shutil.copy(shutil.which("ls"), noise)
    out = tmp_path / "out"
    line = _fails_before_work(capsys, _all(f"books:{books}", out, "--vocab", vocab_path), out,
                              f"source books: {noise} (first 65,536 bytes) is not utf-8 text: ")
    assert line.endswith("; expected text with at most 10% such bytes"), line
    if garbage == "random":
        assert "53% of its 65,536 bytes are undecodable (27,283) or control characters such as NUL (7,210)" in line
    else:
        assert int(re.search(r"text: (\d+)% of its", line).group(1)) > 50, line


def test_utf16_text_is_refused_with_its_name(tmp_path, vocab_path, epistles_dir, capsys):
    books = tmp_path / "books"
    books.mkdir()
    path = sorted(epistles_dir.iterdir())[0]
    (books / path.name).write_text(path.read_text(), encoding="utf-16")
    out = tmp_path / "out"
    _fails_before_work(capsys, _all(f"books:{books}", out, "--vocab", vocab_path), out,
                       f"source books: {books / path.name} starts with a UTF-16 byte-order mark; expected UTF-8 text")


def test_plain_text_given_as_a_wiki_dump(tmp_path, vocab_path, epistles_dir, capsys):
    """Once reported "empty corpus" after wikiextractor had scanned it."""
    text = sorted(epistles_dir.iterdir())[0]
    out = tmp_path / "out"
    _fails_before_work(capsys, _all(f"wiki=wiki-xml:{text}", out, "--vocab", vocab_path), out,
                       f"source wiki: {text} is not a MediaWiki XML dump: it starts with b'Romans\\nPaul, a servant")
    assert run_cli("extract", "--input", text, "--output", tmp_path / "extracted") == 2
    assert "use the books" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "extracted").exists()


def test_latin1_vocabulary(tmp_path, vocab_path, epistles_dir, capsys):
    # ASCII but for one token, so that its byte is the first that is not UTF-8.
    tokens = [t if t.isascii() else f"##x{i}" for i, t in enumerate(vocab_path.read_text().splitlines())]
    tokens[2000] = "caf\u00e9"
    vocab = tmp_path / "vocab.txt"
    vocab.write_bytes("".join(t + "\n" for t in tokens).encode("latin-1"))
    out = tmp_path / "out"
    _fails_before_work(capsys, _all(f"books:{epistles_dir}", out, "--vocab", vocab), out,
                       f"vocabulary {vocab} is not UTF-8: byte 0xe9 on line 2001 (token 2000) does not decode; "
                       f"expected a UTF-8 vocab.txt")


@pytest.mark.parametrize("option", ["--output", "--work-dir"])
def test_output_that_is_a_file(tmp_path, vocab_path, epistles_dir, capsys, option):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory\n")
    out = tmp_path / "out" if option == "--work-dir" else a_file / "out"
    args = _all(f"books:{epistles_dir}", out, "--vocab", vocab_path)
    if option == "--work-dir":
        args += ["--work-dir", a_file]
    _fails_before_work(capsys, args, out, f"{option} {a_file if option == '--work-dir' else out}: {a_file} is a file, "
                       f"not a directory; expected a directory")
    assert a_file.read_text() == "not a directory\n"


def test_unwritable_output(tmp_path, vocab_path, epistles_dir, capsys):
    """Root writes through permissions, so as root the output lies on a read-only tmpfs."""
    locked = tmp_path / "locked"
    with tmpfs(locked, "ro") as mounted:
        if not mounted:
            if os.geteuid() == 0:
                pytest.skip("root cannot mount here, and root writes through permissions")
            locked.chmod(0o555)
        out = locked / "out"
        reason = "its file system is read-only" if mounted else "permission denied"
        _fails_before_work(capsys, _all(f"books:{epistles_dir}", out, "--vocab", vocab_path), out,
                           f"--output {out}: cannot write in {locked} ({reason}); expected a writable directory")
        if not mounted:
            locked.chmod(0o755)  # so that pytest can remove it


@pytest.mark.parametrize("kind, option, message", [
    ("books", "books=klingon", "unknown encoding 'klingon'; expected a Python codec name"),
    ("books", "books=utf-16", "encoding 'utf-16' is not ASCII-compatible"),
    ("books", "novels=latin-1", "--encoding 'novels=latin-1': no source is named 'novels'; the sources are ['books']"),
    ("books", "latin-1", "--encoding 'latin-1': expected NAME=CODEC"),
    ("wikiextractor", "wikiextractor=latin-1",
     "--encoding 'wikiextractor=latin-1': a wikiextractor source is always UTF-8; an encoding applies to books, "
     "text, jsonl sources"),
])
def test_bad_encoding_options(tmp_path, vocab_path, epistles_dir, capsys, kind, option, message):
    out = tmp_path / "out"
    _fails_before_work(capsys, _all(f"{kind}:{epistles_dir}", out, "--vocab", vocab_path, "--encoding", option),
                       out, message)
