"""The shard set's manifest (manifest.json) and the output-directory guard.

A manifest has two halves. The *request* (settings, vocabulary, inputs) says what the
shards are; training checks its configuration against it, and a rerun compares its
own request with it. The *results* (per-split shard rows, per-source counts) say what
came out. While shards are being written the request sits in `.in_progress.json`;
`manifest.json` appears, atomically, only when every shard is in place.
"""

from __future__ import annotations

from pathlib import Path

from bing_bert_pld.schema import IN_PROGRESS_NAME, MANIFEST_NAME, SHARD_SUFFIX
from data_prep.errors import DataPrepError
from data_prep.fsutil import read_json, write_json
from data_prep.records import SPLITS

FORMAT_VERSION = 1
REQUEST_KEYS = ("format_version", "seq_len", "max_pred", "vocab_size", "vocab_sha256", "lowercase", "masking",
                "seed", "build", "inputs")
# Unknown before the vocabulary is trained: `all` compares them only later.
VOCAB_KEYS = ("vocab_size", "vocab_sha256")


def request_from_plan(plan: dict, shard_settings: dict) -> dict:
    """The request half of the manifest, from the instances stage's plan."""
    sentences = plan["sentences"]
    # A wikiextractor directory made by `extract` names the dump it came from.
    sources = {name: source["origin"] or source for name, source in sentences["sources"].items()}
    return build_request(plan["config"], plan["lowercase"], plan["vocab"], sentences["cleaning"], sources,
                         shard_settings)


def build_request(instance_config: dict, lowercase: bool, vocab: dict, cleaning: dict, sources: dict,
                  shard_settings: dict) -> dict:
    """sources: name -> {"kind", "path", "inputs": [{"name", "size"}]}; vocab: {"size", "sha256"}."""
    return {
        "format_version": FORMAT_VERSION,
        "seq_len": instance_config["seq_len"],
        "max_pred": instance_config["max_pred"],
        "vocab_size": vocab["size"],
        "vocab_sha256": vocab["sha256"],
        "lowercase": lowercase,
        "masking": instance_config["masking"],
        "seed": instance_config["seed"],
        "build": {
            "duplication_factor": instance_config["duplication"],
            "short_seq_prob": instance_config["short_seq_prob"],
            "validation_fraction": instance_config["validation_fraction"],
            "bucket_mb": instance_config["bucket_mb"],
            "cleaning": cleaning,
            # "encoding" only where a source names one: UTF-8 requests stay as they were.
            "sources": {name: {k: s[k] for k in ("kind", "path", "encoding") if k in s}
                        for name, s in sorted(sources.items())},
            "shards": shard_settings,
        },
        "inputs": [{"source": name, "name": item["name"], "size": item["size"]}
                   for name, s in sorted(sources.items()) for item in s["inputs"]],
    }


def check_output_dir(out_dir: Path, request: dict, ignore: tuple[str, ...] = ()) -> None:
    """Refuse to mix shards of different requests in one directory; allow resuming."""
    for name in (MANIFEST_NAME, IN_PROGRESS_NAME):
        path = out_dir / name
        if path.exists():
            existing = read_json(path)
            differing = [k for k in REQUEST_KEYS if k not in ignore and existing.get(k) != request.get(k)]
            if differing:
                raise DataPrepError(f"{out_dir} already holds shards made with different settings "
                                    f"(differing: {', '.join(differing)}); use another output directory")
            return
    stray = [p for split in SPLITS for p in sorted((out_dir / split).glob("*" + SHARD_SUFFIX))]
    if stray:
        raise DataPrepError(f"{out_dir} holds shards without a manifest ({stray[0]}, ...); "
                            f"use another output directory")


def begin(out_dir: Path, request: dict) -> None:
    check_output_dir(out_dir, request)
    write_json(out_dir / IN_PROGRESS_NAME, request)


def finish(out_dir: Path, manifest: dict) -> None:
    write_json(out_dir / MANIFEST_NAME, manifest)
    (out_dir / IN_PROGRESS_NAME).unlink(missing_ok=True)

