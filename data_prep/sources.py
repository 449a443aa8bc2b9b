"""Input sources: what the user names on the command line, and the files behind them.

A source is `[name=]kind:path`. Kinds:
  wiki-xml       a MediaWiki XML dump (.xml or .xml.bz2); extracted by wikiextractor first
  wikiextractor  wikiextractor output (a file or a directory; JSON or <doc> format)
  books          a directory of plain-text books, one file per book (BookCorpus layout)
  text           BERT format: one sentence per line, a blank line between documents
  jsonl          JSON lines with a "text" field, one document per line
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from data_prep.errors import DataPrepError

KINDS = ("wiki-xml", "wikiextractor", "books", "text", "jsonl")


@dataclass(frozen=True)
class SourceSpec:
    name: str
    kind: str
    path: Path

    def describe(self) -> dict:
        return {"kind": self.kind, "path": str(self.path)}


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


def check_sources(sources: list[SourceSpec]) -> None:
    """Fail before any work on duplicate names, missing paths and wrong path types."""
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
