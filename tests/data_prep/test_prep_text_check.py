"""Text that is not clean UTF-8: a few bad bytes are dropped, counted and logged per
source; Latin-1 is read with --encoding; binary or broken input found while reading
stops the run with one error line, also from the worker processes."""

from __future__ import annotations

import bz2
import gzip
import json
import logging
import re
import shutil

import numpy as np
import pytest

from data_prep.errors import DataPrepError
from data_prep.textcheck import tally_head
from prep_helpers import FAST, one_error_line, run_cli, run_cli_process

BOOKS = ["--processes", 1, "--unit-mb", 0.2, *FAST, "--validation-fraction", 0.2, "--rows-per-shard", 500]


def test_the_limit_is_ten_percent_bad_bytes():
    """Undecodable sequences and control bytes count alike; tab, CR, FF and VT are text."""
    assert tally_head(b"a\tb\r\x0b\x0c" * 20).bad_share == 0
    at_limit = tally_head(b"x" * 180 + b"\x00" * 10 + b"\xff" * 10)
    assert (at_limit.bytes, at_limit.control, at_limit.undecodable) == (200, 10, 10)
    at_limit.check("at the limit")
    with pytest.raises(DataPrepError, match=r"^over is not utf-8 text: 11% of its 199 bytes are undecodable \(11\)"):
        tally_head(b"x" * 178 + b"\x00" * 10 + b"\xff" * 11).check("over")
    assert tally_head(b"caf\xe9 " * 10, "latin-1").bad_share == 0  # Latin-1 read as Latin-1


@pytest.fixture(scope="module")
def latin1_books(tmp_path_factory, wiki_extracted) -> tuple:
    """The gensim Wikipedia articles as Latin-1 books, one file per article, and the
    number of bytes >= 0x80 in each. Runs of two such bytes are cut out, so that each
    one left is exactly one undecodable UTF-8 sequence (a pair can be valid UTF-8)."""
    books = tmp_path_factory.mktemp("latin1") / "books"
    books.mkdir()
    articles = [json.loads(line)["text"] for path in sorted(wiki_extracted.rglob("wiki_*"))
                for line in path.read_text(encoding="utf-8").splitlines()]
    high = {}
    for i, text in enumerate(articles):
        data = re.sub(rb"[\x80-\xff]{2,}", b" ", text.encode("latin-1", errors="replace"))
        (books / f"{i:03d}.txt").write_bytes(data)
        if n := sum(b >= 0x80 for b in data):
            high[f"{i:03d}.txt"] = n
    assert len(articles) == 106 and sum(high.values()) > 1000
    return books, high


def test_latin1_text_loses_its_accents_counted_and_logged(tmp_path, latin1_books, capsys, caplog):
    books, high = latin1_books
    caplog.set_level(logging.INFO, logger="data_prep")
    assert run_cli("sentences", "--source", f"books:{books}", "--output", tmp_path / "s", "--no-progress") == 0
    counts = json.loads(capsys.readouterr().out)["books"]
    assert counts["undecodable"] == high
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sentences: source books:")]
    assert len(logged) == 1 and logged[0].endswith(
        f"; {sum(high.values()):,} undecodable utf-8 byte sequences dropped (in {len(high)} of 106 files; if they "
        f"are not utf-8 but e.g. Latin-1, rerun with --encoding books=latin-1)"), logged
    text = (tmp_path / "s" / "unit_00000.txt").read_text(encoding="utf-8")
    assert "Gdel" in text and "Gödel" not in text and "é" not in text


def test_latin1_text_read_with_its_encoding_keeps_its_accents(tmp_path, latin1_books, capsys, caplog):
    books, _ = latin1_books
    caplog.set_level(logging.INFO, logger="data_prep")
    assert run_cli("sentences", "--source", f"books:{books}", "--encoding", "books=latin-1",
                   "--output", tmp_path / "s", "--no-progress") == 0
    assert json.loads(capsys.readouterr().out)["books"]["undecodable"] == {}
    assert "; 0 undecodable iso8859-1 byte sequences dropped" in caplog.text
    text = (tmp_path / "s" / "unit_00000.txt").read_text(encoding="utf-8")
    assert "Gödel" in text and "Gdel" not in text and text.count("é") > 100
    plan = json.loads((tmp_path / "s" / "plan.json").read_text())
    assert plan["sources"]["books"]["encoding"] == "iso8859-1"
    assert {u.get("encoding") for u in plan["units"]} == {"iso8859-1"}


