"""`verify` and the trainer's check (one checker, bing_bert_pld.shard_validation) catch
planted defects of each kind: verify reports every one, naming shard, check, row and
value; validate_shard_set stops at the first with the same names."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from bing_bert_pld.shard_validation import DataError, validate_shard_set
from data_prep.fsutil import write_json
from data_prep.manifest import REQUEST_KEYS
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


# Each plant returns the value the check reports.
def _swap_first_positions(f, row):
    for name in ("masked_lm_positions", "masked_lm_ids"):
        values = f[name][row]
        values[[0, 1]] = values[[1, 0]]
        f[name][row] = values
    return int(f["masked_lm_positions"][row, 1])


def _duplicate_position(f, row):
    values = f["masked_lm_positions"][row]
    values[1] = values[0]
    f["masked_lm_positions"][row] = values
    return int(values[1])


def _position_outside_mask(f, row):
    positions = f["masked_lm_positions"][row]
    positions[np.count_nonzero(positions) - 1] = _length(f, row)
    f["masked_lm_positions"][row] = positions
    return _length(f, row)


def _padding_before_positions(f, row):
    for name in ("masked_lm_positions", "masked_lm_ids"):
        values = f[name][row]
        values[0] = 0
        f[name][row] = values
    return int(f["masked_lm_positions"][row, 1])


def _set(name, row, column, value):
    def plant(f, vocab):
        f[name][row, column] = planted = value(f, vocab) if callable(value) else value
        return planted
    return plant


# check reported -> (row planted, how; each plant returns the value the check reports).
# Rows differ so that each plant is independent.
PLANTS = {
    "input_ids range": (7, _set("input_ids", 7, 5, lambda f, v: v.size)),
    "masked_lm_ids range": (8, _set("masked_lm_ids", 8, 0, -1)),
    "masked positions sorted and unique": (9, lambda f, v: _swap_first_positions(f, 9)),
    "masked positions sorted and unique ": (10, lambda f, v: _duplicate_position(f, 10)),
    "masked positions inside input_mask": (11, lambda f, v: _position_outside_mask(f, 11)),
    "masked positions padding": (12, lambda f, v: _padding_before_positions(f, 12)),
    "masked labels": (13, _set("masked_lm_ids", 13, 0, 0)),
    "masked labels ": (14, _set("masked_lm_ids", 14, 1, lambda f, v: v.id_of("[SEP]"))),
    "next_sentence_labels": (15, lambda f, v: f["next_sentence_labels"].__setitem__(15, 2) or 2),
    "segment_ids": (16, _set("segment_ids", 16, 1, 2)),  # was an IndexError at the first batch
    "segment_ids ": (17, _set("segment_ids", 17, 2, -1)),
    "segment_ids  ": (18, lambda f, v: _segment_falls(f, 18)),
    "input_mask": (19, _set("input_mask", 19, 3, 7)),
    "input_mask ": (_first_padded_row, lambda f, v: _negative_mask_in_padding(f)),
    "special tokens": (21, _set("input_ids", 21, 0, 5)),
}
# Checks that need the vocabulary's special ids: only verify is given them (--vocab).
VERIFY_ONLY = {"special tokens", "masked labels "}


def _segment_falls(f, row):
    """Segment B's last token ([SEP]) back in segment A: 0s, 1s, then a 0 inside the mask."""
    f["segment_ids"][row, _length(f, row) - 1] = 0
    return 0


def _negative_mask_in_padding(f):
    row = _first_padded_row(f, 0)
    f["input_mask"][row, _length(f, row)] = -1  # the row's length by count drops by one: still past its last mask
    return -1


@pytest.mark.parametrize("check", sorted(PLANTS))
def test_each_planted_row_defect_is_named_with_shard_row_and_value(nvidia_style, vocab_path, check):
    row, plant = PLANTS[check]
    vocab = load_vocab(vocab_path)
    with h5py.File(nvidia_style / SHARD, "r+") as f:
        row = row if isinstance(row, int) else row(f, 0)
        value = plant(f, vocab)
    # The rules the trainer has (a vocabulary size, no special ids) unless the check needs more.
    report = verify(nvidia_style, **({"vocab": vocab_path} if check in VERIFY_ONLY else {"vocab_size": vocab.size}))
    assert [(d.shard, d.row, d.check, d.value) for d in report.defects] == [(SHARD, row, check.strip(), value)]
    if check in VERIFY_ONLY:
        validate_shard_set(nvidia_style, None, None, vocab.size)
        return
    # The trainer's path: the same file, row, check and value, as its one error line.
    with pytest.raises(DataError) as err:
        validate_shard_set(nvidia_style, None, None, vocab.size)
    assert str(err.value) == f"{nvidia_style / SHARD} row {row}: {check.strip()}: " \
                             f"{report.defects[0].message.split('; ')[0]}"
    assert re.search(rf"(holds|to) {value}\b", str(err.value)), str(err.value)  # the value itself


def test_shards_without_a_manifest_take_their_settings_from_the_shapes(nvidia_style):
    info = validate_shard_set(nvidia_style, None, None, 30522)
    assert (info.seq_len, info.max_pred, info.files, info.manifest_sha256) == (128, 20, (nvidia_style / SHARD,), None)
    assert verify(nvidia_style, vocab_size=30522).ok
    with pytest.raises(DataError, match=r"input_ids has shape \(\d+, 128\), expected \(\d+, 64\) \(seq_len=64\)"):
        validate_shard_set(nvidia_style, 64, None, 30522)


