"""The resolved configuration of a run: the data facts, the run's own vocabulary, and run_config.json read back.

run_config.json (written with every checkpoint, and at the run directory's top at each
launch) holds the model configuration, the DeepSpeed setup, the command line, the batch
sizes, and the facts of the data the run trains on (`data`): the shard set's identity, the
sequence length and masked positions per sequence (from the shards' manifest, else their
shapes), and the vocabulary's sha256 and lowercasing. The vocabulary itself is copied
into the run directory and into every checkpoint as `vocab.txt`, so a run directory that
moves to another machine keeps its tokenizer.

Checkpoints written before this (tests/fixtures/checkpoint_v3) recorded `vocab_file` as an
absolute path and no lowercasing; `vocab_of` and `lowercase_of` still read them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from .files import atomic_write_bytes, atomic_write_text, read_json_object, sha256_of
from .layout import RUN_CONFIG, VOCAB, RunDir, published_tags

logger = logging.getLogger(__name__)


def data_facts(info) -> dict:
    """What the run takes from its training shards (a shard_validation.ShardSetInfo)."""
    return {"train": info.identity(), "seq_len": info.seq_len, "max_pred": info.max_pred,
            "vocab_sha256": info.vocab_sha256, "lowercase": info.lowercase}


def section(run_config: dict, key: str) -> dict:
    """run_config[key] when it is an object, else {} (absent, or damaged by hand: the
    readers then fall back as for a checkpoint that never recorded it)."""
    value = run_config.get(key)
    return value if isinstance(value, dict) else {}


def sequence_shape(run_config: dict) -> dict:
    """{"seq_len", "max_pred"} a run trained with: its data facts, or (written before
    they existed) its command line."""
    data = section(run_config, "data")
    run = section(run_config, "run")
    return {"seq_len": data.get("seq_len", run.get("max_seq_length")),
            "max_pred": data.get("max_pred", run.get("max_predictions_per_seq"))}


def find_vocab(given: Optional[Path], manifest_dir: Optional[Path], train_dir: Path,
               run_dir: RunDir) -> tuple[Optional[Path], str]:
    """(the vocabulary file, how it was found): --vocab_file, else data_prep's vocab.txt
    beside the shards' manifest, else the run directory's own copy (a run resumed on
    shards that came without one)."""
    if given is not None:
        return given, "--vocab_file"
    for directory in dict.fromkeys(d for d in (manifest_dir, train_dir.parent) if d is not None):
        if (directory / VOCAB).is_file():
            return directory / VOCAB, "vocab.txt beside the shards"
    if run_dir.vocab.is_file():
        return run_dir.vocab, f"the run's copy {run_dir.vocab}"
    return None, "no vocabulary"


def keep_vocab_copy(source: Path, run_dir: RunDir) -> Path:
    """Copy the vocabulary into the run directory (whole or not at all); returns the copy."""
    target = run_dir.vocab
    if source.resolve() != target.resolve():
        data = source.read_bytes()
        if not target.is_file() or target.read_bytes() != data:
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(target, data)
    return target


def write_launch_config(run_dir: RunDir, run_config: dict) -> None:
    """The configuration of the latest launch, at the run directory's top (for people;
    readers use the checkpoint's own, which matches its weights)."""
    run_dir.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir.run_config, json.dumps(run_config, indent=2, default=str))


def vocab_of(run_config: dict, tag_dir: Path) -> Optional[Path]:
    """The vocabulary a checkpoint was trained with: the copy inside it, else the run
    directory's copy, else the path an older checkpoint recorded (when it still exists).
    A copy is used only when its sha256 is the one recorded."""
    recorded_sha = run_config.get("vocab_sha256") or section(run_config, "data").get("vocab_sha256")
    recorded = run_config.get("vocab_file")
    if not isinstance(recorded, str):
        recorded = None
    candidates = [tag_dir / VOCAB, tag_dir.parent.parent / VOCAB]
    if recorded and ".." not in Path(recorded).parts:  # never a path climbing out of the run
        candidates += [Path(recorded), tag_dir / recorded]
    for candidate in candidates:
        if candidate.is_file():
            if recorded_sha and sha256_of(candidate) != recorded_sha:
                logger.warning("%s is not the vocabulary %s/%s records (sha256 %s): not used",
                               candidate, tag_dir, RUN_CONFIG, recorded_sha)
                continue
            return candidate.resolve()
    if recorded:
        logger.warning("vocab file %s recorded in %s/%s was not found", recorded, tag_dir, RUN_CONFIG)
    return None


def lowercase_of(run_config: dict, vocab_path: Optional[Path]) -> Optional[bool]:
    """Whether the run's text was lowercased: its data facts, else (older checkpoints) the
    data manifest beside the vocabulary or one level above the train shards."""
    for value in (section(run_config, "data").get("lowercase"), run_config.get("lowercase"),
                  run_config.get("do_lower_case")):  # the latter two: written by other tools
        if isinstance(value, bool):
            return value
    manifests = []
    if vocab_path is not None:
        manifests.append(vocab_path.parent / "manifest.json")
    train_dir = section(run_config, "run").get("train_dir")
    if isinstance(train_dir, str) and train_dir:
        manifests.append(Path(train_dir).parent / "manifest.json")
    for manifest in manifests:
        data, problem = read_json_object(manifest)
        if problem is None and isinstance(data.get("lowercase"), bool):
            return data["lowercase"]
    return None


def newest_run_config(run_dir: Path) -> Optional[dict]:
    """run_config.json of the newest checkpoint under RUN_DIR/checkpoints that has a
    readable one; None without."""
    root = RunDir(run_dir).checkpoints
    for tag in published_tags(root):
        data, problem = read_json_object(root / tag / RUN_CONFIG)
        if problem is None:
            return data
    return None
