"""The logistic regression that Ma et al. (LID) and Lee et al. (Mahalanobis) put on a detector's per-layer scores,
trained on one attack's adversarial examples against clean and noisy ones; in torch, so the white box
differentiates through it."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LogisticHead:
    """``decision(scores)``: the log-odds that a row of per-layer scores is adversarial, after standardising each
    layer's score by the training rows' mean and standard deviation (as Ma et al.'s scaler did). ``penalty``: the L2
    weight on the coefficients (scikit-learn's ``1 / C`` per row)."""

    mean: torch.Tensor
    scale: torch.Tensor
    weights: torch.Tensor
    bias: torch.Tensor

    @classmethod
    def fit(cls, scores: torch.Tensor, adversarial: torch.Tensor, *, penalty: float = 1e-3,
            iterations: int = 200) -> LogisticHead:
        """Fit on ``scores`` (M, L) with ``adversarial`` (M,) booleans; L-BFGS on the mean log-loss, float64."""
        if adversarial.all() or not adversarial.any():
            raise ValueError("the logistic head needs both adversarial and normal rows")
        x = scores.detach().to(torch.float64)
        target = adversarial.to(torch.float64)
        mean, scale = x.mean(dim=0), x.std(dim=0).clamp(min=1e-12)
        z = (x - mean) / scale
        weights = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
        bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
        optimiser = torch.optim.LBFGS([weights, bias], max_iter=iterations, line_search_fn="strong_wolfe",
                                      tolerance_grad=1e-10, tolerance_change=1e-12)

        def loss() -> torch.Tensor:
            optimiser.zero_grad()
            value = torch.nn.functional.binary_cross_entropy_with_logits(z @ weights + bias, target) \
                + 0.5 * penalty * weights.square().sum()
            value.backward()
            return value

        optimiser.step(loss)
        return cls(mean.float(), scale.float(), weights.detach().float(), bias.detach().float())

    def decision(self, scores: torch.Tensor) -> torch.Tensor:
        """(N,) log-odds of 'adversarial' for each row of ``scores`` (N, L); differentiable in ``scores``."""
        device = scores.device
        z = (scores - self.mean.to(device)) / self.scale.to(device)
        return z @ self.weights.to(device) + self.bias.to(device)
