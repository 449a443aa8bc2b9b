"""Input sources: what the user names on the command line, and the files behind them.

A source is `[name=]kind:path`. Kinds:
  wiki-xml       a MediaWiki XML dump (.xml or .xml.bz2); extracted by wikiextractor first
  wikiextractor  wikiextractor output (a file or a directory; JSON or <doc> format)
  books          a directory of plain-text books, one file per book (BookCorpus layout)
  text           BERT format: one sentence per line, a blank line between documents
  jsonl          JSON lines with a "text" field, one document per line
Text is UTF-8 unless `--encoding NAME=CODEC` names another (ASCII-compatible) codec
for a books, text or jsonl source. Before any work, each file's first 64 KB must look
like text (textcheck.py) and a wiki-xml dump must start as MediaWiki XML.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from data_prep.errors import DataPrepError
from data_prep.readers import read_head
from data_prep.textcheck import DEFAULT_ENCODING, SNIFF_BYTES, check_encoding, tally_head

KINDS = ("wiki-xml", "wikiextractor", "books", "text", "jsonl")
# wikiextractor writes UTF-8, and a dump declares its own encoding.
ENCODABLE_KINDS = ("books", "text", "jsonl")
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


@dataclass(frozen=True)
class SourceSpec:
    name: str
    kind: str
    path: Path
    encoding: str = DEFAULT_ENCODING

    def describe(self) -> dict:
        described = {"kind": self.kind, "path": str(self.path)}
        if self.encoding != DEFAULT_ENCODING:  # UTF-8 sources are described as before
            described["encoding"] = self.encoding
        return described


@dataclass(frozen=True)
class InputFile:
    source: str
    path: Path
    name: str  # relative to the source path: what the manifest records
    size: int
    mtime_ns: int


def parse_source(text: str) -> SourceSpec:
    name, sep, rest = text.partition("=")
    if not sep or ":" in name:  # no explicit name: "kind:path"
        name, rest = "", text
    kind, sep, path = rest.partition(":")
    if not sep or not path:
        raise DataPrepError(f"source {text!r}: expected [name=]kind:path with kind in {KINDS}")
    if kind not in KINDS:
        raise DataPrepError(f"source {text!r}: unknown kind {kind!r}; expected one of {KINDS}")
    return SourceSpec(name=name or kind, kind=kind, path=Path(path))


def with_encodings(sources: list[SourceSpec], options: list[str]) -> list[SourceSpec]:
    """Apply `--encoding NAME=CODEC` options to the sources they name."""
    by_name = {s.name: s for s in sources}
    for option in options:
        name, sep, codec = option.partition("=")
        if not sep or not codec:
            raise DataPrepError(f"--encoding {option!r}: expected NAME=CODEC, e.g. books=latin-1")
        if name not in by_name:
            raise DataPrepError(f"--encoding {option!r}: no source is named {name!r}; "
                                f"the sources are {sorted(by_name)}")
        if by_name[name].kind not in ENCODABLE_KINDS:
            raise DataPrepError(f"--encoding {option!r}: a {by_name[name].kind} source is always UTF-8; "
                                f"an encoding applies to {', '.join(ENCODABLE_KINDS)} sources")
        by_name[name] = dataclasses.replace(by_name[name], encoding=check_encoding(codec))
    return [by_name[s.name] for s in sources]


def check_sources(sources: list[SourceSpec]) -> None:
    """Fail before any work on duplicate names, missing paths, wrong path types and
    wiki-xml files that are not MediaWiki XML."""
    if not sources:
        raise DataPrepError("no --source given")
    names = [s.name for s in sources]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataPrepError(f"source names must be unique; repeated: {duplicates}")
    for source in sources:
        if not source.path.exists():
            raise DataPrepError(f"source {source.name}: path does not exist: {source.path}")
        if source.kind == "wiki-xml" and not source.path.is_file():
            raise DataPrepError(f"source {source.name}: wiki-xml needs a dump file, got {source.path}")
        if source.kind == "books" and not source.path.is_dir():
            raise DataPrepError(f"source {source.name}: books needs a directory of books, got {source.path}")
        if source.kind == "wiki-xml":
            check_mediawiki_dump(source.path, f"source {source.name}: ")


def check_mediawiki_dump(path: Path, prefix: str = "") -> None:
    """Fail unless the file (decompressed) starts as a MediaWiki XML export: wikiextractor
    turns anything else into nothing, after a long scan."""
    head = read_head(path, SNIFF_BYTES)
    start = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    if start.startswith(b"<?xml"):  # the declaration, maybe comments, then the root element
        start = start[start.find(b"?>") + 2:].lstrip()
        while start.startswith(b"<!--"):
            start = start[start.find(b"-->") + 3:].lstrip()
    if not start.startswith(b"<mediawiki"):
        raise DataPrepError(
            f"{prefix}{path} is not a MediaWiki XML dump: it starts with {head[:40]!r}, expected '<mediawiki' "
            f"(after an optional '<?xml ...?>'); for plain text use the books (a directory, one file per "
            f"document) or text (one sentence per line) source kind")


def check_text_files(source: SourceSpec, files: list[InputFile]) -> None:
    """Fail before any work when a file's first 64 KB do not look like text (textcheck.py)."""
    for file in files:
        if file.size == 0:
            continue
        head = read_head(file.path, SNIFF_BYTES)
        what = f"source {source.name}: {file.path}"
        if head.startswith(_UTF16_BOMS) and source.encoding == DEFAULT_ENCODING:
            raise DataPrepError(f"{what} starts with a UTF-16 byte-order mark; expected UTF-8 text: convert it, "
                                f"e.g. iconv -f utf-16 -t utf-8")
        if len(head) == SNIFF_BYTES:
            what += f" (first {SNIFF_BYTES:,} bytes)"
        tally_head(head, source.encoding).check(what, source.encoding)


def list_files(source: SourceSpec) -> list[InputFile]:
    """The source's files in a fixed order (sorted relative paths); hidden files skipped."""
    if source.path.is_file():
        found = [(source.path, source.path.name)]
    else:
        found = []
        for root, dirs, files in os.walk(source.path):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for file in files:
                if not file.startswith("."):
                    path = Path(root) / file
                    found.append((path, path.relative_to(source.path).as_posix()))
        found.sort(key=lambda item: item[1])
    inputs = []
    for path, name in found:
        stat = path.stat()
        inputs.append(InputFile(source.name, path, name, stat.st_size, stat.st_mtime_ns))
    if sum(f.size for f in inputs) == 0:
        raise DataPrepError(f"source {source.name}: empty corpus (no non-empty files under {source.path})")
    return inputs
