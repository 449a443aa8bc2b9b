"""Read documents out of one piece (a byte range) of an input file.

Large files are cut into byte ranges so that many processes can read one file. The
rule that keeps pieces disjoint and complete: a piece owns exactly the documents whose
first byte lies in [start, end); it reads past `end` to finish its last document and
skips the tail of the document it starts inside. Compressed files and books are read
whole (`end` is the file size).

Bytes that do not decode (UTF-8 unless the source names another encoding) are
dropped and counted per file: one bad byte in a 20 GB dump should not stop the run.
A piece with more than 10% undecodable or control bytes is not text and stops it
(textcheck.py), as does a compressed file that is truncated or corrupt.
"""

from __future__ import annotations

import bz2
import collections
import gzip
import html
import json
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

from data_prep.errors import DataPrepError
from data_prep.textcheck import DEFAULT_ENCODING, TextTally

# How each kind delimits documents: a line each, a blank line between, <doc> tags, or
# one document per file.
LINE, BLANK, DOC_TAGS, WHOLE_FILE = "line", "blank", "doc-tags", "whole-file"
COMPRESSED_SUFFIXES = (".bz2", ".gz")
_CHECK_EVERY = 1 << 20  # bytes between text checks inside a piece (and one at its end)
# What a truncated or corrupt .bz2/.gz raises while it is read.
_READ_ERRORS = (EOFError, OSError, zlib.error)


@dataclass(frozen=True)
class Piece:
    path: str
    name: str  # the input's name, for per-file counts
    start: int
    end: int


@dataclass
class ReadCounts:
    """Per input file: undecodable byte sequences dropped, malformed JSON records skipped."""

    undecodable: collections.Counter = field(default_factory=collections.Counter)
    malformed: collections.Counter = field(default_factory=collections.Counter)


def is_splittable(kind: str, path: Path) -> bool:
    return kind != "books" and not path.name.endswith(COMPRESSED_SUFFIXES)


def read_documents(kind: str, piece: Piece, counts: ReadCounts,
                   encoding: str = DEFAULT_ENCODING) -> Iterator[list[str]]:
    """Yield the documents of `piece` as lists of text lines (paragraphs or sentences).

    Raises DataPrepError when the piece is not text or its file cannot be read whole.
    """
    tally = TextTally()
    try:
        with open_input(piece.path) as f:
            first_line = _seek_first_line(f, piece.start)
            fmt = _format(kind, f, first_line)
            # A file read whole has no end offset to stop at (a compressed file's size is
            # not its length once decompressed).
            end = piece.end if is_splittable(kind, Path(piece.path)) else math.inf
            records = _records(_lines(f, first_line), fmt, end)
            if fmt == BLANK and first_line > 0 and not _previous_line_blank(f, first_line):
                records = _skip_record_at(records, first_line)
            next_check = _CHECK_EVERY
            for _, raw_lines in records:
                lines = [tally.decode(raw, encoding) for raw in raw_lines]
                if tally.bytes >= next_check:  # binary garbage stops the run early, not after the piece
                    tally.check(_describe(piece, kind), encoding)
                    next_check = tally.bytes + _CHECK_EVERY
                document = _to_document(kind, fmt, lines, piece.name, counts)
                if document is not None:
                    yield document
    except _READ_ERRORS as error:
        raise DataPrepError(read_error(piece.path, error)) from None
    finally:
        if tally.undecodable:
            counts.undecodable[piece.name] += tally.undecodable
    tally.check(_describe(piece, kind), encoding)


def open_input(path: str | Path) -> BinaryIO:
    path = str(path)
    if path.endswith(".bz2"):
        return bz2.open(path, "rb")
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def read_head(path: Path, size: int) -> bytes:
    """The first `size` bytes of a file's content (decompressed if compressed)."""
    try:
        with open_input(path) as f:
            return f.read(size)
    except _READ_ERRORS as error:
        raise DataPrepError(read_error(path, error)) from None


