"""A BERT encoder whose blocks can be skipped: Pre-LN (default) or Post-LN, with PLD.

Design choices:
- Parameter names follow Hugging Face's BERT layout, so HF checkpoints load with
  `load_state_dict` and export to transformers is a rename, not a rewrite.
- One encoder for both variants: `pre_layer_norm` picks where each LayerNorm sits.
  In Pre-LN, `attention.output.LayerNorm` normalizes the block input before attention
  and `output.LayerNorm` the feed-forward input; a final LayerNorm closes the encoder.
- Progressive Layer Dropping: `forward(..., layer_gates=LayerGates)` in training mode.
  A dropped block is never called (no compute), a kept block scales both branch
  outputs by 1/p_i. In eval mode gates are ignored: every block runs, unscaled.
- Attention through scaled_dot_product_attention. A micro-batch with no padding (the
  loader knows, `PretrainingBatch.has_padding`) attends with no mask at all: on CUDA,
  FlashAttention takes no mask, so a mask would rule it out. A padded one gets a boolean
  padding mask. Both are exact (an all-True mask changes no score); benchmarks/README.md
  has the measurements behind the choice.
- Sparse MLM head: only the masked positions go through the transform and the
  decoder (tied to the word embeddings).
- Sparse last layer: the heads read [CLS] and the masked positions only, so the last
  block that runs computes its keys and values for every token but its queries,
  attention output and feed-forward for those positions alone (`output_positions`).
  Each token's output depends on its own query and everyone's keys and values, so the
  result is the same as running the block dense and gathering afterwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .batch import PretrainingBatch
from .config import BertConfig
from .layer_norm import make_layer_norm
from .pld import LayerGates


@dataclass
class PretrainingOutput:
    loss: torch.Tensor  # mlm_loss + nsp_loss, what backward() sees
    mlm_loss: torch.Tensor
    nsp_loss: torch.Tensor
    mlm_correct: torch.Tensor  # counts, detached, for accuracy over many batches
    mlm_count: torch.Tensor
    nsp_correct: torch.Tensor
    nsp_count: torch.Tensor


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size,
                                            padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings,
                                                config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = make_layer_norm(config.hidden_size, config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
        seq_len = input_ids.shape[1]
        positions = torch.arange(seq_len, device=input_ids.device)
        x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
             + self.token_type_embeddings(segment_ids))  # (B, T, H)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq_len, _ = x.shape
        return x.view(batch, seq_len, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)

    def forward(self, x: torch.Tensor, attention_mask: Optional[torch.Tensor],
                queries: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (B, T, H) gives keys and values; queries (B, Q, H) default to x.
        attention_mask (B, 1, 1, T), True = may attend; None = every key is a token."""
        queries = x if queries is None else queries
        q = self._heads(self.query(queries))
        k, v = self._heads(self.key(x)), self._heads(self.value(x))
        context = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attention_mask,
            dropout_p=self.dropout_p if self.training else 0.0)  # (B, nh, Q, hd)
        batch, _, num_queries, _ = context.shape
        return context.transpose(1, 2).reshape(batch, num_queries, -1)  # (B, Q, H)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = _Projection(config.hidden_size, config.hidden_size, config)


