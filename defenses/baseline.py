"""``baseline``: plain cross-entropy training (no defense)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pdm_bench.defenses.base import Defense, TrainContext
from pdm_bench.defenses.losses import cross_entropy


@dataclass(frozen=True, kw_only=True)
class Baseline(Defense):
    name = "baseline"
    description = "cross-entropy training (the paper's CE column)"

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, context: TrainContext) -> torch.Tensor:
        _, z = model.embed_and_logits(x)
        return cross_entropy(z, y)
