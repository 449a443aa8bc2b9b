"""`verify` catches planted defects of each kind, naming shard, check and row."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from data_prep.verify import verify
from data_prep.vocab import load_vocab
from prep_helpers import run_cli

SHARD = "shard_00000.hdf5"


@pytest.fixture
def nvidia_style(tmp_path, wiki_run) -> Path:
    """One of our shards alone in a directory, as NVIDIA's sets come: no manifest."""
    out = tmp_path / "nvidia"
    out.mkdir()
    shutil.copy(wiki_run / "train" / SHARD, out / SHARD)
    return out


def _first_padded_row(f, start: int) -> int:
    mask = f["input_mask"][:]
    return int(np.flatnonzero(mask.sum(axis=1) < mask.shape[1])[start])


def _length(f, row: int) -> int:
    return int(f["input_mask"][row].sum())


def _replace(f, name: str, data) -> None:
    del f[name]
    f.create_dataset(name, data=data)


def _swap_first_positions(f, row):
    for name in ("masked_lm_positions", "masked_lm_ids"):
        values = f[name][row]
        values[[0, 1]] = values[[1, 0]]
        f[name][row] = values


def _duplicate_position(f, row):
    values = f["masked_lm_positions"][row]
    values[1] = values[0]
    f["masked_lm_positions"][row] = values


def _position_outside_mask(f, row):
    positions = f["masked_lm_positions"][row]
    positions[np.count_nonzero(positions) - 1] = _length(f, row)
    f["masked_lm_positions"][row] = positions


def _padding_before_positions(f, row):
    for name in ("masked_lm_positions", "masked_lm_ids"):
        values = f[name][row]
        values[0] = 0
        f[name][row] = values


def _set(name, row, column, value):
    def plant(f, vocab):
        f[name][row, column] = value(f, vocab) if callable(value) else value
    return plant


# check reported -> (row planted, how). Rows differ so that each plant is independent.
PLANTS = {
    "input_ids range": (7, _set("input_ids", 7, 5, lambda f, v: v.size)),
    "masked_lm_ids range": (8, _set("masked_lm_ids", 8, 0, -1)),
    "masked positions sorted and unique": (9, lambda f, v: _swap_first_positions(f, 9)),
    "masked positions sorted and unique ": (10, lambda f, v: _duplicate_position(f, 10)),
    "masked positions inside input_mask": (11, lambda f, v: _position_outside_mask(f, 11)),
    "masked positions padding": (12, lambda f, v: _padding_before_positions(f, 12)),
    "masked labels": (13, _set("masked_lm_ids", 13, 0, 0)),
    "masked labels ": (14, _set("masked_lm_ids", 14, 1, lambda f, v: v.id_of("[SEP]"))),
    "next_sentence_labels": (15, lambda f, v: f["next_sentence_labels"].__setitem__(15, 2)),
    "segment_ids": (16, _set("segment_ids", 16, 1, 2)),
    "special tokens": (17, _set("input_ids", 17, 0, 5)),
}


@pytest.mark.parametrize("check", sorted(PLANTS))
def test_each_planted_row_defect_is_named_with_shard_and_row(nvidia_style, vocab_path, check):
    row, plant = PLANTS[check]
    with h5py.File(nvidia_style / SHARD, "r+") as f:
        plant(f, load_vocab(vocab_path))
    report = verify(nvidia_style, vocab=vocab_path)
    assert [(d.shard, d.row, d.check) for d in report.defects] == [(SHARD, row, check.strip())]


def test_padding_and_input_mask_defects(nvidia_style, vocab_path):
    with h5py.File(nvidia_style / SHARD, "r+") as f:
        hole, padded = _first_padded_row(f, 0), _first_padded_row(f, 1)
        # A hole: the mask is no longer a prefix, a token sits in "padding", and the
        # row's last real token (by count) is no longer [SEP].
        f["input_mask"][hole, 3] = 0
        f["input_ids"][padded, _length(f, padded)] = 1000
    report = verify(nvidia_style, vocab=vocab_path)
    assert hole < padded
    # One defect per check and block of rows, naming the first bad row and the count.
    assert sorted((d.row, d.check, d.message.split(" among")[0]) for d in report.defects) == [
        (hole, "input_mask", "1 bad rows"), (hole, "padding", "2 bad rows"), (hole, "special tokens", "1 bad rows")]


