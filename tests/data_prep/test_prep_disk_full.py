"""A disk that fills up while shards are written: one error line, no half-written file
under a final name, and the same command finishes the work once there is room.

Two ways to fill a disk: a 2 MB tmpfs (needs root and a mount the container allows),
or RLIMIT_FSIZE in the child process with SIGXFSZ ignored, so that write() fails with
EFBIG instead of killing it. Each runs where it can; this machine runs both.
"""

from __future__ import annotations

import re
import resource
import signal
import subprocess

import pytest

from prep_helpers import FAST, one_error_line, output_files, run_cli, run_cli_process, tmpfs

# About 6 train shards of 0.5 MB each: more than 2 MB in all.
BOOKS = ["--processes", 1, "--unit-mb", 0.2, *FAST, "--duplication", 6, "--validation-fraction", 0.2,
         "--rows-per-shard", 500]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, epistles_dir, vocab_path):
    """A finished run: its work directory (so later runs only write shards) and its output."""
    root = tmp_path_factory.mktemp("disk_full")
    args = ["all", "--source", f"books:{epistles_dir}", "--vocab", vocab_path, "--work-dir", root / "work", *BOOKS]
    assert run_cli(*args, "--output", root / "reference") == 0
    return args, output_files(root / "reference")


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.parametrize("full_by", ["tmpfs", "rlimit"])
def test_disk_full_while_writing_shards(tmp_path, reference, full_by):
    args, expected = reference
    shard_bytes = len(expected["train/shard_00000.hdf5"])
    train_bytes = sum(len(data) for name, data in expected.items() if name.startswith("train/"))
    assert train_bytes > (2 << 20) > 2 * shard_bytes  # a few shards fit in 2 MB, not all
    disk = tmp_path / "disk"
    with tmpfs(disk, "size=2M" if full_by == "tmpfs" else "size=64M") as mounted:
        if full_by == "tmpfs" and not mounted:
            pytest.skip("cannot mount a tmpfs here (not root, or the container forbids it); the rlimit case runs")
        out = disk / "out"
        # Below one shard's size: the first shard write fails; bucket offsets and JSON files fit.
        limit = {"preexec_fn": _limit_file_size(shard_bytes // 2)} if full_by == "rlimit" else {}
        result = run_cli_process(*args, "--output", out, **limit)
        assert result.returncode == 2, result.stderr
        reason = "No space left on device" if full_by == "tmpfs" else "File too large"
        assert re.fullmatch(rf"error: cannot write {re.escape(str(out))}/train/shard_\d{{5}}\.hdf5: {reason}; free "
                            r"space on its file system \(or choose another --output / --work-dir\) and run again: "
                            r"finished work is kept", one_error_line(result.stderr))
        left = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
        shards = {name: data for name, data in left.items() if name.endswith(".hdf5")}
        assert set(left) == set(shards) | {".in_progress.json"}  # no .tmp file, no manifest
        assert all(data == expected[name] for name, data in shards.items())  # only whole shards
        # As many as fit (the tmpfs's own accounting may leave room for one less).
        fit = 0 if full_by == "rlimit" else (2 << 20) // shard_bytes
        assert len(shards) in (fit, max(0, fit - 1)), sorted(shards)

        if mounted:
            subprocess.run(["mount", "-o", "remount,size=64M", str(disk)], check=True)
        result = run_cli_process(*args, "--output", out)
        assert result.returncode == 0, result.stderr
        assert output_files(out) == expected
