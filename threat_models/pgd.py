"""PGD against a classifier and its detector, batched in torch, as an ART ``EvasionAttack`` with ART's
``ProjectedGradientDescent`` parameters first, in its order (Madry et al. 2018; ``decay``, ``random_eps`` and
``summary_writer`` only at their defaults).

``mode`` chooses what the steps follow:

- ``classifier``: plain PGD on the C&W margin of the classifier alone (the reference: what the detector adds);
- ``combined``: the margin plus ``detector_weight`` times the detector's shortfall below ``threshold`` (Carlini and
  Wagner 2017; Tramer et al. 2020), under the class the attack is heading for;
- ``orthogonal``: Bryniarski et al. 2022's orthogonal PGD: while the model is right, the margin's gradient made
  orthogonal to the shortfall's; once it is fooled but the detector still rejects, the reverse;
- ``selective``: the same two phases without the projection (their selective PGD).

An image evades when the model misclassifies it (or, targeted, predicts the target) and the detector's score under
the predicted class is at least ``threshold``. Each image's result is its best iterate over all steps and random
starts: evading first, then fooling the model with the highest score, then the last one; images that evade stop
being computed. Plain PGD (``classifier``) runs every step and returns the last iterate that fools the model, as
ART's does: stopping at the first one would leave images just past the boundary, where a density detector catches
them (measured in docs/PERFORMANCE.md).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
from art.attacks.attack import EvasionAttack
from art.estimators.classification.classifier import ClassGradientsMixin
from art.estimators.estimator import BaseEstimator
from tqdm.auto import tqdm

from pdm_bench.threat_models.art_compat import bounds_on, class_labels, data_bounds
from pdm_bench.threat_models.cw_kde import DensityScore
from pdm_bench.threat_models.estimator_paths import estimator_path

Mode = Literal["classifier", "combined", "orthogonal", "selective"]
MODES: tuple[str, ...] = ("classifier", "combined", "orthogonal", "selective")
# ProjectedGradientDescent.attack_params of ART 1.20, in its order.
PGD_PARAMS = ["norm", "eps", "eps_step", "decay", "targeted", "num_random_init", "batch_size", "max_iter", "random_eps",
              "summary_writer", "verbose"]


class DetectorPGD(EvasionAttack):
    """PGD under an L-inf or L2 bound against the classifier and, in every mode but ``classifier``, its detector.

    ``detector`` is a differentiable score of the embedding under a class (the KDE's log-density; higher: normal)
    and ``threshold`` its rejection threshold; ``score_scale`` divides the shortfall so that ``detector_weight``
    means the same for every detector (e.g. the spread of clean scores). ``loss``: the classifier term, the C&W
    margin (default; it stops pulling once the model is fooled) or ART's cross-entropy. ``seed`` seeds the random
    starts.
    """

    attack_params = EvasionAttack.attack_params + PGD_PARAMS + ["mode", "detector_weight", "threshold", "score_scale", "loss"]
    _estimator_requirements = (BaseEstimator, ClassGradientsMixin)

    def __init__(self, estimator: Any, norm: int | float | str = np.inf, eps: float = 0.3, eps_step: float = 0.1,
                 decay: float | None = None, max_iter: int = 100, targeted: bool = False, num_random_init: int = 0,
                 batch_size: int = 32, random_eps: bool = False, summary_writer: Any = False, verbose: bool = True, *,
                 mode: Mode = "classifier", detector: DensityScore | None = None, threshold: float = -math.inf,
                 detector_weight: float = 1.0, score_scale: float = 1.0, loss: str = "margin", seed: int = 0) -> None:
        if decay is not None or random_eps or summary_writer:
            raise ValueError("decay, random_eps and summary_writer (ART's momentum, eps sampling and TensorBoard) are "
                             "not supported: use ART's ProjectedGradientDescent for them")
        super().__init__(estimator=estimator)
        self.norm, self.eps, self.eps_step, self.max_iter = norm, eps, eps_step, max_iter
        self._targeted, self.num_random_init, self.batch_size, self.verbose = targeted, num_random_init, batch_size, verbose
        self.decay, self.random_eps = decay, random_eps
        self.mode, self.detector, self.threshold = mode, detector, threshold
        self.detector_weight, self.score_scale, self.loss, self.seed = detector_weight, score_scale, loss, seed
        self._check_params()

    def _check_params(self) -> None:
        if self.decay is not None or self.random_eps:
            raise ValueError("decay and random_eps (ART's momentum and eps sampling) are not supported: use ART's "
                             "ProjectedGradientDescent for them")
        if self.norm not in (np.inf, "inf", 2):
            raise ValueError(f"expected norm inf or 2, got {self.norm!r}")
        for name in ("eps", "eps_step", "score_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
                raise ValueError(f"expected a positive {name}, got {value!r}")
        for name, lowest in (("max_iter", 0), ("num_random_init", 0), ("batch_size", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
                raise ValueError(f"expected an integer {name} >= {lowest}, got {value!r}")
        if self.loss not in ("margin", "cross_entropy"):
            raise ValueError(f"expected loss margin or cross_entropy, got {self.loss!r}")
        if self.mode not in MODES:
            raise ValueError(f"expected mode one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode != "classifier" and self.detector is None:
            raise ValueError(f"mode {self.mode!r} attacks the detector: expected a detector, got None")
        if not isinstance(self.verbose, bool):
            raise ValueError(f"expected verbose a bool, got {self.verbose!r}")

    @property
    def linf(self) -> bool:
        return self.norm in (np.inf, "inf")

    def generate(self, x: np.ndarray, y: np.ndarray | None = None, **kwargs: object) -> np.ndarray:
        """Adversarial examples for ``x``; ``y``: true labels (default: predictions) or, targeted, the targets."""
        self._path = estimator_path(self.estimator, frozen=True)
        if self.detector is not None and not hasattr(self._path.module, "embed_and_logits"):
            raise TypeError("PGD against a detector needs an ART PyTorchClassifier whose module gives embeddings "
                            f"(embed_and_logits, see pdm_bench.contract.wrap); got {type(self.estimator).__name__}")
        labels = class_labels(self, x, y)
        self._bounds = bounds_on(data_bounds(self.estimator, x), self._path.device)
        generator = torch.Generator().manual_seed(self.seed)
        out = np.empty_like(x, dtype=np.float32)
        for lo in tqdm(range(0, len(x), self.batch_size), desc=f"PGD ({self.mode})", unit="batch",
                       disable=not self.verbose, leave=False, dynamic_ncols=True):
            hi = lo + self.batch_size
            out[lo:hi] = self._attack_batch(torch.as_tensor(x[lo:hi], dtype=torch.float32, device=self._path.device),
                                            torch.as_tensor(labels[lo:hi], device=self._path.device), generator).cpu().numpy()
        return out

    def _outputs(self, x_adv: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The margin (<= 0: the goal met), the detector's shortfall under the class aimed at, and the logits."""
        if self.detector is None:
            logits = self._path.logits(x_adv)
        else:
            embedding, raw = self._path.module.embed_and_logits(self._path.preprocess(x_adv))  # type: ignore[union-attr]
            logits = raw * self._path.module.logit_sign  # type: ignore[union-attr]
        rows = torch.arange(len(labels), device=labels.device)
        others = logits.clone()
        others[rows, labels] = -math.inf
        if self.targeted:
            aimed = labels
            margin = others.max(dim=1).values - logits[rows, labels]
        else:
            aimed = others.argmax(dim=1)
            margin = logits[rows, labels] - others.max(dim=1).values
        if self.detector is None:
            return margin, torch.zeros_like(margin), logits
        shortfall = torch.clamp(self.threshold - self.detector.log_density(embedding, aimed), min=0.0) / self.score_scale
        return margin, shortfall, logits

    def _direction(self, x_adv: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The step's direction (descent) at ``x_adv``, and there the margin and the shortfall (detached)."""
        x_adv = x_adv.detach().requires_grad_(True)
        margin, shortfall, logits = self._outputs(x_adv, labels)
        fooled = (margin <= 0).detach()  # a tie goes to the attacker
        if self.loss == "cross_entropy":  # ART's PGD's loss: descend on the target's, ascend on the true label's
            sign = 1.0 if self.targeted else -1.0
            fool_loss = sign * torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
        else:
            fool_loss = torch.clamp(margin, min=0.0).sum()
        if self.mode == "classifier":
            (grad,) = torch.autograd.grad(fool_loss, x_adv)
        elif self.mode == "combined":
            (grad,) = torch.autograd.grad(fool_loss + self.detector_weight * shortfall.sum(), x_adv)
        else:
            g_fool, g_detect = torch.autograd.grad(fool_loss, x_adv, retain_graph=True)[0], \
                torch.autograd.grad(shortfall.sum(), x_adv)[0]
            grad = torch.where(_rows(fooled, x_adv), g_detect, g_fool)  # the constraint still violated
            if self.mode == "orthogonal":
                grad = grad - _project(grad, torch.where(_rows(fooled, x_adv), g_fool, g_detect))
        return grad, margin.detach(), shortfall.detach()

    def _attack_batch(self, x: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        low, high = self._bounds
        best = x.clone()
        rank = torch.full((len(x),), -math.inf, device=x.device)
        for _ in range(max(1, self.num_random_init)):
            x_adv = x.clone()
            if self.num_random_init:
                x_adv = self._clip(x + self._random_start(x, generator), x, low, high)
            for step in range(self.max_iter + 1):
                todo = torch.nonzero(rank < EVADES).flatten() if self.detector is not None else torch.arange(len(x))
                if not len(todo):
                    break
                grad, margin, shortfall = self._direction(x_adv[todo], labels[todo])
                with torch.no_grad():
                    score = _rank(margin, shortfall)
                    better = score > rank[todo] if self.detector is not None else score >= rank[todo]
                    rank[todo[better]] = score[better]
                    best[todo[better]] = x_adv[todo[better]]
                    if step == self.max_iter:
                        break
                    x_adv[todo] = self._clip(x_adv[todo] - self._step(grad), x[todo], low, high)
        return best

    def _random_start(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = torch.rand(x.shape, generator=generator).to(x.device) * 2 - 1
        if self.linf:
            return noise * self.eps
        flat = torch.randn(x.shape, generator=generator).to(x.device).flatten(1)
        radius = torch.rand(len(x), 1, generator=generator).to(x.device) ** (1.0 / flat.shape[1])
        return (flat / flat.norm(dim=1, keepdim=True).clamp(min=1e-12) * radius * self.eps).view_as(x)

    def _step(self, grad: torch.Tensor) -> torch.Tensor:
        if self.linf:
            return self.eps_step * grad.sign()
        norms = grad.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, *([1] * (grad.dim() - 1)))
        return self.eps_step * grad / norms

    def _clip(self, x_adv: torch.Tensor, x: torch.Tensor, low: Any, high: Any) -> torch.Tensor:
        """Project into the eps-ball around ``x``, then into the data's bounds."""
        delta = x_adv - x
        if self.linf:
            delta = delta.clamp(-self.eps, self.eps)
        else:
            norms = delta.flatten(1).norm(dim=1).view(-1, *([1] * (delta.dim() - 1)))
            delta = delta * torch.clamp(self.eps / norms.clamp(min=1e-12), max=1.0)
        return torch.max(torch.min(x + delta, torch.as_tensor(high, device=x.device)), torch.as_tensor(low, device=x.device))


EVADES = 2.0  # the rank of an iterate that evades; one that fools the model ranks in [1, 2), any other below 0


def _rank(margin: torch.Tensor, shortfall: torch.Tensor) -> torch.Tensor:
    """How far an iterate got: it evades (no margin and no shortfall left), else it fools the model (higher: less
    shortfall), else higher as the margin shrinks."""
    fooled = margin <= 0
    return torch.where(fooled & (shortfall <= 0), torch.full_like(margin, EVADES),
                       torch.where(fooled, 2.0 - torch.tanh(shortfall).clamp(min=1e-6), -torch.tanh(margin) - 1e-6))


def _rows(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))


def _project(v: torch.Tensor, onto: torch.Tensor) -> torch.Tensor:
    """Per image, the component of ``v`` along ``onto`` (zero where ``onto`` is zero)."""
    flat_v, flat_o = v.flatten(1), onto.flatten(1)
    coefficient = (flat_v * flat_o).sum(dim=1) / (flat_o * flat_o).sum(dim=1).clamp(min=1e-30)
    return (coefficient.unsqueeze(1) * flat_o).view_as(v)