@pytest.mark.parametrize("plant, check", [
    (lambda f: f.__delitem__("masked_lm_ids"), "keys"),
    (lambda f: _replace(f, "input_mask", f["input_mask"][:].astype(np.int32)), "dtype"),
    (lambda f: _replace(f, "masked_lm_positions", f["masked_lm_positions"][:, :19]), "shape"),
])
def test_whole_shard_defects(nvidia_style, vocab_path, plant, check):
    with h5py.File(nvidia_style / SHARD, "r+") as f:
        plant(f)
    assert [(d.shard, d.row, d.check) for d in verify(nvidia_style, vocab=vocab_path).defects] == [
        (SHARD, None, check)]


def test_a_file_that_is_not_hdf5(nvidia_style, vocab_path):
    (nvidia_style / "shard_00001.hdf5").write_bytes(b"not an hdf5 file")
    assert [(d.shard, d.check) for d in verify(nvidia_style, vocab=vocab_path).defects] == [
        ("shard_00001.hdf5", "open")]


def test_manifest_disagreements(tmp_path, wiki_run):
    out = tmp_path / "out"
    shutil.copytree(wiki_run, out, ignore=shutil.ignore_patterns("work"))
    assert verify(out).ok
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"][0]["rows"] += 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "train" / "shard_00001.hdf5").unlink()
    shutil.copy(out / "train" / SHARD, out / "train" / "shard_09999.hdf5")
    with open(out / "vocab.txt", "a") as f:
        f.write("extra\n")
    found = sorted((d.shard, d.check, d.message) for d in verify(out).defects)
    assert [(s, m) for s, _, m in found] == sorted([
        ("train/shard_00000.hdf5", f"{manifest['splits']['train']['shards'][0]['rows'] - 1} rows, "
                                   f"the manifest says {manifest['splits']['train']['shards'][0]['rows']}"),
        ("train/shard_00001.hdf5", "listed shard is missing"),
        ("train/shard_09999.hdf5", "shard not in the manifest"),
        ("vocab.txt", "vocab.txt does not match vocab_sha256"),
    ])


def test_cli_prints_statistics_and_exits_1_on_a_defect(nvidia_style, vocab_path, capsys):
    assert run_cli("verify", nvidia_style, "--vocab", vocab_path) == 0
    clean = capsys.readouterr().out
    with h5py.File(nvidia_style / SHARD) as f:
        rows, tokens = len(f["input_mask"]), int(f["input_mask"][:].sum())
    assert f"instances={rows:,}, tokens={tokens:,}, padding_fraction=" in clean
    assert "masked_fraction=0.15" in clean and "1 shards, OK" in clean
    with h5py.File(nvidia_style / SHARD, "r+") as f:
        f["next_sentence_labels"][3] = 7
    assert run_cli("verify", nvidia_style, "--vocab-size", 30522) == 1
    assert f"DEFECT {SHARD} row 3: next_sentence_labels" in capsys.readouterr().out


def test_without_a_vocabulary_size_ids_cannot_be_checked(nvidia_style, capsys):
    assert run_cli("verify", nvidia_style) == 2
    assert "pass --vocab or --vocab-size" in capsys.readouterr().err


def test_one_split_is_verified_against_its_own_part_of_the_manifest(tmp_path, wiki_run):
    out = tmp_path / "out"
    shutil.copytree(wiki_run, out, ignore=shutil.ignore_patterns("work"))
    assert set(json.loads((out / "manifest.json").read_text())["splits"]) == {"train", "validation"}
    assert verify(out / "train").ok and verify(out / "validation").ok
    (out / "train" / "shard_00001.hdf5").unlink()
    assert verify(out / "validation").ok
    assert [(d.shard, d.message) for d in verify(out / "train").defects] == [
        ("train/shard_00001.hdf5", "listed shard is missing")]
