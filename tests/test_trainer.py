"""The trainer in one process: bad input stops it early, a crashed save is never resumed."""

import json
import re
from pathlib import Path

import numpy as np
import torch
import pytest

from bing_bert_pld import train
from bing_bert_pld.run import checkpoint, layout
from bing_bert_pld.run.files import sha256_of
from shard_factory import make_arrays, write_shard, write_shard_set

SEQ, PRED, VOCAB = 32, 5, 512
DS = {"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 1,
      "steps_per_print": 10**6, "gradient_clipping": 1.0,
      "optimizer": {"type": "Lamb", "params": {"lr": 1e-3, "weight_decay": 0.01}},
      "progressive_layer_drop": {"enabled": True, "theta": 0.5, "gamma": 0.01}}


@pytest.fixture(scope="module")
def data(one_rank_train_set):
    return one_rank_train_set(SEQ, PRED, VOCAB)


def argv(tmp_path, data, ds=None, **overrides):
    tmp_path.mkdir(parents=True, exist_ok=True)
    ds_path = tmp_path / "ds.json"
    ds_path.write_text(json.dumps(DS if ds is None else ds))
    args = {"deepspeed_config": ds_path, "model_config": "bert-tiny",
            "train_dir": data / "train", "output_dir": tmp_path / "run",
            "max_seq_length": SEQ, "max_predictions_per_seq": PRED, "max_steps": 4,
            "log_interval": 1, "checkpoint_interval": 2, **overrides}
    return [item for key, value in args.items() for item in (f"--{key}", str(value))]


