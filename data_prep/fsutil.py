"""Atomic file output: every artifact appears under its final name only when whole.

Stages detect finished work by the presence of final names, so a killed run must
never leave a partial file there: write to a temporary sibling, then rename (atomic
on POSIX within one directory). A full disk (or quota, or file-size limit) is
reported as a DataPrepError naming the file, with the temporary file removed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

from data_prep.errors import DataPrepError

TMP_SUFFIX = ".tmp"
PLAN_FILE = "plan.json"  # each stage directory's description of its work
# Errors that say the file system is out of room for a write, not that the code is wrong.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path; rename it to `final` only if the block succeeds."""
    tmp = final.with_name(final.name + TMP_SUFFIX)
    try:
        yield tmp
        os.replace(tmp, final)
    except OSError as error:
        if error.errno not in NO_SPACE:
            raise
        raise DataPrepError(f"cannot write {final}: {os.strerror(error.errno)}; free space on its file system "
                            f"(or choose another --output / --work-dir) and run again: finished work is "
                            f"kept") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def check_writable_dir(path: Path, option: str) -> None:
    """Fail before any work unless `path` is, or can be made, a directory we can write in."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise DataPrepError(f"{option} {path}: {existing} is a file, not a directory; expected a directory "
                            f"(or a path where one can be made)")
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only = os.statvfs(existing).f_flag & os.ST_RDONLY
        reason = "its file system is read-only" if read_only else "permission denied"
        raise DataPrepError(f"{option} {path}: cannot write in {existing} ({reason}); "
                            f"expected a writable directory")


def write_json(path: Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")


def read_json(path: Path):
    return json.loads(path.read_text())


def claim_stage_dir(directory: Path, plan: dict, stage: str) -> None:
    """Make `directory` the home of `plan`'s work, or refuse if another plan's work is there."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / PLAN_FILE
    if path.exists() and read_json(path)["fingerprint"] != plan["fingerprint"]:
        raise DataPrepError(f"{directory} holds {stage} from other inputs or settings; choose another directory")
    write_json(path, plan)


def read_plan(directory: Path, stage: str) -> dict:
    """A stage directory's plan.json, or a clear error when it is not one."""
    path = Path(directory) / PLAN_FILE
    if not path.is_file():
        raise DataPrepError(f"{directory} is not the output of the {stage} stage (no {PLAN_FILE})")
    return read_json(path)


def fingerprint(obj) -> str:
    """A short stable hash of a JSON-able object, used to name work directories."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]
