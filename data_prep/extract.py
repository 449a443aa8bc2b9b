"""Wikipedia XML dump -> wikiextractor JSON files, by running wikiextractor as a program.

wikiextractor is AGPL: it runs only as a separate process, never imported. Its output
directory is written under a temporary name and renamed when the process succeeds, and
it records where it came from (`.extract.json`), which later stages copy into the
manifest's inputs. wikiextractor cannot resume inside a dump, so an interrupted
extraction starts over; a finished one is skipped.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from data_prep.errors import DataPrepError
from data_prep.fsutil import read_json, write_json
from data_prep.sources import check_mediawiki_dump

ORIGIN_FILE = ".extract.json"
_LOG_FILE = ".wikiextractor.log"
_OUTPUT_FILE_SIZE = "64M"  # wikiextractor's per-file size; later stages re-cut anyway


def extract_wikipedia(xml_path: Path, out_dir: Path, processes: int, show_progress: bool = True) -> Path:
    """Extract `xml_path` into `out_dir` unless a finished extraction is already there."""
    if not xml_path.is_file():
        raise DataPrepError(f"wiki dump not found: {xml_path}")
    check_mediawiki_dump(xml_path)
    origin = {"kind": "wiki-xml", "path": str(xml_path),
              "inputs": [{"name": xml_path.name, "size": xml_path.stat().st_size}]}
    if (out_dir / ORIGIN_FILE).exists():
        if read_json(out_dir / ORIGIN_FILE) != origin:
            raise DataPrepError(f"{out_dir} holds an extraction of another dump; choose another output")
        return out_dir
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    command = [sys.executable, "-m", "wikiextractor.WikiExtractor", "--json", "--quiet",
               "--processes", str(max(1, processes)), "--bytes", _OUTPUT_FILE_SIZE,
               "--output", str(tmp), str(xml_path)]
    with open(tmp / _LOG_FILE, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        _show_output_growth(process, tmp, show_progress)
    if process.returncode != 0:
        # Its last line says why (e.g. "EOFError: Compressed file ended before ..." for a
        # truncated dump); the traceback above it stays in the log.
        lines = [line for line in (tmp / _LOG_FILE).read_text(errors="replace").splitlines() if line.strip()]
        raise DataPrepError(f"wikiextractor failed (exit {process.returncode}) on {xml_path}: "
                            f"{lines[-1].strip() if lines else 'no output'}; its log: {tmp / _LOG_FILE}")
    write_json(tmp / ORIGIN_FILE, origin)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def read_origin(directory: Path) -> dict | None:
    marker = directory / ORIGIN_FILE
    return read_json(marker) if directory.is_dir() and marker.exists() else None


def _show_output_growth(process: subprocess.Popen, directory: Path, show_progress: bool) -> None:
    """wikiextractor reports no progress we can parse: show the text it has written."""
    with tqdm(desc="extract", unit="B", unit_scale=True, disable=not show_progress) as bar:
        while process.poll() is None:
            time.sleep(0.5)
            written = sum(p.stat().st_size for p in directory.rglob("wiki_*") if p.is_file())
            bar.update(written - bar.n)