class _Projection(nn.Module):
    """dense -> dropout, plus the LayerNorm that belongs to this sublayer (HF's layout)."""

    def __init__(self, in_features: int, out_features: int, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(in_features, out_features)
        self.LayerNorm = make_layer_norm(config.hidden_size, config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense(x))


class _Intermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # (B, T, I)


def add_scaled(residual: torch.Tensor, branch: torch.Tensor, scale: float) -> torch.Tensor:
    """residual + scale * branch. Eager: torch.add's alpha scales inside the add, no extra
    pass for 1/p_i. Compiled: the compiler would specialize alpha to each value it sees (a
    recompile per 1/p_i, and theta changes every step, until the recompile limit sends the
    layer back to eager); as a multiply the scale stays an input of one graph, and the
    compiler fuses it into the add anyway."""
    if torch.compiler.is_compiling():
        return residual + branch * scale
    return torch.add(residual, branch, alpha=scale)


def gather_positions(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x (B, T, H), positions (B, Q) -> (B, Q, H): row b holds x[b, positions[b, q]]."""
    return torch.gather(x, 1, positions[:, :, None].expand(-1, -1, x.shape[-1]))


class BertLayer(nn.Module):
    """One switchable block: attention and feed-forward share a single gate."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.pre_layer_norm = config.pre_layer_norm
        self.attention = BertAttention(config)
        self.intermediate = _Intermediate(config)
        self.output = _Projection(config.intermediate_size, config.hidden_size, config)

    def forward(self, x: torch.Tensor, attention_mask: Optional[torch.Tensor],
                branch_scale: float = 1.0,
                output_positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (B, T, H) -> (B, T, H), or (B, Q, H) at `output_positions` (B, Q) only."""
        attn_norm = self.attention.output.LayerNorm
        ffn_norm = self.output.LayerNorm
        attention = self.attention.self
        sparse = output_positions is not None

        def rows(t: torch.Tensor) -> torch.Tensor:  # the rows this block outputs
            return gather_positions(t, output_positions) if sparse else t

        if self.pre_layer_norm:
            # h = x + G attn(LN(x)) / p ;  y = h + G ffn(LN(h)) / p
            normed = attn_norm(x)  # keys and values need every token
            attended = attention(normed, attention_mask, rows(normed) if sparse else None)
            h = add_scaled(rows(x), self.attention.output(attended), branch_scale)
            return add_scaled(h, self.output(self.intermediate(ffn_norm(h))), branch_scale)
        residual = rows(x)
        attended = attention(x, attention_mask, residual if sparse else None)
        h = attn_norm(add_scaled(residual, self.attention.output(attended), branch_scale))
        return ffn_norm(add_scaled(h, self.output(self.intermediate(h)), branch_scale))


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.activation_checkpointing = config.activation_checkpointing
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))
        # Pre-LN leaves the residual stream unnormalized; the paper closes it with one LN.
        self.final_layer_norm = (make_layer_norm(config.hidden_size, config.layer_norm_eps)
                                 if config.pre_layer_norm else None)

    def forward(self, x: torch.Tensor, attention_mask: Optional[torch.Tensor],
                layer_gates: Optional[LayerGates] = None,
                output_positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, T, H) -> (B, T, H), or (B, Q, H) at `output_positions` (B, Q) only: then
        the last block that runs is computed for those positions alone."""
        gated = self.training and layer_gates is not None
        if gated and len(layer_gates.keep) != len(self.layer):
            raise ValueError(f"{len(layer_gates.keep)} gates for {len(self.layer)} layers")
        running = [index for index in range(len(self.layer))
                   if not gated or layer_gates.keep[index]]  # a dropped block costs nothing
        for index in running:
            layer = self.layer[index]
            scale = layer_gates.scale(index) if gated else 1.0
            positions = output_positions if index == running[-1] else None
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, attention_mask, scale, positions, use_reentrant=False)
            else:
                x = layer(x, attention_mask, scale, positions)
        if output_positions is not None and not running:
            x = gather_positions(x, output_positions)  # every block dropped
        return self.final_layer_norm(x) if self.final_layer_norm is not None else x


class BertPooler(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, sequence_output: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(sequence_output[:, 0]))  # (B, H)


class BertModel(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)

    def forward(self, input_ids: torch.Tensor, segment_ids: torch.Tensor,
                input_mask: Optional[torch.Tensor], layer_gates: Optional[LayerGates] = None,
                output_positions: Optional[torch.Tensor] = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (sequence output, pooled [CLS] (B, H)). The sequence output is (B, T, H),
        or (B, Q, H) at `output_positions` (B, Q) when given: the last block then runs
        for [CLS] and those positions only (Q may be 0 when only the pooled output is used).
        input_mask (B, T), 1 = token; None when no position is padding (attention then
        runs without a mask)."""
        # True = may attend; broadcast over heads and query positions: (B, 1, 1, T).
        attention_mask = None if input_mask is None else input_mask.bool()[:, None, None, :]
        x = self.embeddings(input_ids, segment_ids)
        if output_positions is None:
            sequence_output = self.encoder(x, attention_mask, layer_gates)  # (B, T, H)
            return sequence_output, self.pooler(sequence_output)
        cls_position = output_positions.new_zeros(output_positions.shape[0], 1)
        selected = self.encoder(x, attention_mask, layer_gates,
                                torch.cat([cls_position, output_positions], dim=1))  # (B, 1+Q, H)
        return selected[:, 1:], self.pooler(selected)


class BertPredictionTransform(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = make_layer_norm(config.hidden_size, config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(x)))


class BertLMPredictionHead(nn.Module):
    """Decoder weights are the word embeddings (tied); only the bias is its own."""

    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.transform = BertPredictionTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.decoder.weight = word_embeddings.weight  # tied: one parameter, two names
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, masked_hidden: torch.Tensor) -> torch.Tensor:
        # The bias rides in the same addmm as the product.
        return F.linear(self.transform(masked_hidden), self.decoder.weight, self.bias)


class BertPreTrainingHeads(nn.Module):
    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.predictions = BertLMPredictionHead(config, word_embeddings)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)


class BertForPreTraining(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.cls = BertPreTrainingHeads(config, self.bert.embeddings.word_embeddings)
        init_weights(self, config)
        # Set by forward: the gates this call used. The PLD hook checks it, so a model
        # that drops the gates on the floor stops training instead of running full depth.
        self.consumed_layer_gates: Optional[LayerGates] = None

    def forward(self, batch: PretrainingBatch,
                layer_gates: Optional[LayerGates] = None) -> PretrainingOutput:
        self.consumed_layer_gates = layer_gates if self.training else None
        # Sparse prediction: the encoder's last block and the MLM head see the masked
        # positions only. Padding slots hold position 0 ([CLS]): computed, then dropped.
        positions = batch.masked_lm_positions  # (B, P)
        # No padding in this micro-batch (read on the CPU when it was built): no mask, so
        # SDPA may take FlashAttention. Unknown (None) or padded: the boolean mask.
        input_mask = None if batch.has_padding is False else batch.input_mask
        at_positions, pooled = self.bert(batch.input_ids, batch.segment_ids, input_mask,
                                         layer_gates, output_positions=positions)  # (B, P, H)
        is_masked = positions != 0
        masked_hidden = at_positions[is_masked]  # (M, H)
        mlm_logits = self.cls.predictions(masked_hidden)  # (M, V)
        mlm_labels = batch.masked_lm_ids[is_masked]
        mlm_count = mlm_labels.numel()
        mlm_loss = F.cross_entropy(mlm_logits.float(), mlm_labels, reduction="sum") / max(mlm_count, 1)

        nsp_logits = self.cls.seq_relationship(pooled)  # (B, 2)
        nsp_labels = batch.next_sentence_labels
        nsp_loss = F.cross_entropy(nsp_logits.float(), nsp_labels)
        with torch.no_grad():
            mlm_correct = (mlm_logits.argmax(-1) == mlm_labels).sum()
            nsp_correct = (nsp_logits.argmax(-1) == nsp_labels).sum()
        return PretrainingOutput(
            loss=mlm_loss + nsp_loss, mlm_loss=mlm_loss, nsp_loss=nsp_loss,
            mlm_correct=mlm_correct, mlm_count=mlm_labels.new_tensor(mlm_count),
            nsp_correct=nsp_correct, nsp_count=nsp_labels.new_tensor(nsp_labels.numel()))


# Graphs one layer's code needs: dense or sparse (the last block that runs), with a mask
# or without, training or evaluation, the scale fixed at 1.0 or dynamic: 16, which the
# layers share (they run the same code). Past torch's default limit of 8 the rest would
# run eager, with only a warning.
COMPILED_LAYER_RECOMPILE_LIMIT = 32


def compile_layers_separately(layers: nn.ModuleList, backend: str = "inductor") -> None:
    """torch.compile each encoder layer on its own: the encoder's Python loop still
    decides which layers run, so a dropped layer stays free; 1/p_i is a float argument
    that the compiler treats as dynamic after it first changes (see add_scaled), not a
    recompile per value."""
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit,
                                        COMPILED_LAYER_RECOMPILE_LIMIT)
    for layer in layers:
        layer.compile(backend=backend)


def init_weights(model: nn.Module, config: BertConfig) -> None:
    """BERT's initialization, plus the Pre-LN residual scaling of DeepSpeedExamples'
    Pre-LN model (bing_bert/nvidia/modelingpreln.py, `init_bert_weights`).

    Every Linear and Embedding weight ~ N(0, initializer_range), biases zero, LayerNorm
    identity. In Pre-LN the two projections that write into the residual stream,
    `attention.output.dense` and `output.dense` of each layer, get
    N(0, initializer_range / sqrt(2 * num_hidden_layers)): the stream sums 2L branch
    outputs that no LayerNorm rescales, so each starts smaller ("accounting for
    accumulation on the residual path"). Post-LN normalizes after every sum and keeps
    original BERT's single std. (The upstream file's intermediate, pooler and MLM
    transform layers are a custom class its init skips, so they keep PyTorch's default
    uniform init, std 1 / sqrt(3 fan_in): 0.0208 at hidden 768. We give them N(0, 0.02).)
    """
    std = config.initializer_range
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif hasattr(module, "weight") and hasattr(module, "bias") and "LayerNorm" in type(module).__name__:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    if config.pre_layer_norm:
        residual_std = std / math.sqrt(2.0 * config.num_hidden_layers)
        for layer in model.modules():
            if isinstance(layer, BertLayer):
                nn.init.normal_(layer.attention.output.dense.weight, std=residual_std)
                nn.init.normal_(layer.output.dense.weight, std=residual_std)
