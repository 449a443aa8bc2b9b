"""FLOPs accounting: exact counts on a tiny config, computed by hand, and checked
against torch's own FLOP counter running the real model."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from bing_bert_pld import flops
from bing_bert_pld.batch import PretrainingBatch
from bing_bert_pld.config import BertConfig
from bing_bert_pld.model import BertForPreTraining
from bing_bert_pld.pld import LayerGates, expected_active_layers, keep_probabilities

# H = 4, I = 8, V = 10, L = 2; sequences of T = 3 with P = 2 predictions.
TINY = BertConfig(vocab_size=10, hidden_size=4, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=8, max_position_embeddings=8,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def test_encoder_layer_by_hand():
    layer = flops.encoder_layer_flops(TINY, seq_len=3)
    assert layer.attention_projections == 4 * 2 * 3 * 4 * 4  # q, k, v, out: 384
    assert layer.attention_scores == 2 * 3 * 4 * 3  # 72
    assert layer.attention_context == 2 * 3 * 3 * 4  # 72
    assert layer.ffn == 2 * 3 * 4 * 8 + 2 * 3 * 8 * 4  # 384
    assert layer.total == 912


def test_sparse_last_layer_by_hand():
    # T = 4 keys and values, Q = 3 queries ([CLS] and 2 predictions).
    last = flops.encoder_layer_flops(TINY, seq_len=4, num_queries=3)
    assert last.attention_projections == 2 * (2 * 4 * 4 * 4) + 2 * (2 * 3 * 4 * 4)  # 448
    assert last.attention_scores == 2 * 3 * 4 * 4  # 96
    assert last.attention_context == 2 * 3 * 4 * 4  # 96
    assert last.ffn == 2 * (2 * 3 * 4 * 8)  # 384
    assert last.total == 1024
    assert flops.encoder_layer_flops(TINY, seq_len=4).total == 1280


def test_forward_and_training_by_hand():
    f = flops.forward_flops(TINY, seq_len=4, num_predictions=2)
    assert f.embeddings == 0
    assert f.pooler == 2 * 4 * 4  # 32
    assert f.mlm_head == 2 * 2 * 4 * 4 + 2 * 2 * 4 * 10  # transform 64 + decoder 160
    assert f.nsp_head == 2 * 4 * 2  # 16
    assert f.outside_encoder == 272
    assert f.encoder == 1280 + 1024  # one full block, then the sparse last one
    assert f.total == 2576
    assert flops.training_flops_per_sequence(TINY, 4, 2) == 3 * 2576
    # Dense (Hugging Face's layout): every block full, the head on all 4 positions.
    dense = flops.forward_flops(TINY, seq_len=4, num_predictions=4, sparse_outputs=False)
    assert dense.encoder == 2 * 1280 and dense.mlm_head == 2 * 4 * 4 * 4 + 2 * 4 * 4 * 10
    # Layer 1 always kept, layer 2 half the time: 1.5 blocks run, and always one at
    # least, so the expectation holds one sparse block: 1.5 * 1280 - (1280 - 1024).
    assert flops.training_flops_per_sequence(TINY, 4, 2, keep=(1.0, 0.5)) == 3 * (272 + 1664)
    # Each layer half the time: 1 block on average, none in a quarter of the steps.
    assert flops.training_flops_per_sequence(TINY, 4, 2, keep=(0.5, 0.5)) == 3 * (272 + 1280 - 0.75 * 256)
    assert flops.training_flops_per_sequence(TINY, 4, 2, keep=(0, 0)) == 3 * 272
    assert flops.training_flops_per_sequence(TINY, 4, 2, keep=(False, True)) == 3 * (272 + 1024)
    assert flops.predicted_speedup(TINY, 4, 2, keep=(1.0, 0.5)) == 7728 / 5808


def test_layer_runs():
    assert flops.LayerRuns.from_keep((1.0, 0.5)) == flops.LayerRuns(1.5, 1.0)
    assert flops.LayerRuns.from_keep((0.5, 0.5)) == flops.LayerRuns(1.0, 0.75)
    assert flops.LayerRuns.from_keep((False, False)) == flops.LayerRuns(0.0, 0.0)
    # 4 micro-batches ran 5 blocks in all, one ran none.
    assert flops.LayerRuns.from_counts(4, 5, 1) == flops.LayerRuns(1.25, 0.75)
    assert flops.LayerRuns.full_depth(12) == flops.LayerRuns(12.0, 1.0)
    with pytest.raises(ValueError, match="micro_batches must be positive"):
        flops.LayerRuns.from_counts(0, 0, 0)


def test_skipped_fraction():
    assert flops.encoder_flops_skipped_fraction(TINY, 4, 2, (1.0, 0.5)) == 1 - 1664 / 2304
    assert flops.encoder_flops_skipped_fraction(TINY, 4, 2, (True, False)) == 1 - 1024 / 2304
    assert flops.encoder_flops_skipped_fraction(TINY, 4, 2, (False, False)) == 1.0
    assert flops.encoder_flops_skipped_fraction(
        TINY, 4, 2, flops.LayerRuns.from_counts(4, 5, 1)) == 1 - (1.25 * 1280 - 0.75 * 256) / 2304
    base = BertConfig()
    # BERT-base, seq 128, theta 0.5: 8.75 of 12 blocks; the sparse last block makes the
    # skipped share of encoder FLOPs a little larger than the 27.1% of blocks skipped.
    skipped = flops.encoder_flops_skipped_fraction(base, 128, 20, keep_probabilities(0.5, 12))
    assert 1 - 8.75 / 12 < skipped < 1 - 8.75 / 12 + 0.02
    with pytest.raises(ValueError):
        flops.training_flops_per_sequence(TINY, 3, 2, keep=(1.0,))


def test_bert_base_matches_published_anchor_and_pld_prediction():
    base = BertConfig()  # BERT-base
    per_seq = flops.training_flops_per_sequence(base, seq_len=128, num_predictions=20)
    # ~70 GFLOP per seq-128 sequence (training) with a dense last block, ~66 sparse.
    assert 65.5e9 < per_seq < 66.5e9
    assert 69e9 < flops.training_flops_per_sequence(base, 128, 20, sparse_outputs=False) < 71e9
    keep = keep_probabilities(0.5, 12)
    assert sum(keep) == pytest.approx(expected_active_layers(0.5, 12))
    # The encoder is ~96% of the FLOPs, so 27% fewer layers gives a ~1.38x prediction.
    assert 1.37 < flops.predicted_speedup(base, 128, 20, keep) < 1.39


def test_peak_table():
    assert flops.peak_flops_per_sec("NVIDIA H100 80GB HBM3") == 989.4e12
    assert flops.peak_flops_per_sec("NVIDIA H100 PCIe") == 756.0e12
    assert flops.peak_flops_per_sec("NVIDIA H200") == 989.4e12
    assert flops.peak_flops_per_sec("cpu") is None
    assert flops.model_flops_utilization(1e9, 100.0, 1e12) == 0.1


@pytest.mark.parametrize("keep", [None, (True, False), (False, False)])
def test_counts_equal_torch_flop_counter_on_the_model(keep):
    """torch counts every matmul the real model runs, forward and backward."""
    torch.manual_seed(0)
    model = BertForPreTraining(TINY)
    batch_size, seq_len, num_pred = 3, 5, 2
    batch = PretrainingBatch(
        input_ids=torch.randint(1, 10, (batch_size, seq_len)),
        input_mask=torch.ones(batch_size, seq_len, dtype=torch.long),
        segment_ids=torch.zeros(batch_size, seq_len, dtype=torch.long),
        masked_lm_positions=torch.tensor([[1, 3]] * batch_size),  # all real (nonzero)
        masked_lm_ids=torch.randint(1, 10, (batch_size, num_pred)),
        next_sentence_labels=torch.zeros(batch_size, dtype=torch.long))
    gates = None if keep is None else LayerGates(keep=keep, keep_prob=(1.0, 0.5))
    # The math backend runs attention as bmm, which the counter sees.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(batch, gates).loss.backward()
    expected = batch_size * flops.training_flops_per_sequence(TINY, seq_len, num_pred, keep)
    assert counter.get_total_flops() == expected
