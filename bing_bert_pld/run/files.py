"""File writes that survive a crash, and the one sha256 helper: digests, synced and atomic writes, JSON reads."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

_HASH_CHUNK = 8 << 20


def file_digest(path: Path, sync: bool = False) -> dict:
    """{"bytes", "sha256"} of a file; with sync, its data is on disk before this returns."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
        if sync:
            os.fsync(f.fileno())
    return {"bytes": size, "sha256": digest.hexdigest()}


def sha256_of(path: Path) -> str:
    return file_digest(Path(path))["sha256"]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Readers see the old file or the new one, never a part, even after a power cut."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_synced(path: Path, text: str) -> dict:
    """Write, fsync, and return the file's digest (for a directory published afterwards)."""
    with open(path, "w") as f:
        f.write(text)
    return file_digest(path, sync=True)


def read_json_object(path: Path) -> tuple[Optional[dict], Optional[str]]:
    """(object, None), or (None, what is wrong: missing, not JSON, not an object)."""
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        return None, f"{path.name} is missing"
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return None, f"{path.name} is not valid JSON ({err})"
    if not isinstance(value, dict):
        return None, f"{path.name} is not a JSON object"
    return value, None
