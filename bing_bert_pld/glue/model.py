"""The fine-tuning model: BertModel, dropout, one linear layer on the pooled [CLS] output.

Classification tasks train with cross-entropy over `num_outputs` classes; STS-B
(`num_outputs == 1`) regresses the score with mean squared error, as BERT did. The
encoder runs full depth: no layer gates are passed, so PLD plays no part here. Only
the pooled [CLS] vector is read, so the last block runs for [CLS] alone (no output
positions requested); every earlier block runs for every token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import BertConfig
from ..model import BertForPreTraining, BertModel
from ..run.pretrained import Pretrained, load_strict
from .data import GlueBatch


@dataclass
class ClassifierOutput:
    loss: torch.Tensor
    logits: torch.Tensor  # (B, num_outputs)


class BertForSequenceClassification(nn.Module):
    def __init__(self, config: BertConfig, num_outputs: int):
        super().__init__()
        self.config = config
        self.num_outputs = num_outputs
        self.bert = BertModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, num_outputs)
        nn.init.normal_(self.classifier.weight, std=config.initializer_range)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, batch: GlueBatch) -> ClassifierOutput:
        no_positions = batch.input_ids.new_zeros(batch.input_ids.shape[0], 0)
        _, pooled = self.bert(batch.input_ids, batch.segment_ids, batch.input_mask,
                              output_positions=no_positions)  # (B, H)
        logits = self.classifier(self.dropout(pooled)).float()  # (B, num_outputs)
        if self.num_outputs == 1:
            loss = F.mse_loss(logits[:, 0], batch.labels.float())
        else:
            loss = F.cross_entropy(logits, batch.labels)
        return ClassifierOutput(loss=loss, logits=logits)

    @classmethod
    def from_pretrained(cls, pretrained: Pretrained, num_outputs: int,
                        config: Optional[BertConfig] = None) -> "BertForSequenceClassification":
        """The encoder from a pretraining state dict, loaded strictly into a model built
        from `config` (default: the checkpoint's own); the head starts fresh."""
        config = config or pretrained.config
        full = BertForPreTraining(config)
        load_strict(full, pretrained.state_dict, pretrained.source)
        model = cls(config, num_outputs)
        model.bert.load_state_dict(full.bert.state_dict(), strict=True)
        return model
