"""Stage `sentences`: sources -> cleaned, sentence-split text in BERT format, per unit.

Output directory:
  plan.json          the sources, their files, the cleaning settings and the units
  unit_00000.txt     one sentence per line, a blank line after each document
  unit_00000.json    that unit's counts (documents kept and dropped, bytes, bad bytes)
A unit whose .json exists is complete (the .txt is renamed into place first), so a
rerun skips it.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass
from pathlib import Path

from data_prep.cleaning import CleaningConfig, clean_document
from data_prep.errors import DataPrepError
from data_prep.extract import read_origin
from data_prep.fsutil import atomic_path, claim_stage_dir, fingerprint, read_json, read_plan, write_json
from data_prep.parallel import run_parallel
from data_prep.readers import ReadCounts, read_documents
from data_prep.sources import ENCODABLE_KINDS, SourceSpec, list_files
from data_prep.splitting import split_sentences
from data_prep.textcheck import DEFAULT_ENCODING
from data_prep.units import Unit, plan_units

log = logging.getLogger(__name__)

PLAN_VERSION = 1


@dataclass(frozen=True)
class SentenceUnitTask:
    unit: Unit
    out_dir: str
    cleaning: CleaningConfig


def plan_sentences(sources: list[SourceSpec], cleaning: CleaningConfig, unit_bytes: int) -> dict:
    """The stage's plan; its fingerprint names the work directory in `all`."""
    described, with_files, identity = {}, [], []
    for source in sources:
        if source.kind == "wiki-xml":
            raise DataPrepError(f"source {source.name}: run `extract` first and pass its output as wikiextractor:DIR")
        files = list_files(source)
        with_files.append((source, files))
        described[source.name] = {
            **source.describe(),
            "inputs": [{"name": f.name, "size": f.size} for f in files],
            "origin": read_origin(source.path),
        }
        identity.append([source.name, source.kind, str(source.path), [[f.name, f.size, f.mtime_ns] for f in files]]
                        + ([source.encoding] if "encoding" in described[source.name] else []))
    units = plan_units(with_files, unit_bytes)
    plan = {"version": PLAN_VERSION, "cleaning": cleaning.describe(), "unit_bytes": unit_bytes,
            "sources": described, "units": [u.to_json() for u in units]}
    plan["fingerprint"] = fingerprint([PLAN_VERSION, identity, cleaning.describe(), unit_bytes])
    return plan


def run_sentences(plan: dict, out_dir: Path, processes: int, show_progress: bool = True) -> dict:
    """Run (or finish) the plan in out_dir; return the merged counts per source."""
    claim_stage_dir(out_dir, plan, "sentences")
    cleaning = CleaningConfig(**plan["cleaning"])
    units = [Unit.from_json(i, u) for i, u in enumerate(plan["units"])]
    todo = [SentenceUnitTask(u, str(out_dir), cleaning) for u in units if not unit_stats_path(out_dir, u.index).exists()]
    if len(todo) < len(units):
        log.info("sentences: %d of %d units already done, skipped", len(units) - len(todo), len(units))
    run_parallel(process_unit, todo, processes, "sentences",
                 lambda r: (r["bytes_read"], {"docs": r["documents_kept"]}),
                 total=sum(t.unit.bytes for t in todo), show_progress=show_progress)
    counts = summarize(out_dir)
    for name, total in counts.items():
        log.info("sentences: %s", describe_counts(name, total, plan["sources"][name]))
    return counts


def describe_counts(name: str, total: dict, source: dict) -> str:
    """One line per source: what was kept, and what was lost on the way (bad bytes)."""
    dropped = total["documents_dropped"]
    reasons = ", ".join(f"{reason} {n:,}" for reason, n in dropped.items())
    undecodable = sum(total["undecodable"].values())
    encoding = source.get("encoding", DEFAULT_ENCODING)
    line = (f"source {name}: {total['documents_kept']:,} documents kept, {sum(dropped.values()):,} dropped"
            + (f" ({reasons})" if reasons else "")
            + f"; {undecodable:,} undecodable {encoding} byte sequences dropped")
    if undecodable:
        line += f" (in {len(total['undecodable']):,} of {len(source['inputs']):,} files"
        if source["kind"] in ENCODABLE_KINDS:
            line += f"; if they are not {encoding} but e.g. Latin-1, rerun with --encoding {name}=latin-1"
        line += ")"
    if total["malformed"]:
        line += f"; {sum(total['malformed'].values()):,} malformed JSON records skipped"
    return line


def unit_text_path(out_dir: Path, index: int) -> Path:
    return out_dir / f"unit_{index:05d}.txt"


def unit_stats_path(out_dir: Path, index: int) -> Path:
    return out_dir / f"unit_{index:05d}.json"


def process_unit(task: SentenceUnitTask) -> dict:
    counts = ReadCounts()
    dropped: collections.Counter = collections.Counter()
    kept = sentences = 0
    out_dir = Path(task.out_dir)
    text_path = unit_text_path(out_dir, task.unit.index)
    # errors="replace": JSON may carry lone surrogates (\ud800) that UTF-8 cannot hold.
    with atomic_path(text_path) as tmp, open(tmp, "w", encoding="utf-8", errors="replace") as out:
        for piece in task.unit.pieces:
            for lines in read_documents(task.unit.kind, piece, counts, task.unit.encoding):
                lines, reason = clean_document(lines, task.cleaning)
                if reason:
                    dropped[reason] += 1
                    continue
                # BERT-format input is already one sentence per line.
                doc = lines if task.unit.kind == "text" else split_sentences(lines)
                out.write("\n".join(doc))
                out.write("\n\n")
                kept += 1
                sentences += len(doc)
    stats = {"source": task.unit.source, "bytes_read": task.unit.bytes, "documents_kept": kept,
             "documents_dropped": dict(dropped), "sentences": sentences,
             "text_bytes": text_path.stat().st_size,
             "undecodable": dict(counts.undecodable), "malformed": dict(counts.malformed)}
    write_json(unit_stats_path(out_dir, task.unit.index), stats)
    return stats


def summarize(out_dir: Path) -> dict:
    """Counts per source over all units of a finished stage directory."""
    plan = read_plan(out_dir, "sentences")
    per_source: dict = {}
    for index in range(len(plan["units"])):
        stats_path = unit_stats_path(out_dir, index)
        if not stats_path.exists():
            raise DataPrepError(f"{out_dir}: unit {index} is not finished; rerun the sentences stage")
        stats = read_json(stats_path)
        total = per_source.setdefault(stats["source"], {
            "bytes_read": 0, "documents_kept": 0, "documents_dropped": collections.Counter(),
            "sentences": 0, "text_bytes": 0, "undecodable": collections.Counter(),
            "malformed": collections.Counter()})
        for key in ("bytes_read", "documents_kept", "sentences", "text_bytes"):
            total[key] += stats[key]
        for key in ("documents_dropped", "undecodable", "malformed"):
            total[key].update(stats[key])
    for name, total in per_source.items():
        if total["documents_kept"] == 0:
            raise DataPrepError(f"source {name}: no document survived cleaning (empty corpus?)")
        for key in ("documents_dropped", "undecodable", "malformed"):
            total[key] = dict(sorted(total[key].items()))
    return per_source
