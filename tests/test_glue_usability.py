"""GLUE fine-tuning as a user meets it: command-line overrides recorded with the run, a
progress bar, the saved model (ours and transformers' loaders) and predictions, and one
`error:` line for each input mistake."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from bing_bert_pld.ds_config import read_json, resolve_batch_sizes
from bing_bert_pld.glue import finetune
from bing_bert_pld.glue.data import encode, get_task, read_split
from bing_bert_pld.glue.model import BertForSequenceClassification
from bing_bert_pld.glue.saved_model import load_finetuned, save_finetuned
from bing_bert_pld.tokenizer import build_bert_tokenizer
from tests.test_glue_finetune import (one_thread,  # noqa: F401 (autouse here too)
                                     write_config, write_mnli, write_sst2, write_stsb)
from tests.test_glue_pretrained import (distributed, make_checkpoint,  # noqa: F401
                                        perturbed_model, tiny_config, write_vocab)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, distributed):  # noqa: F811
    base = tmp_path_factory.mktemp("glue_use")
    rng = random.Random(0)
    write_sst2(base / "GLUE", rng)
    write_stsb(base / "GLUE", rng, sizes=(16, 8))
    vocab = write_vocab(base / "vocab.txt")
    make_checkpoint(base / "pretrain", perturbed_model(tiny_config(), seed=5), vocab,
                    lowercase=True)
    return base


def run(workspace: Path, out: str, *extra: str, task: str = "SST-2", init=None,
        config: Path | None = None) -> int:
    config = config or write_config(workspace / f"{out}.json", epochs=1, lr=1e-9)
    return finetune.main(["--task", task, "--data_dir", str(workspace / "GLUE"),
                          "--init", str(init or workspace / "pretrain"),
                          "--output_dir", str(workspace / out), "--deepspeed_config", str(config),
                          *extra])


def test_overrides_progress_saved_model_and_predictions(workspace, capsys):
    """The JSON says lr 1e-9, 1 epoch, micro-batch 16; the command line's 5e-3, 4 epochs,
    micro-batch 8 and 20% warmup are what trains (the task is learned) and what is
    recorded."""
    code = run(workspace, "sst2", "--learning_rate", "5e-3", "--num_train_epochs", "4",
               "--per_device_train_batch_size", "8", "--warmup_proportion", "0.2",
               "--seed", "3")
    assert code == 0
    out = workspace / "sst2"
    settings = json.loads((out / "settings.json").read_text())
    assert settings["command_line_overrides"] == {
        "learning_rate": 5e-3, "num_train_epochs": 4, "per_device_train_batch_size": 8,
        "warmup_proportion": 0.2}
    assert {k: settings[k] for k in (
        "learning_rate", "num_train_epochs", "train_batch_size", "per_device_train_batch_size",
        "gradient_accumulation_steps", "warmup_proportion", "optimizer_steps", "seed",
        "lr_schedule")} == {
        "learning_rate": 5e-3, "num_train_epochs": 4, "train_batch_size": 8,
        "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
        "warmup_proportion": 0.2, "optimizer_steps": 4 * 256 // 8, "seed": 3,
        "lr_schedule": "WarmupPolyDecay"}
    results = json.loads((out / "results.json").read_text())
    assert results["resolved"] == settings and results["optimizer_steps"] == 128
    accuracy = results["metrics"]["dev"]["accuracy"]
    err = capsys.readouterr().err
    print(f"SST-2 synthetic dev accuracy with the overrides: {accuracy:.4f}")
    assert accuracy >= 0.9  # at the file's lr of 1e-9 it would stay at chance
    assert "SST-2 epoch 1/4" in err and "SST-2 epoch 4/4" in err and "32/32" in err

    rows = [line.split("\t") for line in (out / "predictions_dev.tsv").read_text().splitlines()]
    assert rows[0] == ["index", "prediction", "label"] and len(rows) == 65
    assert [int(r[0]) for r in rows[1:]] == list(range(64))
    assert {r[1] for r in rows[1:]} <= {"0", "1"}
    assert sum(r[1] == r[2] for r in rows[1:]) / 64 == accuracy

    # Our loader: the saved model predicts exactly what the file says.
    saved = load_finetuned(out / "model")
    assert saved.task.name == "SST-2" and saved.lowercase is True and saved.max_seq_length == 32
    tokenizer = build_bert_tokenizer(saved.vocab_path, saved.lowercase, saved.max_seq_length)
    dev = encode(read_split(workspace / "GLUE", saved.task, "dev"), tokenizer, saved.task, 0)
    with torch.no_grad():
        logits = saved.model(dev.collate(list(range(len(dev))))).logits
    assert [str(int(i)) for i in logits.argmax(-1)] == [r[1] for r in rows[1:]]


@pytest.mark.parametrize("pre_layer_norm, task", [(True, "MNLI"), (False, "MNLI"),
                                                   (True, "STS-B")])
def test_saved_model_loads_in_transformers_with_our_outputs(tmp_path, pre_layer_norm, task):
    """Save a classifier, load it with ours (every tensor back) and with transformers'
    AutoModelForSequenceClassification and AutoTokenizer (same ids, logits within 1e-5)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    spec = get_task(task)
    config = tiny_config(pre_layer_norm=pre_layer_norm)
    torch.manual_seed(1)
    model = BertForSequenceClassification(config, spec.num_outputs)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    model.eval()
    vocab = write_vocab(tmp_path / "vocab.txt")
    directory = save_finetuned(model.state_dict(), config, spec, tmp_path / "model", vocab,
                               True, 32, "test")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers

    saved = load_finetuned(directory)
    for name, tensor in model.state_dict().items():
        assert torch.equal(saved.model.state_dict()[name], tensor), name

    write_mnli(tmp_path / "GLUE", random.Random(2), sizes=(4, 6, 4)) if task == "MNLI" else \
        write_stsb(tmp_path / "GLUE", random.Random(2), sizes=(4, 6))
    dev_split = spec.dev_splits[0]
    examples = read_split(tmp_path / "GLUE", spec, dev_split)
    ours = encode(examples, build_bert_tokenizer(vocab, True, 32), spec, 0)
    with torch.no_grad():
        our_logits = model(ours.collate(list(range(len(ours))))).logits

    hf_model = AutoModelForSequenceClassification.from_pretrained(str(directory)).eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(str(directory))
    batch = hf_tokenizer([e.text_a for e in examples], [e.text_b for e in examples],
                         padding=True, return_tensors="pt")
    for row, ids in enumerate(ours.input_ids):
        assert batch["input_ids"][row, :len(ids)].tolist() == ids
    with torch.no_grad():
        hf_logits = hf_model(**batch).logits
    assert hf_model.config.num_labels == spec.num_outputs
    assert hf_model.config.problem_type == ("regression" if spec.is_regression
                                            else "single_label_classification")
    if spec.labels:
        assert [hf_model.config.id2label[i] for i in range(len(spec.labels))] == list(spec.labels)
    assert torch.allclose(hf_logits, our_logits, atol=1e-5, rtol=0), (hf_logits - our_logits).abs().max()


