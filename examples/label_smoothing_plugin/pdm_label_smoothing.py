"""An example pdm-bench defense plugin: cross-entropy with label smoothing (Szegedy et al. 2016)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from pdm_bench.defenses.base import Defense, TrainContext


@dataclass(frozen=True, kw_only=True)
class LabelSmoothing(Defense):
    """Cross-entropy against labels smoothed by ``smoothing`` (0 = plain cross-entropy)."""

    name = "label_smoothing"
    description = "cross-entropy with label smoothing (example plugin)"

    smoothing: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {self.smoothing}")

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, context: TrainContext) -> torch.Tensor:
        _, logits = model.embed_and_logits(x)
        return F.cross_entropy(logits, y, label_smoothing=self.smoothing)
