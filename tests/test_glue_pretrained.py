"""Loading pretrained weights: real DeepSpeed checkpoints in, strict loading with names out.

The helpers here (a tiny vocabulary, a DeepSpeed checkpoint written by a real engine)
are shared with test_glue_finetune.py and test_hf_export.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bing_bert_pld.config import BertConfig
from bing_bert_pld.engine import init_distributed
from bing_bert_pld.model import BertForPreTraining
from bing_bert_pld.run.pretrained import (CheckpointError, CheckpointMismatchError, load_pretrained,
                                      load_strict, read_pretrained)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
POSITIVE = ["good", "great", "fine", "superb", "lovely", "happy", "nice", "excellent"]
NEGATIVE = ["bad", "awful", "poor", "terrible", "sad", "ugly", "boring", "horrible"]
FILLER = ["the", "a", "movie", "film", "plot", "was", "is", "very", "quite", "and", "it",
          "story", "actors", "music", "ending", "yes", "no", "maybe", "cat", "dog", "sat",
          "on", "mat", "question", "answer", "why", "what", "who", "##s", "##ing", "##ed",
          "un", "##aff", "##able"]
VOCAB_SIZE = 512


def tiny_config(**changes) -> BertConfig:
    return BertConfig.from_json("bert-tiny").replace(**changes)


def write_vocab(path: Path, size: int = VOCAB_SIZE) -> Path:
    """A BERT-style vocab.txt: specials, punctuation, letters and their ##pieces, words."""
    tokens = SPECIALS + list(".,!?'\"-;:()") + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens += ["##" + chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens += [w for w in POSITIVE + NEGATIVE + FILLER if w not in tokens]
    tokens += [f"[unused{i}]" for i in range(size - len(tokens))]
    assert len(tokens) == size
    path.write_text("\n".join(tokens) + "\n")
    return path


@pytest.fixture(scope="session")
def distributed():
    """One gloo process group for the whole session (world size 1), as a run would have."""
    init_distributed()


def perturbed_model(config: BertConfig, seed: int = 0) -> BertForPreTraining:
    """Random weights everywhere, LayerNorms included, so a misplaced tensor shows."""
    torch.manual_seed(seed)
    model = BertForPreTraining(config)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model.eval()


def make_checkpoint(output_dir: Path, model: BertForPreTraining, vocab: Path | None,
                    zero_stage: int = 0, tag: str = "step0", lowercase: bool | None = None) -> Path:
    """A training output dir as the trainer leaves it: <out>/checkpoints/{latest,<tag>/...}."""
    import deepspeed

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ds_config = {"train_micro_batch_size_per_gpu": 2, "steps_per_print": 10 ** 6,
                 "zero_optimization": {"stage": zero_stage},
                 "zero_allow_untested_optimizer": True}
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    root = output_dir / "checkpoints"
    engine.save_checkpoint(str(root), tag)
    run_config = {"model_config": model.config.to_dict(),
                  "vocab_file": str(vocab) if vocab else None}
    if lowercase is not None:
        run_config["lowercase"] = lowercase
    (root / tag / "run_config.json").write_text(json.dumps(run_config))
    return output_dir


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, distributed):
    """(output dir, the model's state dict, vocab path) of a stage-0 checkpoint."""
    base = tmp_path_factory.mktemp("pretrained")
    vocab = write_vocab(base / "vocab.txt")
    model = perturbed_model(tiny_config())
    expected = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    return make_checkpoint(base / "run", model, vocab, lowercase=True), expected, vocab


def assert_same_tensors(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == torch.float32, name
        assert torch.equal(got[name], want[name]), name


@pytest.mark.parametrize("where", ["output_dir", "root", "tag"])
def test_loads_deepspeed_checkpoint_from_any_level(checkpoint, where):
    out, expected, vocab = checkpoint
    path = {"output_dir": out, "root": out / "checkpoints",
            "tag": out / "checkpoints" / "step0"}[where]
    config, state_dict, vocab_path = load_pretrained(path)
    assert config == tiny_config()
    assert vocab_path == vocab.resolve()
    assert_same_tensors(state_dict, expected)
    assert read_pretrained(path).lowercase is True


def test_zero3_checkpoint_gives_the_fp32_weights(tmp_path, distributed):
    model = perturbed_model(tiny_config(), seed=1)
    expected = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    out = make_checkpoint(tmp_path / "run", model, None, zero_stage=3)
    assert not (out / "checkpoints" / "step0" / "mp_rank_00_model_states.pt").exists()
    config, state_dict, vocab_path = load_pretrained(out)
    assert vocab_path is None
    assert_same_tensors(state_dict, expected)


def test_lowercase_comes_from_the_data_manifest_beside_the_vocab(tmp_path, distributed):
    data = tmp_path / "data"
    data.mkdir()
    vocab = write_vocab(data / "vocab.txt")
    (data / "manifest.json").write_text(json.dumps({"lowercase": False}))
    out = make_checkpoint(tmp_path / "run", perturbed_model(tiny_config()), vocab)
    assert read_pretrained(out).lowercase is False


def test_strict_loading_lists_every_mismatch(checkpoint):
    _, state_dict, _ = checkpoint
    renamed = dict(state_dict)
    renamed["bert.encoder.layer.0.attention.output.LayerNorm.gamma"] = \
        renamed.pop("bert.encoder.layer.0.attention.output.LayerNorm.weight")
    model = BertForPreTraining(tiny_config(num_hidden_layers=5, vocab_size=600))
    with pytest.raises(CheckpointMismatchError) as caught:
        load_strict(model, renamed, "ckpt")
    err = caught.value
    assert "bert.encoder.layer.0.attention.output.LayerNorm.weight" in err.missing
    assert "bert.encoder.layer.4.output.dense.weight" in err.missing
    assert err.unexpected == ["bert.encoder.layer.0.attention.output.LayerNorm.gamma"]
    assert ("bert.embeddings.word_embeddings.weight", (512, 64), (600, 64)) in err.mismatched
    assert ("cls.predictions.bias", (512,), (600,)) in err.mismatched
    message = str(err)
    for name in ("bert.encoder.layer.4.intermediate.dense.bias",
                 "bert.encoder.layer.0.attention.output.LayerNorm.gamma",
                 "bert.embeddings.word_embeddings.weight: [512, 64] vs [600, 64]"):
        assert name in message


def test_strict_loading_accepts_a_matching_checkpoint(checkpoint):
    _, state_dict, _ = checkpoint
    model = BertForPreTraining(tiny_config())
    load_strict(model, state_dict, "ckpt")
    assert torch.equal(model.bert.pooler.dense.weight, state_dict["bert.pooler.dense.weight"])


def test_missing_run_config_is_an_error(tmp_path, checkpoint):
    out, _, _ = checkpoint
    tag = tmp_path / "tag"
    tag.mkdir()
    (tag / "mp_rank_00_model_states.pt").write_bytes(
        (out / "checkpoints" / "step0" / "mp_rank_00_model_states.pt").read_bytes())
    with pytest.raises(CheckpointError, match="run_config.json is missing"):
        load_pretrained(tag)
    with pytest.raises(CheckpointError, match="no DeepSpeed checkpoint"):
        load_pretrained(tmp_path)
