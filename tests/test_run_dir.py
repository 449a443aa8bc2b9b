"""The run directory's contract: a trainer started from the shards alone, and a run directory that moves and keeps working."""

import json
import logging
import random
import shutil
from pathlib import Path

import pytest

from shard_factory import write_shard_set
from tests.test_glue_finetune import write_config, write_sst2
from tests.test_glue_pretrained import write_vocab

from bing_bert_pld import hf_export, train
from bing_bert_pld.engine import init_distributed
from bing_bert_pld.glue import finetune
from bing_bert_pld.run.files import sha256_of
from bing_bert_pld.run.info import info, main as info_main

SEQ, PRED, VOCAB = 32, 5, 512
SCHEDULE_STEPS = 3
DS = {"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 1,
      "steps_per_print": 10**6, "gradient_clipping": 1.0,
      "optimizer": {"type": "Lamb", "params": {"lr": 1e-3, "weight_decay": 0.01}},
      "scheduler": {"type": "WarmupExpDecay", "params": {"total_steps": SCHEDULE_STEPS,
                                                         "warmup_proportion": 0.25,
                                                         "decay_rate": 0.9, "decay_steps": 2}},
      "progressive_layer_drop": {"enabled": True, "theta": 0.5, "gamma": 0.01}}


def prepared_data(root: Path) -> Path:
    """data_prep's layout: manifest.json and vocab.txt beside train/, the manifest naming
    the vocabulary by sha256."""
    write_shard_set(root, 1, 32, SEQ, PRED, VOCAB, seed=0, split="train")
    vocab = write_vocab(root / "vocab.txt", VOCAB)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["vocab_sha256"] = sha256_of(vocab)
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def four_flags(tmp_path: Path, data: Path, out: Path, ds: dict = DS) -> list[str]:
    config = tmp_path / "ds.json"
    config.write_text(json.dumps(ds))
    return ["--deepspeed_config", str(config), "--model_config", "bert-tiny",
            "--train_dir", str(data / "train"), "--output_dir", str(out)]


@pytest.fixture(autouse=True)
def distributed():
    init_distributed()


def test_the_trainer_runs_from_four_flags_taking_the_rest_from_the_shards(tmp_path, capsys):
    data = prepared_data(tmp_path / "data")
    out = tmp_path / "run"
    assert train.main(four_flags(tmp_path, data, out)) == 0
    summary = info(out)
    # The LR schedule's end stops the run; the shards' manifest gives the sequence shape.
    assert (summary["step"], summary["latest"]) == (SCHEDULE_STEPS, f"global_step{SCHEDULE_STEPS}")
    assert (summary["seq_len"], summary["max_pred"], summary["lowercase"]) == (SEQ, PRED, True)
    assert summary["vocab_file"] == str((out / "checkpoints" / "global_step3" / "vocab.txt").resolve())
    assert summary["vocab_sha256"] == sha256_of(data / "vocab.txt")
    assert (out / "vocab.txt").read_bytes() == (data / "vocab.txt").read_bytes()
    recorded = json.loads((out / "checkpoints" / "global_step3" / "run_config.json").read_text())
    assert recorded["run"]["max_seq_length"] is None and recorded["vocab_file"] == "vocab.txt"
    assert recorded["data"]["seq_len"] == SEQ and recorded["data"]["max_pred"] == PRED
    capsys.readouterr()
    assert info_main(["info", str(out), "--get", "step"]) == 0
    assert capsys.readouterr().out == f"{SCHEDULE_STEPS}\n"


def test_shards_without_a_manifest_give_their_shapes(tmp_path):
    data = tmp_path / "nvidia"
    write_shard_set(data / "train", 1, 16, 24, 4, VOCAB, seed=1)  # no manifest, no vocab
    trainer = train.Trainer(train.parse_args(four_flags(tmp_path, data, tmp_path / "run")))
    assert (trainer.plan.seq_len, trainer.plan.max_pred, trainer.plan.vocab_file) == (24, 4, None)
    assert trainer.args.max_steps == SCHEDULE_STEPS
    trainer.loader.close()


def test_a_stated_sequence_length_is_checked_against_the_shards(tmp_path, capsys):
    data = prepared_data(tmp_path / "data")
    argv = four_flags(tmp_path, data, tmp_path / "run") + ["--max_seq_length", "64"]
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1
    assert "manifest.json: manifest: 'seq_len' is 32, but the command line has seq_len=64" in err