def read_error(path: str | Path, error: BaseException) -> str:
    """The one-line message for a file that could not be read."""
    path = str(path)
    if path.endswith(COMPRESSED_SUFFIXES) and not getattr(error, "filename", None):
        kind = path.rsplit(".", 1)[1]
        return (f"{path}: the compressed file is truncated or corrupt ({error}); "
                f"expected a whole .{kind} file")
    return f"cannot read {path}: {getattr(error, 'strerror', None) or error}"


def _describe(piece: Piece, kind: str) -> str:
    if not is_splittable(kind, Path(piece.path)):
        return piece.path
    return f"{piece.path} (bytes {piece.start:,} to {piece.end:,})"


def _seek_first_line(f: BinaryIO, start: int) -> int:
    """Position f at the first line that begins at or after `start`; return that offset."""
    if start == 0:
        return 0
    f.seek(start - 1)
    f.readline()
    return f.tell()


def _format(kind: str, f: BinaryIO, position: int) -> str:
    if kind == "books":
        return WHOLE_FILE
    if kind == "text":
        return BLANK
    if kind == "jsonl":
        return LINE
    # wikiextractor writes JSON lines with --json and <doc> blocks without it: sniff
    # the file's start (a piece may begin mid-file, on any line of article text).
    f.seek(0)
    head = f.read(4096).lstrip()
    f.seek(position)
    return LINE if head.startswith(b"{") else DOC_TAGS


def _lines(f: BinaryIO, position: int) -> Iterator[tuple[int, bytes]]:
    for raw in f:
        yield position, raw
        position += len(raw)


def _records(lines, fmt: str, end: float) -> Iterator[tuple[int, list[bytes]]]:
    """Group lines into (start offset, lines) records, stopping at the first record
    that starts at or after `end` (it belongs to the next piece)."""
    current: tuple[int, list[bytes]] | None = None
    for position, raw in lines:
        blank = not raw.strip()
        if fmt == LINE:
            if blank:
                continue
            if position >= end:
                return
            yield position, [raw]
        elif fmt == DOC_TAGS:
            if raw.startswith(b"<doc"):
                if position >= end:
                    return
                current = (position, [])
            elif raw.startswith(b"</doc>"):
                if current is not None:
                    yield current
                current = None
            elif current is not None:
                current[1].append(raw)
        elif fmt == BLANK:
            if blank:
                if current is not None:
                    yield current
                current = None
            else:
                if current is None:
                    if position >= end:
                        return
                    current = (position, [])
                current[1].append(raw)
        else:  # WHOLE_FILE
            if current is None:
                current = (position, [])
            current[1].append(raw)
    if current is not None:
        yield current


def _previous_line_blank(f: BinaryIO, line_start: int) -> bool:
    window_start = max(0, line_start - 4096)
    f.seek(window_start)
    window = f.read(line_start - 1 - window_start)  # up to, not including, the '\n'
    f.seek(line_start)
    return not window.rsplit(b"\n", 1)[-1].strip()


def _skip_record_at(records, position: int):
    """Drop the record that starts exactly at `position`: the tail of a document that
    began in the previous piece."""
    for record in records:
        if record[0] != position:
            yield record
        break
    yield from records


def _to_document(kind: str, fmt: str, lines: list[str], name: str, counts: ReadCounts) -> list[str] | None:
    if fmt == LINE:
        try:
            text = json.loads(lines[0])["text"]
        except (ValueError, KeyError, TypeError):
            counts.malformed[name] += 1
            return None
        if not isinstance(text, str):
            counts.malformed[name] += 1
            return None
        lines = text.split("\n")
    elif fmt == DOC_TAGS:
        lines = lines[1:]  # the first line inside <doc> is the article title
    if kind == "wikiextractor":
        # wikiextractor escapes &, < and > as HTML entities (its --html-safe default).
        lines = [html.unescape(line) for line in lines]
    return lines
