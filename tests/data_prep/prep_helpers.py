"""Helpers for the data_prep tests (a uniquely named module: tests have no packages)."""

from __future__ import annotations

from pathlib import Path

from data_prep.cli import main

# Small, fast settings shared by the pipeline tests.
FAST = ["--no-progress", "--duplication", "2", "--validation-fraction", "0.05", "--rows-per-shard", "2048"]


def run_cli(*args) -> int:
    return main([str(a) for a in args])


def output_files(out: Path) -> dict[str, bytes]:
    """Every file of a shard set (shards, manifest, vocab), by relative path; not the work directory."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.relative_to(out).parts[0] != "work"}