def test_padding_and_input_mask_defects(nvidia_style, vocab_path):
    with h5py.File(nvidia_style / SHARD, "r+") as f:
        hole, padded = _first_padded_row(f, 0), _first_padded_row(f, 1)
        # A hole: the mask is no longer a prefix, a token sits in "padding", and the
        # row's last real token (by count) is no longer [SEP].
        f["input_mask"][hole, 3] = 0
        f["input_ids"][padded, _length(f, padded)] = 1000
    report = verify(nvidia_style, vocab=vocab_path)
    assert hole < padded
    with h5py.File(nvidia_style / SHARD) as f:
        rows, token, length = len(f["input_mask"]), f["input_ids"][hole, 3], _length(f, hole)
        last = f["input_ids"][hole, length - 1]
    # One defect per check and block of rows (all rows here), naming the first bad row,
    # the value and the count.
    assert sorted((d.row, d.check, d.value, d.message) for d in report.defects) == [
        (hole, "input_mask", 1, f"input_mask is 0 at column 3 but 1 at column 4, expected ones then zeros; "
                                f"1 bad row among rows 0-{rows - 1}"),
        (hole, "padding", token, f"input_ids holds {token} at column 3, a padding position (input_mask 0), "
                                 f"expected 0; 2 bad rows among rows 0-{rows - 1}"),
        (hole, "special tokens", last, f"input_ids ends with {last} at column {length - 1}, "
                                       f"expected [SEP] (102); 1 bad row among rows 0-{rows - 1}")]
    with pytest.raises(DataError, match=rf"{SHARD} row {hole}: input_mask: input_mask is 0 at column 3 but 1"):
        validate_shard_set(nvidia_style, None, None, 30522)


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


def _copy_of(wiki_run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(wiki_run, out, ignore=shutil.ignore_patterns("work"))
    return out


def test_manifest_disagreements(tmp_path, wiki_run):
    out = _copy_of(wiki_run, tmp_path)
    assert verify(out).ok
    manifest = json.loads((out / "manifest.json").read_text())
    rows = manifest["splits"]["train"]["shards"][0]["rows"]
    manifest["splits"]["train"]["shards"][0]["rows"] += 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "train" / "shard_00001.hdf5").unlink()
    shutil.copy(out / "train" / SHARD, out / "train" / "shard_09999.hdf5")
    with open(out / "vocab.txt", "a") as f:
        f.write("extra\n")
    assert sorted((d.shard, d.check, d.message) for d in verify(out).defects) == sorted([
        ("manifest.json", "manifest", "'vocab_size' is 30522, but vocab.txt has vocab_size=30523"),
        ("train/shard_00000.hdf5", "manifest", f"has {rows} rows but the manifest lists {rows + 1}"),
        ("train/shard_00001.hdf5", "manifest", "listed in manifest.json but missing"),
        ("train/shard_09999.hdf5", "manifest", "shard not listed in manifest.json"),
        ("vocab.txt", "manifest", "vocab.txt does not match vocab_sha256"),
    ])


def _missing(out):
    (out / "train" / "shard_00001.hdf5").unlink()


def _extra(out):
    shutil.copy(out / "train" / SHARD, out / "train" / "shard_09999.hdf5")


def _rows_disagree(out):
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"][1]["rows"] -= 1
    (out / "manifest.json").write_text(json.dumps(manifest))


def _killed_in_the_shards_stage(out):
    """What data_prep leaves when killed while writing shards: the request in
    .in_progress.json, no manifest.json, some shards not yet written."""
    manifest = json.loads((out / "manifest.json").read_text())
    write_json(out / ".in_progress.json", {k: manifest[k] for k in REQUEST_KEYS})
    (out / "manifest.json").unlink()
    (out / "train" / "shard_00001.hdf5").unlink()


@pytest.mark.parametrize("damage, file, check, message", [
    (_missing, "train/shard_00001.hdf5", "manifest", "listed in {manifest} but missing"),
    (_extra, "train/shard_09999.hdf5", "manifest", "shard not listed in {manifest}"),
    (_rows_disagree, "train/shard_00001.hdf5", "manifest", "has {rows} rows but the manifest lists {listed}"),
    (_killed_in_the_shards_stage, ".in_progress.json", "unfinished",
     "the data_prep run that writes this shard set did not finish (.in_progress.json is there, manifest.json "
     "is not): run the same `python -m data_prep shards` (or `all`) command again with --output {out}; "
     "it keeps the shards already written"),
])
def test_shard_set_defects_on_both_paths(tmp_path, wiki_run, damage, file, check, message):
    out = _copy_of(wiki_run, tmp_path)
    rows = json.loads((out / "manifest.json").read_text())["splits"]["train"]["shards"][1]["rows"]
    damage(out)
    report = verify(out)
    assert [(d.shard, d.row, d.check, d.message) for d in report.defects] == [
        (file, None, check, message.format(rows=rows, listed=rows - 1, out=out, manifest="manifest.json"))]
    assert report.shards  # the rest is still checked, row by row
    # The trainer, pointed at the split, stops with the same finding, naming files in full.
    with pytest.raises(DataError) as err:
        validate_shard_set(out / "train", None, None, 30522)
    assert str(err.value) == f"{out / file}: {check}: " + message.format(
        rows=rows, listed=rows - 1, out=out, manifest=out / "manifest.json")


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
        ("train/shard_00001.hdf5", "listed in manifest.json but missing")]
