"""The model: PLD gates, full-depth evaluation, checkpointing, attention and heads."""

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bing_bert_pld import pld
from bing_bert_pld.batch import PretrainingBatch
from bing_bert_pld.config import BertConfig, ConfigError
from bing_bert_pld.model import BertForPreTraining

TINY = BertConfig.from_json("bert-tiny")


def make_batch(config=TINY, batch=4, seq=16, preds=4, seed=0) -> PretrainingBatch:
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, config.vocab_size, (batch, seq), generator=g)
    lengths = torch.tensor([seq, seq - 3, seq - 6, seq][:batch])
    input_mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    input_ids = input_ids * input_mask
    segment_ids = ((torch.arange(seq)[None, :] >= lengths[:, None] // 2) & input_mask.bool()).long()
    positions = torch.stack([torch.sort(torch.randperm(int(n) - 1, generator=g)[:preds] + 1).values
                             for n in lengths])
    positions[1, -1] = 0  # one padded prediction slot
    masked_ids = torch.randint(5, config.vocab_size, (batch, preds), generator=g) * (positions != 0)
    return PretrainingBatch(input_ids, input_mask, segment_ids, positions, masked_ids,
                            torch.tensor([0, 1, 1, 0][:batch]))


def model_for(config=TINY, seed=0, **changes) -> BertForPreTraining:
    torch.manual_seed(seed)
    return BertForPreTraining(config.replace(**changes))


def count_layer_calls(model):
    """Counts each layer's forward runs, recomputation included (hooks miss that one)."""
    calls = [0] * len(model.bert.encoder.layer)
    for index, layer in enumerate(model.bert.encoder.layer):
        def counted(*args, _forward=layer.forward, _index=index):
            calls[_index] += 1
            return _forward(*args)
        layer.forward = counted
    return calls


def test_theta_one_gives_exactly_the_forward_without_pld():
    model = model_for(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
    batch = make_batch()
    plain = model(batch)
    gated = model(batch, layer_gates=pld.sample_gates(1.0, TINY.num_hidden_layers, 0, 0, 0))
    assert torch.equal(plain.loss, gated.loss)


def test_dropped_layers_are_never_called_and_kept_ones_are_scaled():
    model = model_for(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
    calls = count_layer_calls(model)
    gates = pld.LayerGates(keep=(True, False, True, False), keep_prob=(0.9, 0.8, 0.7, 0.6))
    out = model(make_batch(), layer_gates=gates)
    assert calls == [1, 0, 1, 0]
    out.loss.backward()
    dropped = model.bert.encoder.layer[1]
    assert all(p.grad is None for p in dropped.parameters())  # no compute in backward either

    # the same result by hand: x + (1/p) branch, for layers 0 and 2 only
    batch = make_batch()
    bert = model.bert
    mask = batch.input_mask.bool()[:, None, None, :]
    x = bert.embeddings(batch.input_ids, batch.segment_ids)
    for index, p in ((0, 0.9), (2, 0.7)):
        x = bert.encoder.layer[index](x, mask, 1 / p)
    manual = bert.encoder.final_layer_norm(x)
    encoder_out, _ = bert(batch.input_ids, batch.segment_ids, batch.input_mask, gates)
    assert torch.allclose(encoder_out, manual, atol=0, rtol=0)


def test_branch_scale_multiplies_both_sublayers():
    model = model_for(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
    layer = model.bert.encoder.layer[0]
    x = torch.randn(2, 8, TINY.hidden_size)
    mask = torch.ones(2, 1, 1, 8, dtype=torch.bool)
    attn = layer.attention.output(layer.attention.self(layer.attention.output.LayerNorm(x), mask))
    h = x + 2.5 * attn
    expected = h + 2.5 * layer.output(layer.intermediate(layer.output.LayerNorm(h)))
    assert torch.allclose(layer(x, mask, 2.5), expected, atol=1e-6)


def test_eval_is_full_depth_and_deterministic_even_with_gates():
    model = model_for()  # dropout on: eval must switch it off
    calls = count_layer_calls(model)
    model.eval()
    batch = make_batch()
    dropped_all = pld.LayerGates(keep=(False,) * 4, keep_prob=(0.5,) * 4)
    with torch.no_grad():
        first = model(batch, layer_gates=dropped_all)
        second = model(batch)
    assert calls == [2, 2, 2, 2]
    assert torch.equal(first.loss, second.loss)
    assert model.consumed_layer_gates is None


def test_model_records_the_gates_it_consumed():
    model = model_for().train()
    gates = pld.sample_gates(0.5, 4, 0, 0, 0)
    model(make_batch(), layer_gates=gates)
    assert model.consumed_layer_gates is gates


def test_activation_checkpointing_respects_gates_and_matches_gradients():
    plain = model_for(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
    ckpt = model_for(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     activation_checkpointing=True).train()
    ckpt.load_state_dict(plain.state_dict())
    calls = count_layer_calls(ckpt)
    gates = pld.LayerGates(keep=(False, True, True, False), keep_prob=(0.9, 0.8, 0.7, 0.6))
    batch = make_batch()
    loss_plain = plain(batch, layer_gates=gates).loss
    loss_ckpt = ckpt(batch, layer_gates=gates).loss
    loss_plain.backward()
    loss_ckpt.backward()
    # kept layers run twice (forward + recompute in backward), dropped ones never
    assert calls == [0, 2, 2, 0]
    assert torch.equal(loss_plain, loss_ckpt)
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, atol=1e-6), name


def test_sdpa_attention_equals_manual_softmax_attention():
    model = model_for(attention_probs_dropout_prob=0.0).eval()
    attention = model.bert.encoder.layer[0].attention.self
    x = torch.randn(2, 10, TINY.hidden_size)
    mask = torch.ones(2, 1, 1, 10, dtype=torch.bool)
    mask[1, ..., 7:] = False
    heads = lambda t: t.view(2, 10, TINY.num_attention_heads, TINY.head_dim).transpose(1, 2)
    q, k, v = heads(attention.query(x)), heads(attention.key(x)), heads(attention.value(x))
    scores = q @ k.transpose(-1, -2) / math.sqrt(TINY.head_dim)
    scores = scores.masked_fill(~mask, float("-inf"))
    manual = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 10, -1)
    assert torch.allclose(attention(x, mask), manual, atol=1e-5)


def test_sparse_mlm_loss_equals_dense_loss_over_all_positions():
    model = model_for().eval()
    batch = make_batch()
    with torch.no_grad():
        out = model(batch)
        sequence, pooled = model.bert(batch.input_ids, batch.segment_ids, batch.input_mask)
        logits = model.cls.predictions(sequence)  # every position: (B, T, V)
        labels = torch.full(batch.input_ids.shape, -100)
        for row in range(batch.size):
            for pos, label in zip(batch.masked_lm_positions[row], batch.masked_lm_ids[row]):
                if pos != 0:
                    labels[row, pos] = label
        dense = F.cross_entropy(logits.view(-1, TINY.vocab_size), labels.view(-1), ignore_index=-100)
        nsp = F.cross_entropy(model.cls.seq_relationship(pooled), batch.next_sentence_labels)
    assert out.mlm_count.item() == int((labels != -100).sum()) == 15
    assert torch.allclose(out.mlm_loss, dense, atol=1e-6)
    assert torch.allclose(out.loss, dense + nsp, atol=1e-6)


SPARSE_GATE_CASES = [None, (True, True, False, False), (False, True, False, True), (False,) * 4]


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("pre_layer_norm", [True, False])
@pytest.mark.parametrize("keep", SPARSE_GATE_CASES)
def test_sparse_last_block_equals_the_dense_encoder_then_gather(keep, pre_layer_norm, checkpointing):
    """output_positions computes the last block that runs for those positions only; the
    outputs and every parameter's gradient equal running it dense and gathering."""
    gates = None if keep is None else pld.LayerGates(keep=keep, keep_prob=(0.9, 0.8, 0.7, 0.6))
    batch = make_batch()
    positions = batch.masked_lm_positions
    weights = torch.randn(batch.size, positions.shape[1], TINY.hidden_size,
                          generator=torch.Generator().manual_seed(1))
    results = []
    for sparse in (True, False):
        model = model_for(pre_layer_norm=pre_layer_norm, activation_checkpointing=checkpointing,
                          hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
        if sparse:
            selected, pooled = model.bert(batch.input_ids, batch.segment_ids, batch.input_mask,
                                          gates, output_positions=positions)
        else:
            sequence, pooled = model.bert(batch.input_ids, batch.segment_ids, batch.input_mask, gates)
            selected = sequence[torch.arange(batch.size)[:, None], positions]
        ((selected * weights).sum() + pooled.sum()).backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        results.append((selected.detach(), pooled.detach(), grads))
    (sparse_out, sparse_pooled, sparse_grads), (dense_out, dense_pooled, dense_grads) = results
    assert sparse_out.shape == (batch.size, positions.shape[1], TINY.hidden_size)
    assert torch.allclose(sparse_out, dense_out, atol=1e-6)
    assert torch.allclose(sparse_pooled, dense_pooled, atol=1e-6)
    assert sparse_grads.keys() == dense_grads.keys()
    for name, grad in sparse_grads.items():
        assert torch.allclose(grad, dense_grads[name], atol=1e-5), name


def test_only_the_last_block_that_runs_is_sparse():
    model = model_for(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
    batch = make_batch()  # B = 4, T = 16, P = 4 prediction slots
    seen = {}
    for index, layer in enumerate(model.bert.encoder.layer):
        for name, module in (("key", layer.attention.self.key), ("query", layer.attention.self.query),
                             ("ffn", layer.intermediate.dense)):
            module.register_forward_hook(
                lambda m, args, out, key=(index, name): seen.__setitem__(key, tuple(args[0].shape)))
    gates = pld.LayerGates(keep=(True, True, False, False), keep_prob=(0.9, 0.8, 0.7, 0.6))
    model(batch, layer_gates=gates)
    hidden = TINY.hidden_size
    full, sparse = (4, 16, hidden), (4, 1 + 4, hidden)  # [CLS] and the 4 slots
    assert seen == {(0, "key"): full, (0, "query"): full, (0, "ffn"): full,
                    (1, "key"): full, (1, "query"): sparse, (1, "ffn"): sparse}


def test_decoder_is_tied_to_word_embeddings():
    model = model_for()
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    names = [n for n, _ in model.named_parameters()]
    assert "cls.predictions.decoder.weight" not in names  # one parameter, listed once


def test_post_ln_variant_is_the_same_encoder_with_norms_moved():
    pre, post = model_for(), model_for(pre_layer_norm=False)
    assert post.bert.encoder.final_layer_norm is None
    assert set(pre.state_dict()) - set(post.state_dict()) == {
        "bert.encoder.final_layer_norm.weight", "bert.encoder.final_layer_norm.bias"}
    calls = count_layer_calls(post)
    post.train()(make_batch(), layer_gates=pld.LayerGates((True, True, False, True), (1, 1, .5, .5)))
    assert calls == [1, 1, 0, 1]


def test_config_rejects_unknown_keys_and_bad_values(tmp_path):
    bad = tmp_path / "model.json"
    bad.write_text('{"hidden_size": 64, "num_layers": 4}')
    with pytest.raises(ConfigError, match=r"model.json: unknown key 'num_layers' \(did you mean "
                                          r"'num_hidden_layers'\?\) in the model config; it takes \["):
        BertConfig.from_json(bad)
    bad.write_text('{"hidden_size": 65, "num_attention_heads": 4}')
    with pytest.raises(ConfigError, match="hidden_size 65 is not divisible"):
        BertConfig.from_json(bad)
    for text, message in [
            ('{"pre_layer_norm": "yes"}', "pre_layer_norm must be true or false, got the string 'yes'"),
            ('{"hidden_dropout_prob": "0.1"}',
             r"hidden_dropout_prob must be a number in \[0, 1\), got the string '0.1'"),
            ('{"attention_probs_dropout_prob": 1.0}', r"attention_probs_dropout_prob must be a number in \[0, 1\), got 1.0"),
            ('{"num_hidden_layers": 0}', "num_hidden_layers must be a positive integer, got 0"),
            ('{"hidden_size": 768.0}', "hidden_size must be a positive integer, got 768.0"),
            ('{"layer_norm_eps": 0}', "layer_norm_eps must be a positive number, got 0"),
            ('{"pad_token_id": 30522}', "pad_token_id 30522 must be below vocab_size 30522")]:
        bad.write_text(text)
        with pytest.raises(ConfigError, match=rf"^{re.escape(str(bad))}: {message}$"):
            BertConfig.from_json(bad)
    with pytest.raises(ConfigError, match="^num_attention_heads must be a positive integer, got 0$"):
        BertConfig().replace(num_attention_heads=0)  # built in code: the same rules, no file
    bad.write_text('{"hidden_size": ')
    with pytest.raises(ConfigError, match="not valid JSON"):
        BertConfig.from_json(bad)
    with pytest.raises(ConfigError, match="not found"):
        BertConfig.from_json(tmp_path / "missing.json")


def test_packaged_configs_load():
    base = BertConfig.from_json("bert-base")
    assert (base.hidden_size, base.num_hidden_layers, base.pre_layer_norm) == (768, 12, True)
    large = BertConfig.from_json("bert-large")
    assert (large.hidden_size, large.num_hidden_layers, large.num_attention_heads) == (1024, 24, 16)
    # HF BertForPreTraining (Post-LN) has 110,106,428; Pre-LN adds the final LayerNorm (2 x 768)
    assert sum(p.numel() for p in BertForPreTraining(base).parameters()) == 110_106_428 + 1536
    post = base.replace(pre_layer_norm=False)
    assert sum(p.numel() for p in BertForPreTraining(post).parameters()) == 110_106_428


def test_classifier_reads_cls_from_a_last_block_run_for_cls_alone():
    from bing_bert_pld.glue.data import GlueBatch
    from bing_bert_pld.glue.model import BertForSequenceClassification
    torch.manual_seed(0)
    model = BertForSequenceClassification(TINY, num_outputs=3).eval()
    pretraining = make_batch()
    batch = GlueBatch(pretraining.input_ids, pretraining.input_mask, pretraining.segment_ids,
                      torch.tensor([0, 1, 2, 0]))
    ffn_rows = []
    model.bert.encoder.layer[-1].intermediate.dense.register_forward_hook(
        lambda m, args, out: ffn_rows.append(args[0].shape[1]))
    with torch.no_grad():
        logits = model(batch).logits
        _, pooled = model.bert(batch.input_ids, batch.segment_ids, batch.input_mask)  # dense
    assert ffn_rows == [1, 16]  # [CLS] only, then the dense reference's 16 tokens
    assert torch.allclose(logits, model.classifier(pooled), atol=1e-6)


@pytest.mark.parametrize("pre_layer_norm", [True, False])
def test_init_scales_residual_projections_in_pre_ln_as_deepspeed_examples(pre_layer_norm):
    """DeepSpeedExamples' modelingpreln.py: the projections into the residual stream
    (attention.output.dense, output.dense) get initializer_range / sqrt(2 L); every other
    weight initializer_range. Post-LN keeps original BERT's single std."""
    config = BertConfig(vocab_size=1000, hidden_size=256, num_hidden_layers=12,
                        num_attention_heads=4, intermediate_size=1024,
                        pre_layer_norm=pre_layer_norm)
    model = model_for(config)
    residual, other = [], []
    for name, param in model.named_parameters():
        if not name.endswith("weight") or "LayerNorm" in name or "layer_norm" in name:
            continue
        (residual if name.endswith("output.dense.weight") and ".layer." in name else other).append(param)
    assert len(residual) == 2 * 12
    residual_std = torch.cat([p.detach().flatten() for p in residual]).std().item()
    other_std = torch.cat([p.detach().flatten() for p in other]).std().item()
    expected = 0.02 / math.sqrt(2 * 12) if pre_layer_norm else 0.02  # 0.0040825 in Pre-LN
    # 24 x 65,536 / 24 x 262,144 samples: the std estimates are within 0.2%.
    assert residual_std == pytest.approx(expected, rel=0.01)
    assert other_std == pytest.approx(0.02, rel=0.01)
    for layer in model.bert.encoder.layer:  # each layer's own std, not only the pooled one
        for weight in (layer.attention.output.dense.weight, layer.output.dense.weight):
            assert weight.std().item() == pytest.approx(expected, rel=0.05)
        assert layer.intermediate.dense.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert all(not p.any() for n, p in model.named_parameters() if n.endswith("bias"))


# ---------------------------------------------------------------- attention without a mask

def unpadded(batch: PretrainingBatch) -> PretrainingBatch:
    """The same rows with every position a token (the mask all ones)."""
    return PretrainingBatch(batch.input_ids, torch.ones_like(batch.input_mask), batch.segment_ids,
                            batch.masked_lm_positions, batch.masked_lm_ids, batch.next_sentence_labels)


def test_batch_knows_whether_it_is_padded_without_asking_the_device():
    padded = make_batch()
    assert padded.has_padding is True and unpadded(padded).has_padding is False
    assert unpadded(padded).to("meta").has_padding is False  # carried from the CPU copy
    on_device = PretrainingBatch(*(t.to("meta") for t in (
        padded.input_ids, torch.ones_like(padded.input_mask), padded.segment_ids,
        padded.masked_lm_positions, padded.masked_lm_ids, padded.next_sentence_labels)))
    assert on_device.has_padding is None  # unknown: the model keeps the mask
    arrays = {name: getattr(padded, name).numpy() for name in
              ("input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids",
               "next_sentence_labels")}
    assert PretrainingBatch.from_numpy(arrays).has_padding is True
    arrays["input_mask"] = np.ones_like(arrays["input_mask"], dtype=np.int8)
    assert PretrainingBatch.from_numpy(arrays).has_padding is False


def record_sdpa_calls(monkeypatch) -> list:
    """(mask given?, query length, key length) of every SDPA call the model makes."""
    calls, real = [], F.scaled_dot_product_attention

    def recording(q, k, v, attn_mask=None, **kwargs):
        calls.append((attn_mask is not None, q.shape[2], k.shape[2]))
        return real(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    return calls


def test_unpadded_batches_attend_without_a_mask_padded_ones_with_it(monkeypatch):
    calls = record_sdpa_calls(monkeypatch)
    model = model_for().train()
    gates = pld.LayerGates(keep=(True, False, True, True), keep_prob=(0.9, 0.8, 0.7, 0.6))
    model(unpadded(make_batch()), layer_gates=gates)
    # three blocks ran, the last one sparse: 1 + 4 queries ([CLS] and the slots), 16 keys
    assert calls == [(False, 16, 16), (False, 16, 16), (False, 5, 16)]
    calls.clear()
    model(make_batch(), layer_gates=gates)
    assert calls == [(True, 16, 16), (True, 16, 16), (True, 5, 16)]
    calls.clear()
    batch = unpadded(make_batch())
    batch.has_padding = None  # as for a batch built on the device
    model(batch)
    assert calls == [(True, 16, 16)] * 3 + [(True, 5, 16)]


def loss_and_grads(model, batch, gates=None):
    model.zero_grad(set_to_none=True)
    out = model(batch, layer_gates=gates)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return torch.stack([out.loss, out.mlm_loss, out.nsp_loss]).detach(), grads


@pytest.mark.parametrize("pre_layer_norm, checkpointing", [(True, False), (True, True), (False, False)])
@pytest.mark.parametrize("keep", [None, (True, False, True, True), (False, True, False, False)])
def test_mask_free_path_equals_the_masked_path_on_unpadded_batches(keep, pre_layer_norm, checkpointing):
    gates = None if keep is None else pld.LayerGates(keep=keep, keep_prob=(0.9, 0.8, 0.7, 0.6))
    model = model_for(pre_layer_norm=pre_layer_norm, activation_checkpointing=checkpointing,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
    mask_free = unpadded(make_batch())
    masked = unpadded(make_batch())
    masked.has_padding = None  # the model keeps the (all-True) mask
    losses_free, grads_free = loss_and_grads(model, mask_free, gates)
    losses_masked, grads_masked = loss_and_grads(model, masked, gates)
    torch.testing.assert_close(losses_free, losses_masked, rtol=0, atol=1e-6)
    assert grads_free.keys() == grads_masked.keys()
    for name, grad in grads_free.items():
        torch.testing.assert_close(grad, grads_masked[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("pre_layer_norm", [True, False])
def test_padded_rows_equal_the_same_rows_run_alone_without_padding(pre_layer_norm):
    """The masked path on a padded batch against the mask-free path on each row cut to
    its length: the same outputs at [CLS] and the masked positions, the same gradients."""
    model = model_for(pre_layer_norm=pre_layer_norm, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0).train()
    gates = pld.LayerGates(keep=(True, True, False, True), keep_prob=(0.9, 0.8, 0.7, 0.6))
    batch = make_batch()
    lengths = batch.input_mask.sum(1).tolist()
    assert lengths == [16, 13, 10, 16]
    weights = torch.randn(batch.size, batch.masked_lm_positions.shape[1], TINY.hidden_size,
                          generator=torch.Generator().manual_seed(2))
    selected, pooled = model.bert(batch.input_ids, batch.segment_ids, batch.input_mask, gates,
                                  output_positions=batch.masked_lm_positions)
    ((selected * weights).sum() + pooled.sum()).backward()
    batched = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    for row, length in enumerate(lengths):
        alone = slice(row, row + 1)
        selected_row, pooled_row = model.bert(
            batch.input_ids[alone, :length], batch.segment_ids[alone, :length], None, gates,
            output_positions=batch.masked_lm_positions[alone])
        torch.testing.assert_close(selected_row, selected[alone], rtol=0, atol=1e-5)
        torch.testing.assert_close(pooled_row, pooled[alone], rtol=0, atol=1e-5)
        ((selected_row * weights[alone]).sum() + pooled_row.sum()).backward()  # grads add up
    for name, p in model.named_parameters():
        if name in batched:
            # summed over rows in another order: float32 rounding, relative to the sum
            torch.testing.assert_close(p.grad, batched[name], rtol=1e-4, atol=1e-5)


def test_compiled_layers_compile_once_for_every_scale(monkeypatch):
    """1/p_i changes with theta every step: the compiled layers must not recompile per
    value (torch's default limit of 8 recompiles would then send them back to eager)."""
    from torch._dynamo.utils import counters
    from bing_bert_pld.model import compile_layers_separately

    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 8)
    torch._dynamo.reset()
    reference = model_for(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
    compiled = model_for(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
    # aot_eager: the graphs inductor would get (alpha specializes there), minus codegen
    compile_layers_separately(compiled.bert.encoder.layer, backend="aot_eager")
    batches = [unpadded(make_batch()), make_batch()]  # without a mask and with one

    def run_all(theta):
        for batch in batches:
            for keep in ((True,) * 4, (True, True, False, False)):  # sparse block 3, then 1
                gates = pld.LayerGates(keep=keep, keep_prob=pld.keep_probabilities(theta, 4))
                expected = reference(batch, layer_gates=gates).loss
                torch.testing.assert_close(compiled(batch, layer_gates=gates).loss, expected,
                                           rtol=0, atol=1e-5)

    try:
        counters.clear()
        run_all(1.0)  # every scale 1.0
        run_all(0.9)  # the scales change: dynamic from here on
        graphs = counters["stats"]["unique_graphs"]
        assert graphs <= 8
        for theta in (0.7, 0.5):
            run_all(theta)
        assert counters["stats"]["unique_graphs"] == graphs  # no new graph for new values
        assert torch._dynamo.config.recompile_limit >= 16  # raised for the variants
    finally:
        torch._dynamo.reset()
