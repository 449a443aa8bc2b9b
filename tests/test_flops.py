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


def test_forward_and_training_by_hand():
    f = flops.forward_flops(TINY, seq_len=3, num_predictions=2)
    assert f.embeddings == 0
    assert f.pooler == 2 * 4 * 4  # 32
    assert f.mlm_head == 2 * 2 * 4 * 4 + 2 * 2 * 4 * 10  # transform 64 + decoder 160
    assert f.nsp_head == 2 * 4 * 2  # 16
    assert f.outside_encoder == 272
    assert f.encoder == 2 * 912
    assert f.total == 2096
    assert flops.training_flops_per_sequence(TINY, 3, 2) == 3 * 2096
    # Layer 1 always kept, layer 2 half the time: 1.5 layers run on average.
    assert flops.training_flops_per_sequence(TINY, 3, 2, keep=(1.0, 0.5)) == 3 * (272 + 1.5 * 912)
    assert flops.training_flops_per_sequence(TINY, 3, 2, keep=(0, 0)) == 3 * 272
    assert flops.predicted_speedup(TINY, 3, 2, keep=(1.0, 0.5)) == 6288 / 4920


def test_skipped_fraction():
    assert flops.encoder_flops_skipped_fraction((1.0, 0.5)) == 0.25
    assert flops.encoder_flops_skipped_fraction((True, False, False, True)) == 0.5
    assert flops.encoder_flops_skipped_fraction(keep_probabilities(0.5, 12)) == pytest.approx(
        1 - 8.75 / 12)
    with pytest.raises(ValueError):
        flops.encoder_flops_skipped_fraction(())
    with pytest.raises(ValueError):
        flops.training_flops_per_sequence(TINY, 3, 2, keep=(1.0,))


def test_bert_base_matches_published_anchor_and_pld_prediction():
    base = BertConfig()  # BERT-base
    per_seq = flops.training_flops_per_sequence(base, seq_len=128, num_predictions=20)
    assert 69e9 < per_seq < 71e9  # "~70 GFLOP per seq-128 sequence (training)"
    keep = keep_probabilities(0.5, 12)
    assert sum(keep) == pytest.approx(expected_active_layers(0.5, 12))
    # The encoder is ~96% of the FLOPs, so 27% fewer layers gives a ~1.35x prediction.
    assert 1.34 < flops.predicted_speedup(base, 128, 20, keep) < 1.36


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