def test_real_text_with_a_few_bad_bytes_passes(tmp_path, epistles_dir, vocab_path, caplog):
    """Stray bytes (0xff, NUL) in 5 of 21 books: dropped or kept, counted, and the run succeeds."""
    books = tmp_path / "books"
    shutil.copytree(epistles_dir, books)
    damaged = sorted(books.iterdir())[:5]
    for path in damaged:
        data = path.read_bytes().replace(b" the ", b" th\xffe ", 3).replace(b" and ", b" an\x00d ", 2)
        path.write_bytes(data)
    caplog.set_level(logging.INFO, logger="data_prep")
    out = tmp_path / "out"
    assert run_cli("all", "--source", f"books:{books}", "--vocab", vocab_path, "--output", out, *BOOKS) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sources"]["books"]["undecodable_sequences"] == {p.name: 3 for p in damaged}
    assert ("; 15 undecodable utf-8 byte sequences dropped (in 5 of 21 files; if they are not utf-8 but e.g. "
            "Latin-1, rerun with --encoding books=latin-1)") in caplog.text
    assert manifest["splits"]["train"]["instances"] > 0


def test_binary_found_while_reading_stops_the_worker_pool(tmp_path, bible_dir, vocab_path):
    """A book whose first 100 KB are text passes the 64 KB look before the work; the rest
    is noise. The worker that reads it fails, and the run ends with one line, no hang."""
    books = tmp_path / "books"
    books.mkdir()
    for path in sorted(bible_dir.iterdir())[:8]:
        shutil.copy(path, books / path.name)
    bad = books / "zz_tail_noise.txt"
    bad.write_bytes(sorted(bible_dir.iterdir())[9].read_bytes()[:100_000] + np.random.default_rng(1).bytes(300_000))
    out = tmp_path / "out"
    result = run_cli_process("all", "--source", f"books:{books}", "--vocab", vocab_path, "--output", out,
                             "--processes", 2, "--unit-mb", 0.1, *FAST, timeout=120)
    assert result.returncode == 2, result.stderr
    line = one_error_line(result.stderr)
    assert re.fullmatch(rf"error: {re.escape(str(bad))} is not utf-8 text: (\d\d)% of its 400,000 bytes are "
                        r"undecodable \([\d,]+\) or control characters such as NUL \([\d,]+\); expected text with "
                        r"at most 10% such bytes", line), line
    assert len(list((out / "work").glob("sentences-*/unit_*.json"))) < 8  # it stopped in the sentences stage
    assert not (out / "manifest.json").exists()


@pytest.mark.parametrize("suffix", ["bz2", "gz"])
@pytest.mark.parametrize("cut", ["early", "late"])
def test_truncated_compressed_text_source(tmp_path, epistles_dir, vocab_path, capsys, suffix, cut):
    """Cut early, the 64 KB look before the work fails; cut late, reading fails."""
    text = "".join(p.read_text() + "\n" for p in sorted(epistles_dir.iterdir())).encode()
    # bz2 level 1 has 100 KB blocks: the first decompresses alone, as in a big file.
    packed = bz2.compress(text, compresslevel=1) if suffix == "bz2" else gzip.compress(text)
    source = tmp_path / f"corpus.txt.{suffix}"
    source.write_bytes(packed[:200] if cut == "early" else packed[:len(packed) // 2])
    out = tmp_path / "out"
    assert run_cli("all", "--source", f"text:{source}", "--vocab", vocab_path, "--output", out, *BOOKS) == 2
    assert one_error_line(capsys.readouterr().err) == (
        f"error: {source}: the compressed file is truncated or corrupt (Compressed file ended before the "
        f"end-of-stream marker was reached); expected a whole .{suffix} file")
    assert (out / "work").exists() == (cut == "late")


def test_truncated_wiki_dump(tmp_path, wiki_xml, vocab_path, capsys):
    """It starts as MediaWiki XML, so wikiextractor runs, and fails: its last line is the reason."""
    dump = tmp_path / wiki_xml.name
    data = wiki_xml.read_bytes()
    dump.write_bytes(data[:len(data) // 3])
    out = tmp_path / "out"
    assert run_cli("all", "--source", f"wiki=wiki-xml:{dump}", "--vocab", vocab_path, "--output", out, *BOOKS) == 2
    line = one_error_line(capsys.readouterr().err)
    assert re.fullmatch(rf"error: wikiextractor failed \(exit 1\) on {re.escape(str(dump))}: EOFError: Compressed file "
                        rf"ended before the end-of-stream marker was reached; its log: "
                        rf"{re.escape(str(out))}/work/extracted-wiki-\w+\.tmp/\.wikiextractor\.log", line), line
