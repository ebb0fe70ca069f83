"""``pdm``: penetration distortion maximisation = RCE on both Siamese branches + Siamese loss + RVL (Algorithm 1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pdm_bench.defenses.losses import reverse_cross_entropy
from pdm_bench.defenses.siamese_rvl import SiameseRVL


@dataclass(frozen=True, kw_only=True)
class PDM(SiameseRVL):
    """Algorithm 1 of the paper; the options are :class:`SiameseRVL`'s, with RCE as the classification loss."""

    name = "pdm"
    description = "PDM (the paper): RCE(p1) + RCE(p2) + Siamese loss + RVL; predicts with softmax(-z)"
    negate_logits = True

    def classification_loss(self, z: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        return reverse_cross_entropy(z, y, num_classes)
