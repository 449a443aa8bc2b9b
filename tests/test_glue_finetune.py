"""Fine-tuning end to end on small generated GLUE tasks that are learnable from the text.

The tiny model starts from a random DeepSpeed checkpoint (no pretraining), so the tasks
hinge on single words: sentiment words (SST-2 format), a yes/no/maybe cue in the second
sentence (MNLI format, with matched and mismatched dev sets), and the sentiment of both
sentences (STS-B format, a score regressed).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bing_bert_pld.config import ConfigError
from bing_bert_pld.glue import finetune
from launch_helpers import assert_completed, clean_env, free_port
from tests.test_glue_pretrained import (FILLER, NEGATIVE, POSITIVE, distributed,  # noqa: F401
                                        make_checkpoint, perturbed_model, tiny_config, write_vocab)

WORDS = [w for w in FILLER if not w.startswith("##") and w not in ("yes", "no", "maybe")]
MNLI_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
               "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label")


def _sentence(rng: random.Random, cue: str | None = None) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 7))]
    if cue is not None:
        words.insert(rng.randint(0, len(words)), cue)
    return " ".join(words)


def _sentiment(rng: random.Random) -> tuple[str, int]:
    positive = rng.random() < 0.5
    return _sentence(rng, rng.choice(POSITIVE if positive else NEGATIVE)), int(positive)


def write_sst2(root: Path, rng: random.Random, sizes=(256, 64)) -> None:
    (root / "SST-2").mkdir(parents=True)
    for split, size in zip(("train", "dev"), sizes):
        rows = ["sentence\tlabel"] + ["%s\t%d" % _sentiment(rng) for _ in range(size)]
        (root / "SST-2" / f"{split}.tsv").write_text("\n".join(rows) + "\n")


def write_mnli(root: Path, rng: random.Random, sizes=(256, 64, 64)) -> None:
    (root / "MNLI").mkdir(parents=True)
    cues = {"yes": "entailment", "no": "contradiction", "maybe": "neutral"}
    for split, size in zip(("train", "dev_matched", "dev_mismatched"), sizes):
        rows = [MNLI_HEADER]
        for index in range(size):
            cue = rng.choice(list(cues))
            rows.append("\t".join([str(index), "0", "0n", "fiction", "(x)", "(y)", "(x)", "(y)",
                                   _sentence(rng), _sentence(rng, cue), cues[cue], cues[cue]]))
        (root / "MNLI" / f"{split}.tsv").write_text("\n".join(rows) + "\n")


GRADED = {"awful": 0.0, "bad": 1.0, "boring": 2.0, "fine": 3.0, "good": 4.0, "excellent": 5.0}


def write_stsb(root: Path, rng: random.Random, sizes=(256, 64)) -> None:
    """The score is carried by one graded word in the second sentence."""
    (root / "STS-B").mkdir(parents=True)
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    for split, size in zip(("train", "dev"), sizes):
        rows = [header]
        for index in range(size):
            word = rng.choice(list(GRADED))
            rows.append(f"{index}\tmain-news\tx\t2012\t{index}\tnone\tnone\t{_sentence(rng)}\t"
                        f"{_sentence(rng, word)}\t{GRADED[word]:.3f}")
        (root / "STS-B" / f"{split}.tsv").write_text("\n".join(rows) + "\n")


def write_config(path: Path, epochs: int, lr: float = 5e-3) -> Path:
    path.write_text(json.dumps({
        "train_micro_batch_size_per_gpu": 16, "gradient_accumulation_steps": 1,
        "steps_per_print": 10 ** 6, "gradient_clipping": 1.0,
        "optimizer": {"type": "Adam", "params": {"lr": lr, "weight_decay": 0.01, "eps": 1e-6}},
        "scheduler": {"type": "WarmupPolyDecay", "params": {"warmup_proportion": 0.1}},
        "glue": {"epochs": epochs, "max_seq_length": 32, "eval_batch_size": 64, "log_every": 5},
    }))
    return path


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A tiny model gains nothing from a second thread and loses much on a busy machine."""
    threads = torch.get_num_threads()
    yield torch.set_num_threads(1)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, distributed, one_thread):  # noqa: F811
    """GLUE data for three tasks, a random tiny checkpoint, and its export."""
    from bing_bert_pld import hf_export

    base = tmp_path_factory.mktemp("glue")
    rng = random.Random(0)
    for writer in (write_sst2, write_mnli, write_stsb):
        writer(base / "GLUE", rng)
    vocab = write_vocab(base / "vocab.txt")
    run = make_checkpoint(base / "pretrain", perturbed_model(tiny_config(), seed=5), vocab,
                          lowercase=True)
    hf_export.main([str(run), str(base / "exported")])
    return base


