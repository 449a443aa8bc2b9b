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
  transform and the (tied) decoder. So is the last encoder block that runs: its keys
  and values cover all T tokens, its queries, attention output and feed-forward only
  [CLS] and the `num_predictions` positions. `sparse_outputs=False` with
  `num_predictions=seq_len` counts a dense model such as Hugging Face's
  `BertForPreTraining`.
- Under PLD the last block that runs is the cheap one, whichever it is: a step that
  runs k >= 1 blocks costs (k - 1) full blocks and one sparse block, so the expected
  encoder cost needs the expected number of blocks run and the probability that at
  least one runs (`LayerRuns`).

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
    layer: LayerFlops  # one encoder block over every position
    last_layer: LayerFlops  # the last block that runs (sparse: only the heads' positions)
    num_layers: int
    pooler: int
    mlm_head: int  # transform + decoder, on the predicted positions only
    nsp_head: int

    @property
    def encoder(self) -> float:
        """Full depth."""
        return self.encoder_run(LayerRuns.full_depth(self.num_layers))

    def encoder_run(self, runs: "LayerRuns") -> float:
        """Encoder FLOPs when `runs.mean` blocks run, the last of them sparse."""
        return runs.mean * self.layer.total - runs.any * (self.layer.total - self.last_layer.total)

    @property
    def outside_encoder(self) -> int:
        """What PLD never skips: embeddings, pooler and both heads."""
        return self.embeddings + self.pooler + self.mlm_head + self.nsp_head

    @property
    def total(self) -> float:
        return self.outside_encoder + self.encoder


@dataclass(frozen=True)
class LayerRuns:
    """How many encoder blocks run per sequence (a mean over steps or an expectation),
    and the fraction of steps (or the probability) in which at least one runs."""

    mean: float
    any: float

    @classmethod
    def full_depth(cls, num_layers: int) -> "LayerRuns":
        return cls(float(num_layers), 1.0 if num_layers else 0.0)

    @classmethod
    def from_keep(cls, keep: Sequence[float]) -> "LayerRuns":
        """Keep probabilities (independent gates) or the realized 0/1 gates of one step."""
        none_runs = 1.0
        for p in keep:
            none_runs *= 1.0 - float(p)
        return cls(float(sum(keep)), 1.0 - none_runs)

    @classmethod
    def from_counts(cls, micro_batches: int, layer_runs: int,
                    empty_micro_batches: int) -> "LayerRuns":
        """Totals over a run: micro-batches, blocks run, micro-batches that ran none."""
        if micro_batches <= 0:
            raise ValueError(f"micro_batches must be positive, got {micro_batches}")
        return cls(layer_runs / micro_batches, 1.0 - empty_micro_batches / micro_batches)


def encoder_layer_flops(config, seq_len: int, num_queries: Optional[int] = None) -> LayerFlops:
    """One block on one sequence; `num_queries` positions get outputs (default: all)."""
    t, h, i = seq_len, config.hidden_size, config.intermediate_size
    q = t if num_queries is None else num_queries
    return LayerFlops(
        attention_projections=2 * _matmul(t, h, h) + 2 * _matmul(q, h, h),  # k, v | q, out
        attention_scores=_matmul(q, h, t),  # summed over heads: nh * 2 Q hd T = 2 Q H T
        attention_context=_matmul(q, t, h),
        ffn=_matmul(q, h, i) + _matmul(q, i, h),
    )


def forward_flops(config, seq_len: int, num_predictions: int,
                  sparse_outputs: bool = True) -> ForwardFlops:
    """Forward FLOPs of one sequence with `num_predictions` MLM positions."""
    h, v = config.hidden_size, config.vocab_size
    # The heads read [CLS] and each prediction slot (our model computes padded slots too).
    last_queries = min(seq_len, 1 + num_predictions) if sparse_outputs else None
    return ForwardFlops(
        embeddings=0,  # three lookups and a sum: no matmul
        layer=encoder_layer_flops(config, seq_len),
        last_layer=encoder_layer_flops(config, seq_len, last_queries),
        num_layers=config.num_hidden_layers,
        pooler=_matmul(1, h, h),  # the [CLS] vector only
        mlm_head=_matmul(num_predictions, h, h) + _matmul(num_predictions, h, v),
        nsp_head=_matmul(1, h, 2),
    )


def _layer_runs(config, keep) -> LayerRuns:
    """None: full depth; LayerRuns as given; else keep probabilities or 0/1 gates."""
    if keep is None:
        return LayerRuns.full_depth(config.num_hidden_layers)
    if isinstance(keep, LayerRuns):
        return keep
    if len(keep) != config.num_hidden_layers:
        raise ValueError(f"{len(keep)} keep probabilities for "
                         f"{config.num_hidden_layers} layers")
    return LayerRuns.from_keep(keep)


def training_flops_per_sequence(config, seq_len: int, num_predictions: int,
                                keep=None, sparse_outputs: bool = True) -> float:
    """Forward + backward FLOPs of one sequence.

    `keep` is the per-layer keep probability (expected FLOPs under PLD), the realized
    0/1 gates of one step, or a LayerRuns; None means full depth.
    """
    f = forward_flops(config, seq_len, num_predictions, sparse_outputs)
    return TRAINING_MULTIPLIER * (f.outside_encoder + f.encoder_run(_layer_runs(config, keep)))


def encoder_flops_skipped_fraction(config, seq_len: int, num_predictions: int, keep) -> float:
    """Fraction of the full-depth encoder FLOPs that PLD did not compute, for keep
    probabilities, 0/1 gates or a LayerRuns."""
    f = forward_flops(config, seq_len, num_predictions)
    return 1.0 - f.encoder_run(_layer_runs(config, keep)) / f.encoder


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