def test_batch_size_overrides_follow_deepspeeds_rule(tmp_path):
    config = read_json(write_config(tmp_path / "c.json", epochs=1))  # micro 16, accumulation 1
    apply = finetune.Overrides
    alone = apply(train_batch_size=32).apply(config, "c.json")
    assert resolve_batch_sizes(alone, 2) == {"train_batch_size": 32,
                                             "train_micro_batch_size_per_gpu": 16,
                                             "gradient_accumulation_steps": 1, "world_size": 2}
    both = apply(train_batch_size=32, per_device_train_batch_size=4).apply(config, "c.json")
    assert resolve_batch_sizes(both, 2)["gradient_accumulation_steps"] == 4
    micro = apply(per_device_train_batch_size=4).apply({**config, "train_batch_size": 16}, "c")
    assert resolve_batch_sizes(micro, 1)["train_batch_size"] == 4
    assert config["train_micro_batch_size_per_gpu"] == 16  # the file's dict is not changed
    assert apply(learning_rate=3e-5).describe("c.json") == "c.json with --learning_rate 3e-05"
    settings, setup = finetune.read_finetune_config(
        tmp_path / "c.json", False, apply(num_train_epochs=7, learning_rate=3e-5))
    assert settings.epochs == 7 and setup.client_optimizer.params["lr"] == 3e-5


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


