"""Checkpoints in one process: published whole, never rewritten, verified with fallback,
safely loaded, configuration changes refused or recorded, old checkpoints still resume.

The 2-rank run killed during its final save is tests/test_checkpoint_faults.py.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bing_bert_pld import lr_schedules, resume_config, train
from bing_bert_pld.run import checkpoint, layout
from bing_bert_pld.run.checkpoint import CheckpointError, UnsafeCheckpointError
from bing_bert_pld.run.pretrained import load_pretrained, read_pretrained

SEQ, PRED, VOCAB = 32, 5, 512
SCHEDULE = {"type": "WarmupExpDecay", "params": {"total_steps": 8, "warmup_proportion": 0.25,
                                                 "decay_rate": 0.9, "decay_steps": 2}}
LAMB = {"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 1,
        "steps_per_print": 10**6, "gradient_clipping": 1.0,
        "optimizer": {"type": "Lamb", "params": {"lr": 1e-3, "weight_decay": 0.01}},
        "scheduler": SCHEDULE,
        "progressive_layer_drop": {"enabled": True, "theta": 0.5, "gamma": 0.01}}
# ZeRO-1: DeepSpeed writes the optimizer state to a file of its own.
ZERO_ADAMW = {"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 1,
              "steps_per_print": 10**6, "zero_optimization": {"stage": 1},
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "weight_decay": 0.01}}}
MODEL_STATES = "mp_rank_00_model_states.pt"
OPTIM_STATES = "zero_pp_rank_0_mp_rank_00_optim_states.pt"


@pytest.fixture(scope="module")
def data(one_rank_train_set):
    return one_rank_train_set(SEQ, PRED, VOCAB)


def argv(out: Path, data: Path, ds: dict, flags=(), **overrides) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    ds_path = out / "ds.json"
    ds_path.write_text(json.dumps(ds))
    args = {"deepspeed_config": ds_path, "model_config": "bert-tiny", "train_dir": data / "train",
            "output_dir": out / "run", "max_seq_length": SEQ, "max_predictions_per_seq": PRED,
            "max_steps": 4, "log_interval": 1, "checkpoint_interval": 2, **overrides}
    return [item for key, value in args.items() for item in (f"--{key}", str(value))] + list(flags)


def make_trainer(out: Path, data: Path, ds: dict, flags=(), **overrides) -> train.Trainer:
    return train.Trainer(train.parse_args(argv(out, data, ds, flags, **overrides)))


def finished_run(out: Path, data: Path, ds: dict, **overrides) -> Path:
    trainer = make_trainer(out, data, ds, **overrides)
    trainer.train()
    return out / "run" / "checkpoints"


@pytest.fixture(scope="module")
def zero_root(tmp_path_factory, data):
    """checkpoints/{global_step2, global_step4, latest} of a ZeRO-1 AdamW run, read-only."""
    return finished_run(tmp_path_factory.mktemp("zero"), data, ZERO_ADAMW)


@pytest.fixture(scope="module")
def lamb_out(tmp_path_factory, data):
    """The output dir of a LAMB + PLD + WarmupExpDecay run stopped at step 2, read-only."""
    out = tmp_path_factory.mktemp("lamb")
    finished_run(out, data, LAMB, max_steps=2)
    return out


def copy_run(source: Path, tmp_path: Path) -> Path:
    """A copy of an output dir (or checkpoints root) to change."""
    target = tmp_path / source.name
    shutil.copytree(source, target)
    return target


def file_stamps(directory: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


def rerecord(tag_dir: Path, name: str) -> None:
    """Update the manifest for a file changed on purpose, as someone who can write the
    checkpoint could: then only the weights-only loading stands in the way."""
    manifest = json.loads((tag_dir / checkpoint.MANIFEST).read_text())
    manifest["files"][name] = checkpoint.file_digest(tag_dir / name)
    (tag_dir / checkpoint.MANIFEST).write_text(json.dumps(manifest))


class Planted:
    """Unpickling this object runs open(marker, "w"): the marker file appears."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def plant(path: Path, marker: Path) -> None:
    torch.save({"module": {"weight": torch.zeros(2)}, "payload": Planted(marker)}, path)


