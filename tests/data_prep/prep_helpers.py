"""Helpers for the data_prep tests (a uniquely named module: tests have no packages)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

from data_prep.cli import main

# Small, fast settings shared by the pipeline tests.
FAST = ["--no-progress", "--duplication", "2", "--validation-fraction", "0.05", "--rows-per-shard", "2048"]


def run_cli(*args) -> int:
    return main([str(a) for a in args])


def output_files(out: Path) -> dict[str, bytes]:
    """Every file of a shard set (shards, manifest, vocab), by relative path; not the work directory."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.relative_to(out).parts[0] != "work"}


def one_error_line(stderr: str) -> str:
    """The one `error:` line of a failed run's stderr, which must hold no traceback."""
    assert "Traceback" not in stderr and "Segmentation" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


def run_cli_process(*args, timeout: float = 120, **popen) -> subprocess.CompletedProcess:
    """`python -m data_prep ...` as its own process: its exit status, and stderr as text."""
    return subprocess.run([sys.executable, "-m", "data_prep", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **popen)


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[bool]:
    """Mount a tmpfs with `options` (e.g. "size=2M", "ro") at `path` for the block.
    Yields whether it is mounted: only root may mount, and some containers forbid it."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = os.geteuid() == 0 and shutil.which("mount") is not None and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=True)