def test_input_mistakes_are_one_error_line(workspace, tmp_path, capsys):
    assert run(workspace, "e1", task="SST2x") == 2
    assert one_error_line(capsys) == (
        "error: unknown GLUE task 'SST2x'; did you mean 'SST-2'? the tasks are ['CoLA', "
        "'SST-2', 'MRPC', 'STS-B', 'QQP', 'MNLI', 'QNLI', 'RTE', 'WNLI']")

    missing = workspace / "nowhere"
    code = finetune.main(["--task", "RTE", "--data_dir", str(missing), "--init",
                          str(workspace / "pretrain"), "--output_dir", str(workspace / "e2"),
                          "--deepspeed_config", str(write_config(tmp_path / "c.json", 1))])
    assert code == 2
    assert one_error_line(capsys) == (f"error: data directory {missing} does not exist "
                                      "(expected the GLUE root holding RTE/train.tsv)")
    assert run(workspace, "e3", task="RTE") == 2
    assert f"no RTE directory under {workspace / 'GLUE'}" in one_error_line(capsys)
    (workspace / "GLUE" / "STS-B" / "dev.tsv").rename(workspace / "dev.tsv.away")
    try:
        assert run(workspace, "e4", task="STS-B") == 2
        assert one_error_line(capsys) == (
            f"error: STS-B: {workspace / 'GLUE' / 'STS-B' / 'dev.tsv'} not found (a task "
            "directory holds train.tsv, dev.tsv)")
    finally:
        (workspace / "dev.tsv.away").rename(workspace / "GLUE" / "STS-B" / "dev.tsv")

    assert run(workspace, "e5", init=workspace / "no_such_run") == 2
    assert one_error_line(capsys).startswith(
        f"error: --init {workspace / 'no_such_run'}: no such directory")
    assert run(workspace, "e6", init=workspace / "GLUE") == 2
    assert "no DeepSpeed checkpoint here" in one_error_line(capsys)

    assert run(workspace, "e7", "--learning_rate", "-1") == 2
    assert one_error_line(capsys) == "error: --learning_rate must be a positive number, got -1.0"
    no_warmup = tmp_path / "nowarmup.json"
    values = read_json(write_config(no_warmup, 1))
    values["scheduler"] = {"type": "WarmupLR", "params": {"warmup_num_steps": 10}}
    no_warmup.write_text(json.dumps(values))
    assert run(workspace, "e8", "--warmup_proportion", "0.1", config=no_warmup) == 2
    assert one_error_line(capsys) == (f"error: --warmup_proportion: the scheduler in {no_warmup} "
                                      "(WarmupLR) has no warmup_proportion to set")
    assert not any((workspace / f"e{i}").exists() for i in range(1, 9))  # nothing started


def test_a_finetuned_model_is_refused_as_init(workspace, tmp_path, capsys):
    spec = get_task("SST-2")
    model = BertForSequenceClassification(tiny_config(), spec.num_outputs)
    saved = save_finetuned(model.state_dict(), model.config, spec, tmp_path / "model",
                           workspace / "vocab.txt", True, 32, "test")
    assert run(workspace, "e9", init=saved) == 2
    assert one_error_line(capsys) == (
        f"error: --init {saved} is a fine-tuned GLUE model; --init takes a pretrained model "
        "(a pretraining output dir, checkpoint or hf_export directory)")


def test_no_save_model_writes_everything_but_the_model(workspace):
    assert run(workspace, "nomodel", "--no_save_model") == 0
    written = sorted(p.name for p in (workspace / "nomodel").iterdir())
    assert written == ["metrics.jsonl", "predictions_dev.tsv", "results.json", "settings.json",
                       "tensorboard"]