def test_no_stopping_rule_and_a_schedule_without_an_end_is_one_error_line(tmp_path, capsys):
    data = prepared_data(tmp_path / "data")
    endless = {k: v for k, v in DS.items() if k != "scheduler"}
    assert train.main(four_flags(tmp_path, data, tmp_path / "run", endless)) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "error: no stopping rule: give --max_steps" in err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_moved_run_directory_resumes_exports_and_fine_tunes_with_its_own_vocabulary(
        tmp_path, caplog):
    data = prepared_data(tmp_path / "data")
    vocab_bytes = (data / "vocab.txt").read_bytes()
    first = tmp_path / "first" / "run"
    assert train.main(four_flags(tmp_path, data, first) + ["--max_steps", "2"]) == 0

    moved = tmp_path / "elsewhere" / "run"
    shutil.move(str(first), str(moved))
    (data / "vocab.txt").unlink()  # only the run's own copy is left

    caplog.set_level(logging.INFO, logger="bing_bert_pld")
    assert train.main(four_flags(tmp_path, data, moved)) == 0
    assert f"resumed from {moved}/checkpoints/global_step2 at step 2" in caplog.text
    assert info(moved)["step"] == SCHEDULE_STEPS

    exported = tmp_path / "hf"
    assert hf_export.main([str(moved), str(exported)]) == 0
    assert (exported / "vocab.txt").read_bytes() == vocab_bytes

    glue = tmp_path / "GLUE"
    write_sst2(glue, random.Random(0), sizes=(16, 8))
    config = write_config(tmp_path / "glue.json", epochs=1, lr=1e-9)
    assert finetune.main(["--task", "SST-2", "--data_dir", str(glue), "--init", str(moved),
                          "--output_dir", str(tmp_path / "glue_out"),
                          "--deepspeed_config", str(config)]) == 0


FIXTURE = Path(__file__).parent / "fixtures" / "checkpoint_v3"


def test_info_reads_an_older_run_and_verify_finds_damage(tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE / "checkpoints", run / "checkpoints")
    summary = info(run)
    assert (summary["latest"], summary["step"], summary["samples"]) == ("global_step2", 2, 16)
    assert (summary["seq_len"], summary["max_pred"]) == (32, 5)  # from its command line
    assert summary["vocab_file"] is None and summary["problem"] is None
    assert info_main(["info", str(run), "--verify", "--get", "latest"]) == 0
    assert capsys.readouterr().out == "global_step2\n"

    states = run / "checkpoints" / "global_step2" / "mp_rank_00_model_states.pt"
    data = bytearray(states.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    states.write_bytes(bytes(data))
    assert info_main(["info", str(run), "--verify", "--json"]) == 1
    shown = json.loads(capsys.readouterr().out)
    assert shown["problem"].endswith("mp_rank_00_model_states.pt does not match the sha256 "
                                     "recorded when it was saved")


def test_info_of_a_run_without_checkpoints_and_of_no_run(tmp_path, capsys):
    (tmp_path / "fresh").mkdir()
    assert info_main(["info", str(tmp_path / "fresh"), "--get", "step"]) == 0
    assert capsys.readouterr().out == "0\n"
    assert info_main(["info", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'missing'}: no such run directory\n"


@pytest.mark.parametrize("damage", ["state_values", "state_not_object", "config_sections"])
def test_info_of_hand_damaged_files_names_the_problem_without_a_traceback(tmp_path, capsys, damage):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE / "checkpoints", run / "checkpoints")
    tag = run / "checkpoints" / "global_step2"
    if damage == "state_values":
        state = json.loads((tag / "trainer_state.json").read_text())
        (tag / "trainer_state.json").write_text(json.dumps({**state, "step": "two", "elapsed_s": None}))
        expected = "trainer_state.json: not a finite number: step, elapsed_s"
    elif damage == "state_not_object":
        (tag / "trainer_state.json").write_text("[1, 2]")
        expected = "global_step2: trainer_state.json is not a JSON object"
    else:
        (tag / "run_config.json").write_text(json.dumps({"data": [1], "run": "x", "model_config": 3,
                                                         "vocab_file": 7}))
        expected = None
    for argv in (["info", str(run)], ["info", str(run), "--json"], ["info", str(run), "--get", "step"]):
        assert info_main(argv) == 0
    out = capsys.readouterr().out
    shown = info(run)
    if expected is not None:
        assert shown["problem"].endswith(expected) and expected in out
    else:  # a damaged section reads as one never recorded
        assert shown["problem"] is None
        assert (shown["seq_len"], shown["model_config"], shown["train_dir"]) == (None, None, None)


def test_a_recorded_vocabulary_path_never_climbs_out_of_the_run(tmp_path):
    from bing_bert_pld.run.config import vocab_of

    tag = tmp_path / "run" / "checkpoints" / "global_step1"
    tag.mkdir(parents=True)
    (tmp_path / "secret.txt").write_text("not a vocabulary\n")
    assert vocab_of({"vocab_file": "../../../secret.txt"}, tag) is None
    (tag / "vocab.txt").write_text("[PAD]\n")  # its own copy is what a checkpoint uses
    assert vocab_of({"vocab_file": "../../../secret.txt"}, tag) == (tag / "vocab.txt").resolve()
