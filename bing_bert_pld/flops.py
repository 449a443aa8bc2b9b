"""Training FLOPs of BERT pretraining, per sequence, and what PLD skips: pure functions.

Conventions (the usual ones for model FLOPs utilization, as in Kaplan et al. and PaLM):
- Only matrix multiplications count, at 2 FLOPs per multiply-accumulate. LayerNorm,
  GELU, softmax, dropout, bias adds and the embedding lookups are memory traffic, not
  FLOPs: the embeddings therefore contribute 0.
- Training = 3 x forward: every matmul's backward computes one product for the input
  gradient and one for the weight gradient (or for both operands of the attention
  products), each as large as the forward product.
- Attention scores and context are counted over the full (T, T) matrix, padding
  included, as the dense kernels compute them.
- The MLM head is sparse: only `num_predictions` positions per sequence go through the
  transform and the (tied) decoder. Pass `num_predictions=seq_len` for a dense head
  such as Hugging Face's `BertForPreTraining`.
- Every encoder layer costs the same, so the fraction of encoder FLOPs that PLD skips
  is the fraction of layer executions skipped.

`config` is anything with the BertConfig fields hidden_size, num_hidden_layers,
intermediate_size and vocab_size. No torch: the trainer, the report and the benchmarks
all call these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

TRAINING_MULTIPLIER = 3  # forward + backward (2 x forward)


def _matmul(m: int, k: int, n: int) -> int:
    """FLOPs of an (m, k) @ (k, n) product."""
    return 2 * m * k * n


@dataclass(frozen=True)
class LayerFlops:
    """Forward FLOPs of one encoder layer on one sequence."""

    attention_projections: int  # query, key, value and the output dense
    attention_scores: int  # Q K^T
    attention_context: int  # softmax(scores) V
    ffn: int  # intermediate dense + output dense

    @property
    def total(self) -> int:
        return (self.attention_projections + self.attention_scores
                + self.attention_context + self.ffn)


@dataclass(frozen=True)
class ForwardFlops:
    """Forward FLOPs of BERT pretraining on one sequence, by part."""

    embeddings: int
    layer: LayerFlops  # one encoder layer; all layers are equal
    num_layers: int
    pooler: int
    mlm_head: int  # transform + decoder, on the predicted positions only
    nsp_head: int

    @property
    def encoder(self) -> int:
        return self.layer.total * self.num_layers

    @property
    def outside_encoder(self) -> int:
        """What PLD never skips: embeddings, pooler and both heads."""
        return self.embeddings + self.pooler + self.mlm_head + self.nsp_head

    @property
    def total(self) -> int:
        return self.outside_encoder + self.encoder


def encoder_layer_flops(config, seq_len: int) -> LayerFlops:
    t, h, i = seq_len, config.hidden_size, config.intermediate_size
    return LayerFlops(
        attention_projections=4 * _matmul(t, h, h),
        attention_scores=_matmul(t, h, t),  # summed over heads: nh * 2 T hd T = 2 T H T
        attention_context=_matmul(t, t, h),
        ffn=_matmul(t, h, i) + _matmul(t, i, h),
    )


def forward_flops(config, seq_len: int, num_predictions: int) -> ForwardFlops:
    """Forward FLOPs of one sequence with `num_predictions` MLM positions."""
    h, v = config.hidden_size, config.vocab_size
    return ForwardFlops(
        embeddings=0,  # three lookups and a sum: no matmul
        layer=encoder_layer_flops(config, seq_len),
        num_layers=config.num_hidden_layers,
        pooler=_matmul(1, h, h),  # the [CLS] vector only
        mlm_head=_matmul(num_predictions, h, h) + _matmul(num_predictions, h, v),
        nsp_head=_matmul(1, h, 2),
    )


def _layers_run(config, keep: Optional[Sequence[float]]) -> float:
    """Expected number of encoder layers executed: sum of keep probabilities (or gates)."""
    if keep is None:
        return float(config.num_hidden_layers)
    if len(keep) != config.num_hidden_layers:
        raise ValueError(f"{len(keep)} keep probabilities for "
                         f"{config.num_hidden_layers} layers")
    return float(sum(keep))


def training_flops_per_sequence(config, seq_len: int, num_predictions: int,
                                keep: Optional[Sequence[float]] = None) -> float:
    """Forward + backward FLOPs of one sequence.

    `keep` is the per-layer keep probability (expected FLOPs under PLD) or the realized
    0/1 gates of one step; None means full depth.
    """
    f = forward_flops(config, seq_len, num_predictions)
    return TRAINING_MULTIPLIER * (f.outside_encoder + f.layer.total * _layers_run(config, keep))


def encoder_flops_skipped_fraction(keep: Sequence[float]) -> float:
    """Fraction of encoder FLOPs not computed, given keep probabilities or 0/1 gates."""
    if not keep:
        raise ValueError("no layers")
    return 1.0 - float(sum(keep)) / len(keep)


def predicted_speedup(config, seq_len: int, num_predictions: int,
                      keep: Sequence[float]) -> float:
    """Full-depth training FLOPs over PLD training FLOPs (embeddings and heads included)."""
    return (training_flops_per_sequence(config, seq_len, num_predictions)
            / training_flops_per_sequence(config, seq_len, num_predictions, keep))


# Dense bf16/fp16 tensor-core peaks from the vendors' data sheets, FLOP/s.
_PEAK_BF16 = (
    ("H200", 989.4e12),
    ("H100 PCIe", 756.0e12),
    ("H100", 989.4e12),  # SXM; reported as e.g. "NVIDIA H100 80GB HBM3"
    ("A100", 312.0e12),
    ("L4", 121.0e12),
    ("A10", 125.0e12),
)


def peak_flops_per_sec(device_name: str) -> Optional[float]:
    """Dense bf16 peak of a GPU by its torch name, None when not in the table."""
    for key, peak in _PEAK_BF16:
        if key in device_name:
            return peak
    return None


def model_flops_utilization(flops_per_sequence: float, sequences_per_sec: float,
                            peak_flops: float) -> float:
    return flops_per_sequence * sequences_per_sec / peak_flops
