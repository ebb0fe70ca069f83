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

``schedule``: ``constant`` steps of ``eps_step`` (Madry et al.), or ``apgd``, Croce and Hein 2020's step-size rule
for the attacks on the detector: each image starts at a step of 2 eps with momentum 0.75 and halves its step at
checkpoints where its loss (the margin plus the weighted shortfall) fell in fewer than 3/4 of the steps since the last
one, or neither the step nor its best loss changed since; a halving restarts it from its best point. ``eps_step`` is
unused there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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
SCHEDULES: tuple[str, ...] = ("constant", "apgd")
MOMENTUM, RISING = 0.75, 0.75  # APGD's momentum and its share of steps that must lower the loss between checkpoints
# ProjectedGradientDescent.attack_params of ART 1.20, in its order.
PGD_PARAMS = ["norm", "eps", "eps_step", "decay", "targeted", "num_random_init", "batch_size", "max_iter", "random_eps",
              "summary_writer", "verbose"]


class DetectorPGD(EvasionAttack):
    """PGD under an L-inf or L2 bound against the classifier and, in every mode but ``classifier``, its detector.

    ``detector`` is a differentiable score of the embedding under a class (the KDE's log-density; higher: normal)
    and ``threshold`` its rejection threshold; ``score_scale`` divides the shortfall so that ``detector_weight``
    means the same for every detector (e.g. the spread of clean scores). ``loss``: the classifier term, the C&W
    margin (default; it stops pulling once the model is fooled) or ART's cross-entropy. ``schedule``: ``constant``
    steps of ``eps_step`` or ``apgd`` (the module's docstring). ``seed`` seeds the random starts.
    """

    attack_params = EvasionAttack.attack_params + PGD_PARAMS + ["mode", "detector_weight", "threshold", "score_scale", "loss",
                                                               "schedule"]
    _estimator_requirements = (BaseEstimator, ClassGradientsMixin)

    def __init__(self, estimator: Any, norm: int | float | str = np.inf, eps: float = 0.3, eps_step: float = 0.1,
                 decay: float | None = None, max_iter: int = 100, targeted: bool = False, num_random_init: int = 0,
                 batch_size: int = 32, random_eps: bool = False, summary_writer: Any = False, verbose: bool = True, *,
                 mode: Mode = "classifier", detector: DensityScore | None = None, threshold: float = -math.inf,
                 detector_weight: float = 1.0, score_scale: float = 1.0, loss: str = "margin", schedule: str = "constant",
                 seed: int = 0) -> None:
        if decay is not None or random_eps or summary_writer:
            raise ValueError("decay, random_eps and summary_writer (ART's momentum, eps sampling and TensorBoard) are "
                             "not supported: use ART's ProjectedGradientDescent for them")
        super().__init__(estimator=estimator)
        self.norm, self.eps, self.eps_step, self.max_iter = norm, eps, eps_step, max_iter
        self._targeted, self.num_random_init, self.batch_size, self.verbose = targeted, num_random_init, batch_size, verbose
        self.decay, self.random_eps = decay, random_eps
        self.mode, self.detector, self.threshold = mode, detector, threshold
        self.detector_weight, self.score_scale, self.loss, self.seed = detector_weight, score_scale, loss, seed
        self.schedule = schedule
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
        if self.schedule not in SCHEDULES:
            raise ValueError(f"expected schedule one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.schedule == "apgd" and self.mode == "classifier":
            raise ValueError("schedule 'apgd' is for the attacks on the detector; plain PGD (mode 'classifier') runs "
                             "ART's constant steps")
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
            if self.schedule == "apgd":
                self._apgd_run(x, x_adv, labels, best, rank)
                continue
            for step in range(self.max_iter + 1):
                todo = torch.nonzero(rank < EVADES).flatten() if self.detector is not None else torch.arange(len(x))
                if not len(todo):
                    break
                grad, margin, shortfall = self._direction(x_adv[todo], labels[todo])
                with torch.no_grad():
                    self._keep_best(todo, x_adv, margin, shortfall, best, rank)
                    if step == self.max_iter:
                        break
                    x_adv[todo] = self._clip(x_adv[todo] - self._step(grad), x[todo], low, high)
        return best

    def _keep_best(self, todo: torch.Tensor, x_adv: torch.Tensor, margin: torch.Tensor, shortfall: torch.Tensor,
                   best: torch.Tensor, rank: torch.Tensor) -> None:
        """Keep the iterates of ``todo`` that rank above their best so far (plain PGD: at or above, so the last
        iterate that fools the model wins)."""
        score = _rank(margin, shortfall)
        better = score > rank[todo] if self.detector is not None else score >= rank[todo]
        rank[todo[better]] = score[better]
        best[todo[better]] = x_adv[todo[better]]

    def _apgd_run(self, x: torch.Tensor, x_adv: torch.Tensor, labels: torch.Tensor, best: torch.Tensor,
                  rank: torch.Tensor) -> None:
        """One start of APGD's schedule from ``x_adv``, updating ``best`` and ``rank`` in place (per image, as the
        constant schedule does); images that evade stop being computed."""
        low, high = self._bounds
        state = _ApgdState.start(x_adv, 2.0 * self.eps)
        checkpoints, last_check = apgd_checkpoints(self.max_iter), 0
        for step in range(self.max_iter + 1):
            todo = torch.nonzero(rank < EVADES).flatten()
            if not len(todo):
                break
            grad, margin, shortfall = self._direction(x_adv[todo], labels[todo])
            with torch.no_grad():
                self._keep_best(todo, x_adv, margin, shortfall, best, rank)
                loss = torch.clamp(margin, min=0.0) + (self.detector_weight if self.mode == "combined" else 1.0) * shortfall
                state.record(todo, loss, x_adv[todo], grad, counted=step > 0)
                if step == self.max_iter:
                    break
                if step in checkpoints:
                    grad = state.checkpoint(todo, grad, x_adv, RISING * (step - last_check))
                    last_check = step
                here = x_adv[todo]
                z = self._clip(here - self._step(grad, state.eta[todo]), x[todo], low, high)
                if step:
                    z = self._clip(here + MOMENTUM * (z - here) + (1 - MOMENTUM) * (here - state.previous[todo]),
                                   x[todo], low, high)
                state.previous[todo] = here
                x_adv[todo] = z

    def _random_start(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = torch.rand(x.shape, generator=generator).to(x.device) * 2 - 1
        if self.linf:
            return noise * self.eps
        flat = torch.randn(x.shape, generator=generator).to(x.device).flatten(1)
        radius = torch.rand(len(x), 1, generator=generator).to(x.device) ** (1.0 / flat.shape[1])
        return (flat / flat.norm(dim=1, keepdim=True).clamp(min=1e-12) * radius * self.eps).view_as(x)

    def _step(self, grad: torch.Tensor, size: torch.Tensor | None = None) -> torch.Tensor:
        """The step down ``grad``: ``eps_step`` long, or per image ``size`` long."""
        length: Any = self.eps_step if size is None else _rows(size, grad)
        if self.linf:
            return length * grad.sign()
        norms = grad.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, *([1] * (grad.dim() - 1)))
        return length * grad / norms

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


def apgd_checkpoints(iterations: int) -> set[int]:
    """APGD's checkpoints for ``iterations`` steps: at 0.22 of them, then at gaps shrinking by 0.03 down to 0.06."""
    shares = [0.0, 0.22]
    while shares[-1] < 1.0:
        shares.append(shares[-1] + max(shares[-1] - shares[-2] - 0.03, 0.06))
    steps = (math.ceil(round(p * iterations, 9)) for p in shares[1:])  # round: 0.41 * 100 is 41, not 42
    return {s for s in steps if 0 < s < iterations}


@dataclass
class _ApgdState:
    """Per image of a batch: step size, previous iterate (momentum), the loss at the last step, the best loss with its
    iterate and gradient, steps that lowered the loss since the last checkpoint, and at that checkpoint the best loss
    and whether the step was halved."""

    eta: torch.Tensor
    previous: torch.Tensor
    last: torch.Tensor
    lowest: torch.Tensor
    at_lowest: torch.Tensor
    grad_lowest: torch.Tensor
    falls: torch.Tensor
    lowest_at_check: torch.Tensor
    halved: torch.Tensor

    @classmethod
    def start(cls, x_adv: torch.Tensor, eta: float) -> _ApgdState:
        n, inf = len(x_adv), torch.full((len(x_adv),), math.inf, device=x_adv.device)
        return cls(eta=torch.full((n,), eta, device=x_adv.device), previous=x_adv.clone(), last=inf.clone(),
                   lowest=inf.clone(), at_lowest=x_adv.clone(), grad_lowest=torch.zeros_like(x_adv),
                   falls=torch.zeros(n, device=x_adv.device), lowest_at_check=inf.clone(),
                   halved=torch.zeros(n, dtype=torch.bool, device=x_adv.device))

    def record(self, todo: torch.Tensor, loss: torch.Tensor, here: torch.Tensor, grad: torch.Tensor, *,
               counted: bool) -> None:
        if counted:
            self.falls[todo] += (loss < self.last[todo]).float()
        self.last[todo] = loss
        lower = loss < self.lowest[todo]
        self.lowest[todo[lower]] = loss[lower]
        self.at_lowest[todo[lower]] = here[lower]
        self.grad_lowest[todo[lower]] = grad[lower]

    def checkpoint(self, todo: torch.Tensor, grad: torch.Tensor, x_adv: torch.Tensor, needed: float) -> torch.Tensor:
        """Halve the step of the images that stalled and put them back at their best iterate (``x_adv`` in place);
        the gradient to step along."""
        stalled = (self.falls[todo] < needed) | (~self.halved[todo] & (self.lowest[todo] >= self.lowest_at_check[todo]))
        rows = todo[stalled]
        self.eta[rows] /= 2
        x_adv[rows] = self.at_lowest[rows]
        self.previous[rows] = self.at_lowest[rows]
        grad = torch.where(_rows(stalled, grad), self.grad_lowest[todo], grad)
        self.halved[todo], self.lowest_at_check[todo], self.falls[todo] = stalled, self.lowest[todo], 0.0
        return grad