def run_main(args, capsys):
    code = train.main(args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("ds_change, message", [
    ({"progressive_layer_drop": {"enabled": True, "theta": 1.5}}, r"must be in \(0, 1\], got 1.5"),
    ({"progressive_layer_drop": {"enabled": True, "gamma": -1}}, r"gamma must be .* got -1"),
    ({"zero_optimization": {"stage": 1}}, r"LAMB with zero_optimization.stage 1 is refused"),
    ({"train_batch_size": 7}, r"train_batch_size 7 is not divisible|train_batch_size 7 !="),
])
def test_bad_deepspeed_settings_fail_before_training(tmp_path, data, capsys, ds_change, message):
    code, err = run_main(argv(tmp_path, data, ds={**DS, **ds_change}), capsys)
    assert code == 2
    assert "ds.json" in err
    assert re.search(message, err), err
    assert not (tmp_path / "run").exists()  # nothing started


def test_unparsable_deepspeed_json(tmp_path, data, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    args = argv(tmp_path, data)
    args[args.index("--deepspeed_config") + 1] = str(bad)
    code, err = run_main(args, capsys)
    assert code == 2 and f"{bad}: not valid JSON" in err


def test_unknown_model_config_key(tmp_path, data, capsys):
    model = tmp_path / "model.json"
    model.write_text(json.dumps({"vocab_size": VOCAB, "hidden_layers": 2}))
    code, err = run_main(argv(tmp_path, data, model_config=model), capsys)
    assert code == 2 and f"{model}: unknown key 'hidden_layers' (did you mean 'num_hidden_layers'?) " \
        "in the model config" in err


def test_missing_shards(tmp_path, data, capsys):
    code, err = run_main(argv(tmp_path, data, train_dir=tmp_path / "nowhere"), capsys)
    assert code == 2 and "train data" in err and "nowhere" in err


def test_sequence_length_differs_from_configuration(tmp_path, data, capsys):
    code, err = run_main(argv(tmp_path, data, max_seq_length=64), capsys)
    assert code == 2 and "seq_len" in err and "64" in err


def test_token_id_beyond_vocabulary(tmp_path, data, capsys):
    arrays = make_arrays(16, SEQ, PRED, VOCAB, np.random.default_rng(0))
    arrays["input_ids"][3, 2] = VOCAB  # one id past the end of the vocabulary
    (tmp_path / "bad").mkdir()
    shard = write_shard(tmp_path / "bad" / "shard_00000.hdf5", arrays)
    code, err = run_main(argv(tmp_path, data, train_dir=shard.parent), capsys)
    assert code == 2 and "shard_00000.hdf5" in err and str(VOCAB) in err and "input_ids" in err


def test_crash_during_save_leaves_the_previous_checkpoint_as_latest(tmp_path, data, monkeypatch):
    trainer = train.Trainer(train.parse_args(argv(tmp_path, data, max_steps=2)))
    trainer.train()
    root = tmp_path / "run" / "checkpoints"
    assert layout.latest_tag(root) == "global_step2"

    trainer = train.Trainer(train.parse_args(argv(tmp_path, data, max_steps=4)))
    assert trainer.step == 2  # resumed
    for _ in range(2):
        trainer.train_step()
    real_save = checkpoint.torch.save

    def crash(obj, path, *args, **kwargs):
        if "rank0_state" in str(path):
            Path(path).write_bytes(b"half a file")
            raise OSError("disk full")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        trainer.save()
    monkeypatch.undo()
    trainer.loader.close()
    hidden = [p.name for p in root.iterdir() if p.name.startswith(".")]
    assert len(hidden) == 1 and hidden[0].startswith(".saving-global_step4-")  # the broken one...
    assert not (root / "global_step4").exists()
    assert layout.latest_tag(root) == "global_step2"  # ...and resume never picks it

    resumed = train.Trainer(train.parse_args(argv(tmp_path, data, max_steps=4)))
    assert resumed.step == 2 and resumed.samples == 16
    assert resumed.train() == "max_steps"
    assert layout.latest_tag(root) == "global_step4"
    assert sorted(p.name for p in root.iterdir()) == ["global_step2", "global_step4", "latest"]
    state = json.loads((root / "global_step4" / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["samples"] == 32
    run_config = json.loads((root / "global_step4" / "run_config.json").read_text())
    assert run_config["model_config"]["num_hidden_layers"] == 4
    assert run_config["deepspeed_setup"]["pld"] == {"theta": 0.5, "gamma": 0.01}


def test_stops_at_max_samples(tmp_path, data):
    trainer = train.Trainer(train.parse_args(argv(tmp_path, data, max_steps=1000, max_samples=20)))
    assert trainer.train() == "max_samples"
    assert (trainer.step, trainer.samples) == (3, 24)  # 8 samples a step: 24 is the first >= 20


def test_stops_at_the_wall_clock_budget_counting_earlier_launches(tmp_path, data):
    trainer = train.Trainer(train.parse_args(argv(tmp_path, data, max_steps=1000,
                                                  max_time_minutes=2)))
    trainer.progress.elapsed_before_launch = 120.0  # as if resumed from a run that used the budget
    assert trainer.train() == "time budget"
    assert trainer.step == 0


def test_bf16_from_the_deepspeed_json(tmp_path, data):
    ds = {**DS, "bf16": {"enabled": True}}
    trainer = train.Trainer(train.parse_args(argv(tmp_path, data, ds=ds, max_steps=2)))
    assert trainer.engine.bfloat16_enabled()
    assert next(trainer.engine.module.parameters()).dtype == torch.bfloat16
    losses = [trainer.train_step()[0].item() for _ in range(2)]
    assert all(0 < loss < 20 for loss in losses)
    trainer.loader.close()


def test_compiled_layers_train_like_eager_layers(tmp_path, data):
    """--compile_layers compiles each layer on its own: same losses, gates still honoured."""
    losses = {}
    ds = {**DS, "progressive_layer_drop": {"enabled": True, "theta": 0.5, "gamma": 1.0}}
    for compiled in (False, True):
        args = argv(tmp_path / str(compiled), data, ds=ds, max_steps=4)
        if compiled:
            args.append("--compile_layers")
        trainer = train.Trainer(train.parse_args(args))
        losses[compiled] = [trainer.train_step()[0].item() for _ in range(4)]
        assert trainer.pld.stats.total_active_layers < 4 * 4  # some layers were skipped
        trainer.loader.close()
    assert losses[True] == pytest.approx(losses[False], abs=1e-4)


def test_vocabulary_beside_the_shards_is_recorded_and_a_different_one_refused(tmp_path, capsys):
    data = tmp_path / "data"
    write_shard_set(data, 1, 16, SEQ, PRED, VOCAB, seed=0, split="train")
    vocab = data / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello"]) + "\n")
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["vocab_sha256"] = sha256_of(vocab)
    (data / "manifest.json").write_text(json.dumps(manifest))

    trainer = train.Trainer(train.parse_args(argv(tmp_path, data, max_steps=1)))
    assert trainer.plan.run_config["vocab_file"] == "vocab.txt"  # the run's own copy, by name
    assert trainer.plan.run_config["vocab_sha256"] == manifest["vocab_sha256"]
    trainer.train()
    run = tmp_path / "run"
    assert (run / "vocab.txt").read_bytes() == vocab.read_bytes()
    assert (run / "checkpoints" / "global_step1" / "vocab.txt").read_bytes() == vocab.read_bytes()
    listed = json.loads((run / "checkpoints" / "global_step1" / "manifest.json").read_text())["files"]
    assert listed["vocab.txt"]["sha256"] == manifest["vocab_sha256"]

    other = tmp_path / "other_vocab.txt"
    other.write_text("[PAD]\n[UNK]\n")
    code, err = run_main(argv(tmp_path, data, vocab_file=other), capsys)
    assert code == 2 and "other_vocab.txt is not the vocabulary the shards were made with" in err

    with open(vocab, "a") as f:  # the vocab.txt beside the shards no longer theirs
        f.write("world\n")
    code, err = run_main(argv(tmp_path, data), capsys)
    assert code == 2 and f"vocab.txt beside the shards {vocab} is not the vocabulary" in err


def test_pld_on_a_post_ln_model_and_a_too_long_sequence_fail_before_training(tmp_path, data, capsys):
    """The checks config_check makes are the trainer's own (ds_config.check_setup_against_model)."""
    model = tmp_path / "post_ln.json"
    tiny = json.loads((Path(train.__file__).parent / "configs" / "bert-tiny.json").read_text())
    model.write_text(json.dumps({**tiny, "pre_layer_norm": False}))
    code, err = run_main(argv(tmp_path / "a", data, model_config=model), capsys)
    assert code == 2 and "PLD is on but" in err and "is Post-LN" in err
    assert not (tmp_path / "a" / "run").exists()
    code, err = run_main(argv(tmp_path / "b", data, max_seq_length=10**4), capsys)
    assert code == 2 and "--max_seq_length 10000 exceeds the model's max_position_embeddings" in err
    assert not (tmp_path / "b" / "run").exists()
