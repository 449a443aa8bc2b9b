"""Readers: byte-range pieces partition a file's documents exactly, in every format."""

from __future__ import annotations

import bz2
import json

import pytest

from data_prep.readers import ReadCounts, read_documents
from data_prep.sources import SourceSpec, list_files
from data_prep.units import plan_units


def _documents(bible_dir, count: int = 24) -> list[list[str]]:
    """Real paragraphs: the first chapters of a few books, two or three per document."""
    chapters = [line for path in sorted(bible_dir.iterdir())[:6] for line in path.read_text().splitlines()[1:]]
    chapters = [c[:300] for c in chapters]  # keep the file small: pieces of 1 byte are read too
    return [chapters[i:i + 2 + i % 2] for i in range(0, 3 * count, 3)][:count]


def _write(kind: str, path, docs: list[list[str]]) -> list[list[str]]:
    """Write docs in the format of `kind`; return what the reader must give back."""
    if kind == "text":
        path.write_text("".join("\n".join(d) + "\n\n" + ("\n" if i % 3 == 0 else "") for i, d in enumerate(docs)))
        return docs
    if kind == "jsonl":
        path.write_text("".join(json.dumps({"id": i, "text": "\n".join(d)}) + "\n" for i, d in enumerate(docs)))
        return docs
    if kind == "wikiextractor-json":
        path.write_text("".join(json.dumps({"id": i, "title": "T", "text": "\n".join(d).replace("&", "&amp;")}) + "\n"
                                for i, d in enumerate(docs)))
        return docs
    # wikiextractor <doc> format: a title line, a blank line, the text
    path.write_text("".join(f'<doc id="{i}" url="u" title="Title {i}">\nTitle {i}\n\n' + "\n".join(d) + "\n</doc>\n"
                            for i, d in enumerate(docs)))
    return [[""] + d for d in docs]


@pytest.mark.parametrize("fmt", ["text", "jsonl", "wikiextractor-json", "wikiextractor-doc"])
@pytest.mark.parametrize("unit_bytes", [1, 13, 256, 1000, 1 << 30])
def test_pieces_partition_documents(tmp_path, bible_dir, fmt, unit_bytes):
    kind = fmt.split("-")[0]
    path = tmp_path / "corpus.txt"
    expected = _write(fmt, path, _documents(bible_dir))
    source = SourceSpec("s", kind, path)
    units = plan_units([(source, list_files(source))], unit_bytes)
    if unit_bytes == 1:
        assert len(units) == path.stat().st_size
    got = [doc for unit in units for piece in unit.pieces for doc in read_documents(kind, piece, ReadCounts())]
    assert got == expected


def test_undecodable_bytes_and_malformed_records_are_counted_per_file(tmp_path, bible_dir):
    docs = _documents(bible_dir, 4)
    good = tmp_path / "a.jsonl"
    _write("jsonl", good, docs)
    bad = tmp_path / "b.jsonl"
    lines = [json.dumps({"text": "\n".join(d)}).encode() for d in docs]
    lines[1] = lines[1].replace(b"the", b"th\xff\xfee", 1)  # two invalid bytes, one sequence each
    lines.insert(2, b"{not json")
    lines.insert(3, json.dumps({"title": "no text field"}).encode())
    bad.write_bytes(b"\n".join(lines) + b"\n")
    counts = ReadCounts()
    source = SourceSpec("s", "jsonl", tmp_path)
    got = [doc for unit in plan_units([(source, list_files(source))], 1 << 30) for piece in unit.pieces
           for doc in read_documents("jsonl", piece, counts)]
    assert len(got) == 8
    assert dict(counts.undecodable) == {"b.jsonl": 2}
    assert dict(counts.malformed) == {"b.jsonl": 2}
    assert got[5] == docs[1]  # the bad bytes are dropped, the rest of the text kept


def test_compressed_wikiextractor_output_is_read_whole(tmp_path, bible_dir):
    plain = tmp_path / "wiki_00"
    expected = _write("wikiextractor-json", plain, _documents(bible_dir))
    packed = tmp_path / "packed" / "wiki_00.bz2"
    packed.parent.mkdir()
    packed.write_bytes(bz2.compress(plain.read_bytes()))
    source = SourceSpec("s", "wikiextractor", packed.parent)
    units = plan_units([(source, list_files(source))], 64)
    assert len(units) == 1  # a compressed file cannot be cut
    assert [d for piece in units[0].pieces for d in read_documents("wikiextractor", piece, ReadCounts())] == expected


def test_a_book_is_one_document(bible_dir):
    source = SourceSpec("books", "books", bible_dir)
    files = list_files(source)
    units = plan_units([(source, files)], 1 << 20)
    docs = [d for u in units for p in u.pieces for d in read_documents("books", p, ReadCounts())]
    assert len(docs) == len(files) == 66
    assert docs[0][0] == "Genesis" and docs[0][1].startswith("In the beginning God created")
