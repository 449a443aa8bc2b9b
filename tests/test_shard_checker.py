"""The one shard checker (bing_bert_pld.shard_validation) as the trainer uses it: the
fast path agrees with the row rules, settings come from the manifest or the shapes, the
set's identity, a scan split across ranks, and the trainer's one `error:` line.
Planted defects through `data_prep verify` and the trainer alike: tests/data_prep/test_prep_verify.py."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter

import numpy as np
import pytest

from bing_bert_pld import train
from bing_bert_pld.schema import FIELDS, IN_PROGRESS_NAME, MANIFEST_NAME
from bing_bert_pld.shard_rules import FastCheck, Rules, row_checks
from bing_bert_pld.shard_validation import DataError, scan_values, validate_shard_set
from data_prep import manifest as data_prep_manifest
from shard_factory import make_arrays, write_shard, write_shard_set

SEQ, PRED, VOCAB = 16, 3, 100


# ---------------------------------------------------------------- the fast path

def _broken_rules(arrays: dict[str, np.ndarray], rules: Rules) -> set[str]:
    checks = row_checks({k: a.astype(np.int64) for k, a in arrays.items()}, rules)
    return {check for check, bad in checks.items() if bad.any()}


@pytest.mark.parametrize("special", [False, True])
def test_the_fast_path_passes_a_block_exactly_when_no_row_breaks_a_rule(special):
    """Random single and multiple changes, mostly to values at the rules' edges: the
    whole-block test and the row-by-row rules always agree."""
    rng = np.random.default_rng(7)
    rows = 48
    clean = make_arrays(rows, SEQ, PRED, VOCAB, rng)
    rules = Rules(VOCAB, SEQ, PRED)
    if special:  # [CLS] first and [SEP] last, as data_prep writes rows; ids 2 and 3 stand for them
        lengths = clean["input_mask"].sum(axis=1)
        clean["input_ids"][:, 0] = 2
        clean["input_ids"][np.arange(rows), lengths - 1] = 3
        keep = clean["masked_lm_positions"] < lengths[:, None] - 1  # never [SEP]'s position
        clean["masked_lm_positions"] *= keep
        clean["masked_lm_ids"] *= keep
        order = np.argsort(clean["masked_lm_positions"] == 0, axis=1, kind="stable")  # real slots first again
        for key in ("masked_lm_positions", "masked_lm_ids"):
            clean[key] = np.take_along_axis(clean[key], order, axis=1)
        rules = Rules(VOCAB, SEQ, PRED, cls_id=2, sep_id=3, label_forbidden=(0, 2, 3))
    check = FastCheck(rows, SEQ, PRED)
    assert not _broken_rules(clean, rules) and check(clean, rules)
    edges = [-128, -1, 0, 1, 2, 3, 7, SEQ - 1, SEQ, VOCAB - 1, VOCAB]
    verdicts, seen = [], Counter()
    for _ in range(1500):
        arrays = {k: a.copy() for k, a in clean.items()}
        for _ in range(rng.integers(1, 4)):
            spec = FIELDS[rng.integers(len(FIELDS))]
            array = arrays[spec.name]
            at = tuple(int(rng.integers(n)) for n in array.shape)
            value = edges[rng.integers(len(edges))] if rng.random() < 0.8 else int(rng.integers(-5, VOCAB + 5))
            array[at] = np.array(value).astype(array.dtype)  # int8 wraps, as a bad writer would
        broken = _broken_rules(arrays, rules)
        assert check(arrays, rules) == (not broken), (broken, arrays)
        verdicts.append(bool(broken))
        seen.update(broken)
    assert 0.2 < np.mean(verdicts) < 0.95  # both kinds were tried, many times
    assert set(seen) == set(row_checks({k: a.astype(np.int64) for k, a in clean.items()}, rules))
    assert min(seen.values()) >= 20, seen  # every rule broken, often


# ---------------------------------------------------------------- settings and identity

def test_settings_come_from_the_configuration_else_the_manifest_else_the_shapes(tmp_path):
    write_shard_set(tmp_path / "ours", 2, 5, SEQ, PRED, VOCAB, seed=0, split="train")
    info = validate_shard_set(tmp_path / "ours" / "train", None, None, VOCAB)
    assert (info.seq_len, info.max_pred) == (SEQ, PRED)
    # A shard that disagrees is named against the manifest's setting.
    write_shard(tmp_path / "ours" / "train" / "shard_00001.hdf5",
                make_arrays(5, 2 * SEQ, PRED, VOCAB, np.random.default_rng(0)))
    with pytest.raises(DataError, match=rf"shard_00001.hdf5: shape: input_ids has shape \(5, 32\), "
                                        rf"expected \(5, 16\) \(seq_len=16\)"):
        validate_shard_set(tmp_path / "ours" / "train", None, None, VOCAB)

    write_shard_set(tmp_path / "nvidia", 2, 5, SEQ, PRED, VOCAB, seed=0)  # no manifest
    info = validate_shard_set(tmp_path / "nvidia", None, None, VOCAB)
    assert (info.seq_len, info.max_pred, info.vocab_sha256, info.manifest_sha256) == (SEQ, PRED, None, None)
    with pytest.raises(DataError, match=r"masked_lm_positions has shape \(5, 3\), expected \(5, 4\) \(max_pred=4\)"):
        validate_shard_set(tmp_path / "nvidia", None, PRED + 1, VOCAB)


def test_identity_names_files_rows_and_manifest(tmp_path):
    write_shard_set(tmp_path / "a", 3, [5, 6, 7], SEQ, PRED, VOCAB, seed=0, split="train")
    info = validate_shard_set(tmp_path / "a" / "train", SEQ, PRED, VOCAB)
    identity = info.identity()
    assert identity == {"files": ["shard_00000.hdf5", "shard_00001.hdf5", "shard_00002.hdf5"], "rows": [5, 6, 7],
                        "manifest_sha256": hashlib.sha256((tmp_path / "a" / MANIFEST_NAME).read_bytes()).hexdigest()}
    assert json.loads(json.dumps(identity)) == identity
    shutil.copytree(tmp_path / "a", tmp_path / "moved")  # the same set elsewhere: the same identity
    assert validate_shard_set(tmp_path / "moved" / "train", SEQ, PRED, VOCAB).identity() == identity
    # One shard fewer, listed as such: a different set.
    write_shard_set(tmp_path / "b", 2, [5, 6], SEQ, PRED, VOCAB, seed=0, split="train")
    fewer = validate_shard_set(tmp_path / "b" / "train", SEQ, PRED, VOCAB).identity()
    assert fewer["files"] == identity["files"][:2] and fewer["rows"] == [5, 6]
    assert fewer["manifest_sha256"] != identity["manifest_sha256"]


# ---------------------------------------------------------------- scope, ranks, damaged files

def test_ranks_split_the_value_scan(tmp_path):
    paths = write_shard_set(tmp_path, 4, 6, SEQ, PRED, VOCAB, seed=0, split="train")
    arrays = make_arrays(6, SEQ, PRED, VOCAB, np.random.default_rng(3))
    arrays["segment_ids"][4, 2] = 2
    write_shard(paths[3], arrays)
    info = validate_shard_set(tmp_path / "train", SEQ, PRED, VOCAB, check_values=False)  # structure only
    scan_values(info, info.files[0::2])  # rank 0 of 2: shards 0 and 2
    with pytest.raises(DataError, match=r"shard_00003.hdf5 row 4: segment_ids: segment_ids holds 2 at column 2"):
        scan_values(info, info.files[1::2])


def test_a_glob_may_pick_listed_shards_but_not_unlisted_ones(tmp_path):
    write_shard_set(tmp_path, 3, 4, SEQ, PRED, VOCAB, seed=0, split="train")
    info = validate_shard_set(str(tmp_path / "train" / "shard_0000[01].hdf5"), SEQ, PRED, VOCAB)
    assert [f.name for f in info.files] == ["shard_00000.hdf5", "shard_00001.hdf5"]
    shutil.copy(tmp_path / "train" / "shard_00000.hdf5", tmp_path / "train" / "shard_00007.hdf5")
    with pytest.raises(DataError, match=rf"shard_00007.hdf5: manifest: shard not listed in {tmp_path / MANIFEST_NAME}"):
        validate_shard_set(str(tmp_path / "train" / "shard_0000*.hdf5"), SEQ, PRED, VOCAB)


def test_a_truncated_shard_is_named(tmp_path):
    paths = write_shard_set(tmp_path, 2, 64, SEQ, PRED, VOCAB, seed=0)
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) * 2 // 3])  # the header whole, the last rows gone
    with pytest.raises(DataError, match=r"shard_00001.hdf5(: open: not a readable HDF5 file| row \d+: read: rows)"):
        validate_shard_set(tmp_path, SEQ, PRED, VOCAB)


# ---------------------------------------------------------------- the trainer

TRAIN_SEQ, TRAIN_PRED, TRAIN_VOCAB = 32, 5, 512  # bert-tiny's vocabulary


def _segment_two(out):
    arrays = make_arrays(16, TRAIN_SEQ, TRAIN_PRED, TRAIN_VOCAB, np.random.default_rng(0))
    arrays["segment_ids"][9, 3] = 2
    write_shard(out / "train" / "shard_00001.hdf5", arrays)


def _killed(out):
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    (out / IN_PROGRESS_NAME).write_text(json.dumps({k: manifest[k] for k in data_prep_manifest.REQUEST_KEYS
                                                    if k in manifest}))
    (out / MANIFEST_NAME).unlink()


@pytest.mark.parametrize("damage, error", [
    (_segment_two, "{out}/train/shard_00001.hdf5 row 9: segment_ids: segment_ids holds 2 at column 3, expected 0 or 1"),
    (lambda out: (out / "train" / "shard_00001.hdf5").unlink(),
     "{out}/train/shard_00001.hdf5: manifest: listed in {out}/manifest.json but missing"),
    (lambda out: shutil.copy(out / "train" / "shard_00000.hdf5", out / "train" / "shard_00002.hdf5"),
     "{out}/train/shard_00002.hdf5: manifest: shard not listed in {out}/manifest.json"),
    (_killed, "{out}/.in_progress.json: unfinished: the data_prep run that writes this shard set did not finish"),
])
def test_the_trainer_stops_with_one_error_line(tmp_path, capsys, damage, error):
    out = tmp_path / "data"
    write_shard_set(out, 2, 16, TRAIN_SEQ, TRAIN_PRED, TRAIN_VOCAB, seed=0, split="train")
    damage(out)
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
                              "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
                              "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 1}}}))
    code = train.main(["--deepspeed_config", str(ds), "--model_config", "bert-tiny", "--train_dir", str(out / "train"),
                       "--output_dir", str(tmp_path / "run"), "--max_seq_length", str(TRAIN_SEQ),
                       "--max_predictions_per_seq", str(TRAIN_PRED), "--max_steps", "1"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and "Traceback" not in err
    assert errors == [errors[0]] and errors[0].startswith(f"error: train data: {error.format(out=out)}"), err
    assert not (tmp_path / "run" / "checkpoints").exists()