# ------------------------------------------------------------ publication

def test_a_published_checkpoint_is_whole_and_loads_weights_only(zero_root):
    assert sorted(p.name for p in zero_root.iterdir()) == [
        "global_step2", "global_step4", "latest",
        "zero_to_fp32.py", "zero_to_torch.py"]  # DeepSpeed copies its ZeRO scripts beside the tags
    assert layout.latest_tag(zero_root) == "global_step4"
    tag = zero_root / "global_step4"
    manifest = json.loads((tag / checkpoint.MANIFEST).read_text())
    on_disk = sorted(p.name for p in tag.iterdir() if p.name != checkpoint.MANIFEST)
    assert sorted(manifest["files"]) == on_disk == sorted(
        [MODEL_STATES, OPTIM_STATES, "rank0_state.pt", "run_config.json", "trainer_state.json"])
    assert (manifest["step"], manifest["world_size"]) == (4, 1)
    for name, recorded in manifest["files"].items():
        assert checkpoint.file_digest(tag / name) == recorded
    # Ours and DeepSpeed's model states load with plain weights_only=True, nothing allowed.
    rank_state = torch.load(tag / "rank0_state.pt", weights_only=True)
    assert rank_state["loader"] == {"epoch": 0, "batches_consumed_in_epoch": 4, "seed": 42}
    assert rank_state["rng"]["numpy"]["keys"].shape == (624,)
    assert torch.load(tag / MODEL_STATES, weights_only=True)["global_steps"] == 4
    # DeepSpeed's ZeRO optimizer file pickles exactly these three types, allowed by name.
    assert sorted(torch.serialization.get_unsafe_globals_in_checkpoint(tag / OPTIM_STATES)) == [
        "deepspeed.runtime.fp16.loss_scaler.LossScaler",
        "deepspeed.runtime.zero.config.ZeroStageEnum",
        "deepspeed.utils.tensor_fragment.fragment_address"]
    assert checkpoint.safe_load(tag / OPTIM_STATES)["ds_version"]


def test_a_checkpointed_step_is_never_written_again(tmp_path, data, caplog):
    caplog.set_level(logging.INFO, logger="bing_bert_pld")
    root = finished_run(tmp_path, data, LAMB)  # saved at 2 and 4 in the loop
    skip = f"step 4 is checkpointed already in {root / 'global_step4'}: not saving it again"
    assert skip in caplog.text
    stamps = file_stamps(root / "global_step4")
    leftover = root / ".saving-global_step6-0a1b2c3d"  # a save killed before publication
    leftover.mkdir()
    (leftover / MODEL_STATES).write_bytes(b"")

    caplog.clear()  # relaunching the finished run: resumed at 4, nothing to train
    relaunched = make_trainer(tmp_path, data, LAMB)
    assert relaunched.train() == "max_steps" and relaunched.step == 4
    assert skip in caplog.text

    caplog.clear()  # a stop request right after a resume: the step is checkpointed too
    stopped = make_trainer(tmp_path, data, LAMB, max_steps=100)
    stopped.stop_request.signal_name = "SIGUSR1"
    try:
        assert stopped.train() == "signal" and stopped.step == 4
    finally:
        stopped.stop_request.signal_name = None
    assert skip in caplog.text
    assert file_stamps(root / "global_step4") == stamps  # the same files, never rewritten
    assert leftover.is_dir()  # left alone until a save succeeds

    make_trainer(tmp_path, data, LAMB, max_steps=6).train()
    assert sorted(p.name for p in root.iterdir()) == ["global_step2", "global_step4",
                                                     "global_step6", "latest"]
    assert file_stamps(root / "global_step4") == stamps


# ------------------------------------------------------------ verification and fallback

def truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def zero_bytes(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(bytes(4096))


DAMAGE = {
    "truncated model states": (lambda tag: truncate(tag / MODEL_STATES),
                               f"{MODEL_STATES} has \\d+ bytes, the manifest records \\d+"),
    "deleted model states": (lambda tag: (tag / MODEL_STATES).unlink(), f"{MODEL_STATES} is missing"),
    "bad trainer_state.json": (lambda tag: (tag / "trainer_state.json").write_text('{"step": 4,'),
                               "trainer_state.json (has|is not valid JSON)"),
    "zeroed bytes in the optimizer state": (
        lambda tag: zero_bytes(tag / OPTIM_STATES),
        f"{OPTIM_STATES} does not match the sha256 recorded when it was saved"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_whole_one(tmp_path, zero_root, case):
    root = copy_run(zero_root, tmp_path)
    damage, problem = DAMAGE[case]
    damage(root / "global_step4")
    found = checkpoint.find_resumable(root)
    assert found.directory == root / "global_step2" and found.trainer_state["step"] == 2
    assert "\n" not in found.note
    assert re.search(f"{root / 'global_step4'} is damaged: {problem}", found.note), found.note


LATEST_CASES = {
    "names a missing tag": (lambda root: (root / "latest").write_text("global_step9"),
                            "names 'global_step9', which does not exist"),
    "is empty": (lambda root: (root / "latest").write_text(""), "latest is empty"),
    "names an empty tag": (lambda root: ((root / "global_step9").mkdir(),
                                         (root / "latest").write_text("global_step9")),
                           "global_step9 is damaged: trainer_state.json is missing"),
    "is missing": (lambda root: (root / "latest").unlink(), "latest is missing"),
    "leads outside": (lambda root: (root / "latest").write_text("../../elsewhere/global_step2"),
                      "names '../../elsewhere/global_step2', which is not a tag directory inside"),
}


@pytest.mark.parametrize("case", sorted(LATEST_CASES))
def test_latest_that_cannot_be_followed_falls_back_to_the_newest_whole_checkpoint(
        tmp_path, zero_root, case):
    root = copy_run(zero_root, tmp_path / "a" / "b")
    elsewhere = tmp_path / "a" / "elsewhere"  # what ../../elsewhere/global_step2 would reach
    shutil.copytree(zero_root / "global_step2", elsewhere / "global_step2")
    change, problem = LATEST_CASES[case]
    change(root)
    found = checkpoint.find_resumable(root)
    assert found.directory == root / "global_step4"
    assert problem in found.note and "\n" not in found.note


def test_no_whole_checkpoint_is_one_error_line(tmp_path, zero_root, data, capsys):
    out = tmp_path / "out"
    root = copy_run(zero_root, out / "run")
    truncate(root / "global_step4" / MODEL_STATES)
    (root / "global_step2" / "trainer_state.json").write_text("{")
    code = train.main(argv(out, data, ZERO_ADAMW))
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: no whole checkpoint to resume from in {root}:")
    assert f"{root / 'global_step4'} is damaged: {MODEL_STATES} has" in err
    assert f"{root / 'global_step2'} is damaged: trainer_state.json" in err
    assert "Traceback" not in err


def test_the_trainer_resumes_from_the_fallback_and_never_reuses_the_damaged_name(
        tmp_path, zero_root, data, caplog):
    caplog.set_level(logging.INFO, logger="bing_bert_pld")
    root = copy_run(zero_root, tmp_path / "out" / "run")
    zero_bytes(root / "global_step4" / OPTIM_STATES)
    damaged = file_stamps(root / "global_step4")
    trainer = make_trainer(tmp_path / "out", data, ZERO_ADAMW)
    assert (trainer.step, trainer.samples) == (2, 16)
    warnings = [r.message for r in caplog.records if "not resuming from" in r.getMessage()]
    assert len(warnings) == 1
    assert trainer.train() == "max_steps"
    assert layout.latest_tag(root) == "global_step4.2"
    assert file_stamps(root / "global_step4") == damaged  # left for inspection, untouched
    history = json.loads((root / "global_step4.2" / "trainer_state.json").read_text())["history"]
    assert [(h["event"], h["step"]) for h in history] == [("fallback", 2)]
    assert "does not match the sha256" in history[0]["note"]


# ------------------------------------------------------------ safe loading

@pytest.mark.parametrize("name", ["rank0_state.pt", MODEL_STATES, OPTIM_STATES])
def test_a_planted_pickle_is_refused_on_resume(tmp_path, zero_root, name):
    root = copy_run(zero_root, tmp_path)
    shutil.rmtree(root / "global_step2")  # no fallback: the refusal is the answer
    marker = tmp_path / "code_ran"
    plant(root / "global_step4" / name, marker)
    rerecord(root / "global_step4", name)
    with pytest.raises(CheckpointError) as caught:
        checkpoint.find_resumable(root)
    assert (f"{name}: refused to load: it holds pickled objects other than tensors and plain data "
            "(unsupported global io.open)") in str(caught.value)
    assert not marker.exists()


def test_a_planted_pickle_is_refused_by_init_from(tmp_path, zero_root, data, capsys):
    root = copy_run(zero_root, tmp_path / "phase1")
    marker = tmp_path / "code_ran"
    plant(root / "global_step4" / MODEL_STATES, marker)
    rerecord(root / "global_step4", MODEL_STATES)
    code = train.main(argv(tmp_path / "phase2", data, ZERO_ADAMW, init_from=root))
    err = capsys.readouterr().err
    assert code == 2
    assert f"error: checkpoint {root / 'global_step4'} cannot be used: {MODEL_STATES}: refused to load" in err
    assert not marker.exists()


def test_deepspeeds_own_loads_are_weights_only(tmp_path, zero_root, data):
    """engine.load_checkpoint reads through our checkpoint engine, so a file swapped after
    verification is refused too."""
    trainer = make_trainer(tmp_path, data, ZERO_ADAMW, resume="none")
    trainer.loader.close()
    root = copy_run(zero_root, tmp_path / "copy")
    marker = tmp_path / "code_ran"
    plant(root / "global_step4" / OPTIM_STATES, marker)
    found = checkpoint.Resumable(root / "global_step4", {}, {})
    with pytest.raises(UnsafeCheckpointError, match=f"{OPTIM_STATES}: refused to load"):
        checkpoint.load(trainer.engine, found)
    assert not marker.exists()


@pytest.mark.parametrize("zero", [False, True])
def test_a_planted_pickle_is_refused_by_export_and_fine_tuning(tmp_path, zero_root, lamb_out, zero):
    """pretrained.read_pretrained: what hf_export and GLUE --init read."""
    source = zero_root if zero else lamb_out / "run" / "checkpoints"
    root = copy_run(source, tmp_path)
    tag = root / layout.latest_tag(root)
    marker = tmp_path / "code_ran"
    plant(tag / MODEL_STATES, marker)
    rerecord(tag, MODEL_STATES)
    with pytest.raises(CheckpointError, match=f"{tag} cannot be used: {MODEL_STATES}: refused to load"):
        read_pretrained(root)
    assert not marker.exists()
    (tag / MODEL_STATES).write_bytes(b"")  # and a damaged one is named, not loaded
    with pytest.raises(CheckpointError, match=f"checkpoint {tag} cannot be used: {MODEL_STATES} has 0 bytes"):
        read_pretrained(root)


# ------------------------------------------------------------ checkpoints of the old format

def save_in_the_old_format(trainer: train.Trainer) -> Path:
    """What checkpoint.save and Trainer.save wrote before manifests (commit 6226a10):
    DeepSpeed's files, a rank file pickling NumPy's and Python's RNG state objects, the
    two JSON files, then `latest`."""
    root, tag = trainer.plan.run_dir.checkpoints, f"global_step{trainer.step}"
    trainer.engine.save_checkpoint(str(root), tag=tag, save_latest=False)
    rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
           "python": random.getstate(), "cuda": None}
    torch.save({"loader": trainer.loader.state_dict(), "rng": rng}, root / tag / "rank0_state.pt")
    stats = trainer.pld.stats
    state = {"step": trainer.step, "samples": trainer.samples, "elapsed_s": trainer.elapsed(),
             "train_time_s": trainer.progress.train_seconds, "world_size": 1, "micro_batch": 8,
             "theta": trainer.theta(), "pld_micro_batches": stats.total_micro_batches,
             "pld_active_layers": stats.total_active_layers,
             "pld_empty_micro_batches": stats.total_empty_micro_batches,
             "loader": trainer.loader.state_dict()}
    run_config = {k: v for k, v in trainer.plan.run_config.items()
                  if k in ("model_config", "run", "deepspeed_setup", "world_size", "vocab_file")}
    (root / tag / "trainer_state.json").write_text(json.dumps(state, indent=2))
    (root / tag / "run_config.json").write_text(json.dumps(run_config, indent=2, default=str))
    (root / "latest").write_text(tag)
    return root / tag


def test_a_checkpoint_of_the_old_format_resumes_exactly_and_loads(tmp_path, data, caplog):
    caplog.set_level(logging.INFO, logger="bing_bert_pld")
    straight = make_trainer(tmp_path / "straight", data, LAMB, checkpoint_interval=100)
    expected = [straight.train_step()[0].item() for _ in range(4)]
    straight.loader.close()

    old = make_trainer(tmp_path / "old", data, LAMB, checkpoint_interval=100)
    first = [old.train_step()[0].item() for _ in range(2)]
    tag = save_in_the_old_format(old)
    old.loader.close()
    assert first == expected[:2]
    assert not (tag / checkpoint.MANIFEST).exists()
    with pytest.raises(UnsafeCheckpointError):  # NumPy's state object: allowed for these files only
        checkpoint.safe_load(tag / "rank0_state.pt")

    resumed = make_trainer(tmp_path / "old", data, LAMB, checkpoint_interval=100)
    assert (resumed.step, resumed.samples) == (2, 16)
    assert "records no data identity (written by an older version)" in caplog.text
    assert [resumed.train_step()[0].item() for _ in range(2)] == expected[2:]
    resumed.loader.close()
    config, weights, _ = load_pretrained(tmp_path / "old" / "run")
    assert config.num_hidden_layers == 4 and len(weights) > 10

    marker = tmp_path / "code_ran"  # the old format is loaded as safely as the new one
    plant(tag / "rank0_state.pt", marker)
    with pytest.raises(CheckpointError, match="rank0_state.pt: refused to load"):
        checkpoint.find_resumable(tag.parent)
    assert not marker.exists()


# ------------------------------------------------------------ configuration changes

def changed(ds: dict, **blocks) -> dict:
    return {**ds, **blocks}


REFUSED = {
    "theta": (changed(LAMB, progressive_layer_drop={"enabled": True, "theta": 0.9, "gamma": 0.01}),
              {}, ["pld.theta: 0.5 -> 0.9"]),
    "pld off": (changed(LAMB, progressive_layer_drop={"enabled": False}), {},
                ['pld: {"gamma": 0.01, "theta": 0.5} -> null']),
    "learning rate": (changed(LAMB, optimizer={"type": "Lamb", "params": {"lr": 2e-3, "weight_decay": 0.01}}),
                      {}, ["optimizer.params.lr: 0.001 -> 0.002"]),
    "lamb to adamw": (changed(LAMB, optimizer={"type": "AdamW", "params": {"lr": 1e-3, "weight_decay": 0.01}}),
                      {}, ['optimizer.type: "lamb" -> "adamw"']),
    "one shard fewer": (LAMB, {"train_dir": "ONE_SHARD"},
                        ['data.train.files: ["shard_00000.hdf5", "shard_00001.hdf5"] -> ["shard_00000.hdf5"]',
                         'data.train.manifest_sha256: "',  # the copy has no manifest: -> null
                         "data.train.rows: [64, 64] -> [64]"]),
    "several": (changed(LAMB, gradient_clipping=0.5,
                        scheduler={**SCHEDULE, "params": {**SCHEDULE["params"], "decay_rate": 0.8}}),
                {}, ["deepspeed.gradient_clipping: 1.0 -> 0.5",
                     "lr_schedule.params.decay_rate: 0.9 -> 0.8"]),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_configuration_change_is_refused_with_each_difference_listed(
        tmp_path, lamb_out, data, capsys, case):
    out = copy_run(lamb_out, tmp_path)
    ds, overrides, expected = REFUSED[case]
    if overrides.get("train_dir") == "ONE_SHARD":
        one = tmp_path / "one" / "train"
        one.mkdir(parents=True)
        shutil.copy(data / "train" / "shard_00000.hdf5", one)
        overrides = {"train_dir": one}
    code = train.main(argv(out, data, ds, **overrides))
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: cannot resume from {out / 'run/checkpoints/global_step2'}: "
                               "the configuration differs from the checkpoint's: ")
    for difference in expected:
        assert difference in lines[0]
    listed = lines[0].split("checkpoint's: ", 1)[1].split(". Resume with", 1)[0]
    assert listed.count(" -> ") == len(expected)  # nothing else counted as a difference
    assert "--allow_config_change" in lines[0]


@pytest.mark.parametrize("overrides, expected", [
    ({"seed": 7}, "run.seed: 42 -> 7 (the data order and the PLD gates follow from the seed)"),
    ({"ds": changed(LAMB, train_micro_batch_size_per_gpu=4)},
     "batch.train_micro_batch_size_per_gpu: 8 -> 4 (the data position counts micro batches)"),
])
def test_what_cannot_work_is_refused_even_when_allowed(tmp_path, lamb_out, data, capsys,
                                                        overrides, expected):
    out = copy_run(lamb_out, tmp_path)
    ds = overrides.pop("ds", LAMB)
    code = train.main(argv(out, data, ds, flags=["--allow_config_change"], **overrides))
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "start a new run from its weights with --init_from" in err


def test_what_the_run_owns_and_a_moved_data_set_are_not_differences(tmp_path, lamb_out, data):
    out = copy_run(lamb_out, tmp_path)
    moved = copy_run(data, tmp_path / "moved")
    trainer = make_trainer(out, moved, LAMB, max_steps=50, log_interval=7, checkpoint_interval=9,
                           val_batches=3, prefetch_batches=2)
    assert trainer.step == 2 and trainer.progress.history == []
    trainer.loader.close()


def test_lamb_to_adamw_when_allowed_starts_a_fresh_optimizer_state(tmp_path, lamb_out, data, caplog):
    caplog.set_level(logging.INFO, logger="bing_bert_pld")
    out = copy_run(lamb_out, tmp_path)
    adamw = changed(LAMB, optimizer={"type": "AdamW", "params": {"lr": 1e-3, "weight_decay": 0.01}})
    trainer = make_trainer(out, data, adamw, flags=["--allow_config_change"])
    assert trainer.step == 2
    assert isinstance(trainer.engine.optimizer, torch.optim.AdamW)
    assert 'optimizer.type: "lamb" -> "adamw"; the optimizer type changed, so its state starts fresh' \
        in caplog.text
    # The LR schedule continues at step 2, not at step 0.
    factor = lr_schedules.warmup_exp_decay(2, **SCHEDULE["params"])
    assert trainer.engine.get_lr()[0] == pytest.approx(1e-3 * factor, rel=1e-12)
    assert trainer.train() == "max_steps"
    state = trainer.engine.optimizer.state[next(trainer.engine.module.parameters())]
    assert int(state["step"]) == 2  # the two AdamW steps of this launch only
    root = out / "run" / "checkpoints"
    saved = json.loads((root / "global_step4" / "trainer_state.json").read_text())
    assert saved["history"] == [{"step": 2, "event": "config_change",
                                 "changes": ['optimizer.type: "lamb" -> "adamw"'],
                                 "fresh_optimizer_state": True}]
    recorded = json.loads((root / "global_step4" / "run_config.json").read_text())
    assert resume_config.differences(recorded, saved, trainer.plan.run_config) == []


def test_an_allowed_learning_rate_and_weight_decay_take_effect(tmp_path, lamb_out, data):
    out = copy_run(lamb_out, tmp_path)
    new = changed(LAMB, optimizer={"type": "Lamb", "params": {"lr": 2e-3, "weight_decay": 0.05}})
    trainer = make_trainer(out, data, new, flags=["--allow_config_change"])
    factor = lr_schedules.warmup_exp_decay(2, **SCHEDULE["params"])
    groups = trainer.engine.optimizer.param_groups
    assert [g["lr"] for g in groups] == pytest.approx([2e-3 * factor] * 2, rel=1e-12)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]  # no decay on biases and norms
    assert trainer.engine.optimizer.state  # LAMB's moments were loaded, not reset
    assert trainer.progress.history[-1]["changes"] == ["optimizer.params.lr: 0.001 -> 0.002",
                                              "optimizer.params.weight_decay: 0.01 -> 0.05"]
    trainer.loader.close()
