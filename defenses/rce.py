"""``rce``: reverse cross-entropy (Pang et al. 2018); the classifier predicts with the negated logits."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pdm_bench.defenses.base import Defense, TrainContext
from pdm_bench.defenses.losses import reverse_cross_entropy


@dataclass(frozen=True, kw_only=True)
class ReverseCrossEntropy(Defense):
    name = "rce"
    description = "reverse cross-entropy (Pang et al. 2018); predicts with softmax(-z)"
    negate_logits = True

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, context: TrainContext) -> torch.Tensor:
        _, z = model.embed_and_logits(x)
        return reverse_cross_entropy(z, y, context.num_classes)