def _finetune(base: Path, task: str, init: Path, out: str, epochs: int, seed: int = 1,
              lr: float = 5e-3, extra: tuple[str, ...] = ()) -> dict:
    config = write_config(base / f"{out}.json", epochs, lr)
    finetune.main(["--task", task, "--data_dir", str(base / "GLUE"), "--init", str(init),
                   "--output_dir", str(base / out), "--deepspeed_config", str(config),
                   "--seed", str(seed), *extra])
    return json.loads((base / out / "results.json").read_text())


def test_sst2_from_a_deepspeed_checkpoint_reaches_high_accuracy(workspace):
    results = _finetune(workspace, "SST-2", workspace / "pretrain", "sst2", epochs=6)
    accuracy = results["metrics"]["dev"]["accuracy"]
    print(f"SST-2 synthetic dev accuracy: {accuracy:.4f}")
    assert accuracy >= 0.95
    assert len(results["history"]) == 6 and results["optimizer_steps"] == 6 * 256 // 16
    assert results["train_examples"] == 256 and results["dev_examples"] == {"dev": 64}
    events = list((workspace / "sst2" / "tensorboard").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    logged = [json.loads(line) for line in (workspace / "sst2" / "metrics.jsonl").open()]
    assert any("train/loss" in row and "train/lr" in row for row in logged)
    assert any("eval/dev/accuracy" in row for row in logged)


def test_mnli_from_an_exported_model_scores_both_dev_sets(workspace):
    results = _finetune(workspace, "mnli", workspace / "exported", "mnli", epochs=6)
    matched = results["metrics"]["dev_matched"]["accuracy"]
    mismatched = results["metrics"]["dev_mismatched"]["accuracy"]
    print(f"MNLI synthetic dev accuracy: matched {matched:.4f}, mismatched {mismatched:.4f}")
    assert matched >= 0.95 and mismatched >= 0.95


def test_stsb_regression_correlates(workspace):
    # Regression from a random encoder needs a gentler rate and more steps (seeds 1-6
    # all end above 0.94 Pearson with these settings).
    results = _finetune(workspace, "STS-B", workspace / "pretrain", "stsb", epochs=10, lr=2e-3)
    dev = results["metrics"]["dev"]
    print(f"STS-B synthetic dev: {dev}")
    assert dev["pearson"] >= 0.9 and dev["spearman"] >= 0.85


def test_mismatched_model_config_stops_with_the_names(workspace, capsys):
    config = tiny_config(num_hidden_layers=3, intermediate_size=96)
    path = workspace / "mismatch_model.json"
    path.write_text(json.dumps(config.to_dict()))
    ds_config = write_config(workspace / "mismatch.json", epochs=1)
    code = finetune.main(["--task", "SST-2", "--data_dir", str(workspace / "GLUE"),
                          "--init", str(workspace / "pretrain"), "--output_dir",
                          str(workspace / "mismatch"), "--deepspeed_config", str(ds_config),
                          "--model_config", str(path)])
    message = capsys.readouterr().err
    assert code == 2 and message.startswith("error: ") and "does not match" in message
    assert not (workspace / "mismatch").exists()
    assert "bert.encoder.layer.3.attention.self.query.weight" in message  # unexpected
    assert "bert.encoder.layer.0.intermediate.dense.weight: [128, 64] vs [96, 64]" in message


def test_pld_in_the_finetuning_config_is_refused(workspace):
    path = write_config(workspace / "pld.json", epochs=1)
    values = json.loads(path.read_text())
    values["progressive_layer_drop"] = {"enabled": True, "theta": 0.5, "gamma": 0.001}
    path.write_text(json.dumps(values))
    with pytest.raises(ConfigError, match="fine-tuning runs every layer"):
        finetune.read_finetune_config(path, cuda_available=False)
    values.pop("progressive_layer_drop")
    values["glue"]["epochz"] = 3
    path.write_text(json.dumps(values))
    with pytest.raises(ConfigError, match=r"pld.json: unknown key 'epochz' \(did you mean 'epochs'\?\) "
                                          r"in 'glue'; it takes \['epochs', 'eval_batch_size', "):
        finetune.read_finetune_config(path, cuda_available=False)


@pytest.mark.parametrize("block, message", [
    ({"epochs": 0}, "ft.json: glue.epochs must be a positive integer, got 0"),
    ({"max_seq_length": "128"}, "ft.json: glue.max_seq_length must be a positive integer, got the string '128'"),
    ({"log_every": True}, "ft.json: glue.log_every must be a positive integer, got true"),
    ([3], "ft.json: glue must be an object, got [3]"),
])
def test_bad_glue_block_values_name_file_key_and_value(block, message):
    with pytest.raises(ConfigError) as err:
        finetune.FinetuneSettings.from_dict(block, "ft.json")
    assert str(err.value) == message
    assert finetune.FinetuneSettings.from_dict({"epochs": 2}, "ft.json").epochs == 2


def test_shipped_config_reads():
    settings, setup = finetune.read_finetune_config(
        Path(__file__).resolve().parents[1] / "ds_configs" / "glue_finetune.json", False)
    assert settings.epochs == 3 and setup.lr_schedule.name == "WarmupPolyDecay"
    assert setup.client_optimizer.kind == "adamw" and setup.client_optimizer.params["lr"] == 2e-5
    assert setup.lr_schedule.params["total_steps"] == 1  # a placeholder until the data is read
    real = finetune.with_total_steps(setup, 123)
    assert real.lr_schedule.params == {**setup.lr_schedule.params, "total_steps": 123}
    assert real.deepspeed == setup.deepspeed and real.client_optimizer == setup.client_optimizer


@pytest.mark.slow
def test_deepspeed_launcher_two_ranks(workspace):
    """The real launcher, two CPU ranks: sharded training and gathered evaluation learn the
    task (12 epochs of the 2 x 16 global batch: as many optimizer steps as the one-rank
    run above makes in 6)."""
    config = write_config(workspace / "launcher.json", epochs=12)
    env = clean_env(PYTHONPATH=str(Path(__file__).resolve().parents[1]), DS_ACCELERATOR="cpu")
    command = ["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), "--module",
               "bing_bert_pld.glue.finetune", "--task", "SST-2",
               "--data_dir", str(workspace / "GLUE"), "--init", str(workspace / "pretrain"),
               "--output_dir", str(workspace / "launcher"), "--deepspeed_config", str(config),
               "--seed", "3"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    results_path = workspace / "launcher" / "results.json"
    assert results_path.is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    assert_completed(done.returncode, done.stdout + done.stderr, "SST-2 epoch 12")
    results = json.loads(results_path.read_text())
    assert results["world_size"] == 2
    assert results["dev_examples"] == {"dev": 64}
    assert results["optimizer_steps"] == 12 * (256 // 2 // 16)
    accuracy = results["metrics"]["dev"]["accuracy"]
    print(f"SST-2 synthetic dev accuracy, 2 ranks: {accuracy:.4f}")
    assert accuracy >= 0.9


def test_plain_python_entry_point(workspace):
    """`python -m bing_bert_pld.glue.finetune` in a fresh process starts its own gloo group."""
    config = write_config(workspace / "plain.json", epochs=1)
    env = clean_env(PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    done = subprocess.run(
        [sys.executable, "-m", "bing_bert_pld.glue.finetune", "--task", "SST-2",
         "--data_dir", str(workspace / "GLUE"), "--init", str(workspace / "exported"),
         "--output_dir", str(workspace / "plain"), "--deepspeed_config", str(config)],
        env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((workspace / "plain" / "results.json").read_text())["seed"] == 42
