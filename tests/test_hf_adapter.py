"""The transformers adapter alone, in memory: every tensor name and the config map both ways and back."""

from __future__ import annotations

import pytest
import torch

from bing_bert_pld import hf_adapter
from tests.test_glue_pretrained import perturbed_model, tiny_config


@pytest.mark.parametrize("pre_layer_norm", [True, False])
def test_names_map_onto_transformers_model_and_back(pre_layer_norm):
    from transformers import AutoModelForMaskedLM, AutoModelForPreTraining

    config = tiny_config(pre_layer_norm=pre_layer_norm)
    ours = perturbed_model(config).state_dict()
    hf, nsp = hf_adapter.to_hf_state_dict(config, ours)

    # The names and shapes are exactly those of the transformers model built from our
    # config, but for the tied decoder (stored once) and, for Pre-LN, the pooler that
    # RobertaPreLayerNormForMaskedLM leaves out (AutoModel has it).
    architecture = AutoModelForMaskedLM if pre_layer_norm else AutoModelForPreTraining
    with torch.device("meta"):
        theirs = architecture.from_config(hf_adapter.hf_config(config)).state_dict()
    head = "lm_head.decoder." if pre_layer_norm else "cls.predictions.decoder."
    assert sorted(set(theirs) - set(hf)) == [head + "bias", head + "weight"]
    pooler = ["roberta_prelayernorm.pooler.dense.bias", "roberta_prelayernorm.pooler.dense.weight"]
    assert sorted(set(hf) - set(theirs)) == (pooler if pre_layer_norm else [])
    assert {name: tuple(t.shape) for name, t in hf.items() if name in theirs} == \
        {name: tuple(theirs[name].shape) for name in hf if name in theirs}
    assert sorted(nsp) == (["bias", "weight"] if pre_layer_norm else [])

    back = hf_adapter.from_hf_state_dict(config, hf, nsp)
    assert sorted(back) == sorted(ours)
    assert all(torch.equal(back[name], ours[name]) for name in ours)
    assert hf_adapter.config_from_hf(hf_adapter.hf_config(config).to_dict()) == config


def test_pre_ln_positions_shift_by_the_pad_offset():
    config = tiny_config(pad_token_id=1)
    ours = perturbed_model(config).state_dict()
    hf, _ = hf_adapter.to_hf_state_dict(config, ours)
    positions = hf["roberta_prelayernorm.embeddings.position_embeddings.weight"]
    assert positions.shape == (config.max_position_embeddings + 2, config.hidden_size)
    assert torch.all(positions[:2] == 0)
    assert torch.equal(positions[2:], ours[hf_adapter.POSITIONS])
    assert hf_adapter.hf_config(config).max_position_embeddings == config.max_position_embeddings + 2


def test_a_foreign_model_type_is_refused():
    with pytest.raises(hf_adapter.ExportError, match="model_type 'gpt2' cannot be imported"):
        hf_adapter.config_from_hf({"model_type": "gpt2", "max_position_embeddings": 8})
