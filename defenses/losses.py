"""The loss terms of Sections 3.1-3.3 and Algorithm 1, on tensors (hand-checked in tests/test_losses.py)."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from pdm_bench.defense import ClassGroups


def cross_entropy(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits ``z`` against labels ``y``."""
    return F.cross_entropy(z, y)


def reverse_cross_entropy(z: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Pang et al.'s RCE: cross-entropy against R (0 on the true class, 1/(K-1) elsewhere), mean over the batch."""
    reverse = (1.0 - F.one_hot(y, num_classes).to(z.dtype)) / (num_classes - 1)
    return -(reverse * F.log_softmax(z, dim=1)).sum(dim=1).mean()


def siamese_loss(z1: torch.Tensor, z2: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """Algorithm 1, line 17: mean |cos(z1, z2) - s| with s = 1 for same-class pairs, 0 otherwise."""
    return (F.cosine_similarity(z1, z2, dim=1, eps=1e-8) - same.to(z1.dtype)).abs().mean()


def reduce_variance_loss(z: torch.Tensor, y: torch.Tensor, num_classes: int, *, reduction: str = "mean") -> torch.Tensor:
    """Eq. 5: sigma_c = mean_i ||z_i - mu_c||_2 per class in the batch; mean (Eq. 5) or sum (Algorithm 1) over them."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"expected reduction 'mean' or 'sum', got {reduction!r}")
    onehot = F.one_hot(y, num_classes).to(z.dtype)  # (B, K)
    counts = onehot.sum(dim=0)
    present = counts > 0
    centroids = (onehot.T @ z) / counts.clamp(min=1).unsqueeze(1)
    distances = _safe_norm(z - centroids[y])
    sigma = (onehot.T @ distances) / counts.clamp(min=1)
    return sigma[present].mean() if reduction == "mean" else sigma[present].sum()


def _safe_norm(v: torch.Tensor) -> torch.Tensor:
    """Row norms with a zero (not NaN) gradient at the zero vector (a class seen once in a batch)."""
    squared = (v * v).sum(dim=1)
    nonzero = squared > 0
    return torch.where(nonzero, squared.clamp(min=1e-30).sqrt(), torch.zeros_like(squared))


def sample_partners_in_batch(y: torch.Tensor, q: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """For each sample, a partner index in the batch: same class with probability ``q`` (s=1), else another class.

    A different-class partner is drawn class-first (a random other class present in the batch, then a member),
    as in Algorithm 1. When the wanted kind does not exist in the batch, the other kind is used (s says which).
    """
    n = y.shape[0]
    same_class = y.unsqueeze(0) == y.unsqueeze(1)
    not_self = ~torch.eye(n, dtype=torch.bool, device=y.device)
    same_weights = (same_class & not_self).float()
    counts = same_class.sum(dim=0).float()  # members of each sample's class
    diff_weights = (~same_class).float() / counts.unsqueeze(0)  # class-first: each other class equally likely
    want_same = torch.rand(n, generator=generator, device="cpu").to(y.device) < q
    has_same = same_weights.sum(dim=1) > 0
    has_diff = diff_weights.sum(dim=1) > 0
    use_same = (want_same & has_same) | ~has_diff
    weights = torch.where(use_same.unsqueeze(1), same_weights, diff_weights)
    weights = torch.where(weights.sum(dim=1, keepdim=True) > 0, weights, (~not_self).float())  # lone sample: itself
    partners = torch.multinomial(weights.cpu(), 1, generator=generator).flatten().to(y.device)
    return partners, (y[partners] == y).long()


def sample_partners_from_dataset(
    y: torch.Tensor, q: float, class_groups: ClassGroups, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1 literally: a partner drawn from the whole training set (indices into it) and the labels s."""
    num_classes = class_groups.sizes.shape[0]
    y_cpu = y.cpu()
    same = torch.rand(y_cpu.shape[0], generator=generator) < q
    offset = torch.randint(1, num_classes, y_cpu.shape, generator=generator)
    partner_class = torch.where(same, y_cpu, (y_cpu + offset) % num_classes)
    picks = (torch.rand(y_cpu.shape[0], generator=generator) * class_groups.sizes[partner_class]).long()
    partners = class_groups.order[class_groups.starts[partner_class] + picks]
    return partners, same.long()
