"""ART's ``CarliniL2Method`` algorithm (gradient steps in tanh space with a per-image line search) in torch, as a
drop-in for it (ART's signature, defaults and checks; any classifier with class gradients)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from art.attacks.attack import EvasionAttack
from art.estimators.classification.classifier import ClassGradientsMixin
from art.estimators.estimator import BaseEstimator
from tqdm.auto import tqdm

from pdm_bench.threat_models.art_compat import (ART_CW_PARAMS, bounds_on, check_cw_params, class_labels, data_bounds,
                                                set_cw_params)
from pdm_bench.threat_models.estimator_paths import estimator_path

_C_UPPER = 10e10
_SMOOTHER = 0.999999


@dataclass
class _Smallest:
    """Per image, across binary-search steps: the smallest squared distance of a successful iterate, and that image."""

    l2: torch.Tensor
    adv: torch.Tensor

    def keep(self, success: torch.Tensor, l2: torch.Tensor, x_adv: torch.Tensor) -> None:
        improved = success & (l2.double() < self.l2)
        self.l2[improved] = l2[improved].double()
        self.adv[improved] = x_adv[improved]


@dataclass
class _Iterate:
    """A binary-search step's iterate per image: as an image and in tanh space, its logits, squared distance, loss
    and learning rate (all changed in place)."""

    x_adv: torch.Tensor
    x_adv_tanh: torch.Tensor
    lr: torch.Tensor
    z: torch.Tensor = field(init=False)
    l2: torch.Tensor = field(init=False)
    loss: torch.Tensor = field(init=False)


class CarliniWagnerL2LineSearch(EvasionAttack):
    """ART's ``CarliniL2Method`` algorithm (gradient steps in tanh space with a per-image line search), in torch.

    The same steps, constants and binary search as ART 1.20 (including its update of the lower bound to the new
    constant), on the whole batch at once with one backward pass per gradient. Strong at short budgets (10
    iterations), where the Adam algorithm barely moves saturated pixels; weak at high confidence.
    """

    attack_params = EvasionAttack.attack_params + ART_CW_PARAMS
    _estimator_requirements = (BaseEstimator, ClassGradientsMixin)

    def __init__(self, classifier: Any, confidence: float = 0.0, targeted: bool = False, learning_rate: float = 0.01,
                 binary_search_steps: int = 10, max_iter: int = 10, initial_const: float = 0.01, max_halving: int = 5,
                 max_doubling: int = 5, batch_size: int = 1, verbose: bool = True) -> None:
        super().__init__(estimator=classifier)
        set_cw_params(self, locals())
        self._check_params()

    def _check_params(self) -> None:
        check_cw_params(self)

    def generate(self, x: np.ndarray, y: np.ndarray | None = None, **kwargs: object) -> np.ndarray:
        """Adversarial examples; ``y``: targets (targeted) or true labels (untargeted; default: predictions)."""
        self._path = estimator_path(self.estimator)
        device = self._path.device
        labels = class_labels(self, x, y)
        one_hot = np.eye(self.estimator.nb_classes, dtype=np.float32)[labels]
        self._lo, self._hi = bounds_on(data_bounds(self.estimator, x), device)
        out = np.asarray(x, dtype=np.float32).copy()
        for lo in tqdm(range(0, len(x), self.batch_size), desc="C&W", disable=not self.verbose):
            hi = lo + self.batch_size
            out[lo:hi] = self._attack_batch(torch.as_tensor(out[lo:hi], device=device),
                                            torch.as_tensor(one_hot[lo:hi], device=device)).cpu().numpy()
        return out

    def _to_original(self, x_tanh: torch.Tensor) -> torch.Tensor:
        lo, hi = self._lo, self._hi
        return (torch.tanh(x_tanh) + 1.0) / 2.0 * (hi - lo) + lo

    def _loss(self, x: torch.Tensor, x_adv: torch.Tensor, target: torch.Tensor, c: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, squared L2 distance (float32, as ART stores it) and c * margin + distance (float64)."""
        l2 = (x.to(x_adv.dtype) - x_adv).flatten(1).pow(2).sum(dim=1)
        with torch.no_grad():
            z = self._path.logits(x_adv.float())
        z_target = (z * target).sum(dim=1)
        z_other = (z * (1 - target) + (z.min(dim=1).values - 1)[:, None] * target).max(dim=1).values
        margin = z_other - z_target if self.targeted else z_target - z_other
        margin = torch.clamp(margin + self.confidence, min=0.0)
        return z, l2.float(), c * margin.double() + l2.double()

    def _descent(self, z: torch.Tensor, target: torch.Tensor, x: torch.Tensor, x_adv: torch.Tensor,
                 x_tanh: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Minus the loss gradient in tanh space, as ART computes it (the margin term is never switched off)."""
        other = (z * (1 - target) + (z.min(dim=1).values - 1)[:, None] * target).argmax(dim=1)
        label = target.argmax(dim=1)
        add, sub = (other, label) if self.targeted else (label, other)
        images = x_adv.detach().clone().requires_grad_(True)
        logits = self._path.logits(images)
        rows = torch.arange(len(images), device=images.device)
        (grad,) = torch.autograd.grad((logits[rows, add] - logits[rows, sub]).sum(), images)
        shape = (-1,) + (1,) * (x.dim() - 1)
        lo, hi = self._lo, self._hi
        grad = (grad.double() * c.view(shape)).float() + 2 * (x_adv - x)
        grad = grad * (hi - lo) * ((1 - torch.tanh(x_tanh) ** 2) / (2 * _SMOOTHER))
        return -grad

    def _attack_batch(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        lo, hi = self._lo, self._hi
        n, dev = len(x), x.device
        x_tanh = torch.atanh(((x.clamp(lo, hi) - lo) / (hi - lo) * 2 - 1) * _SMOOTHER)
        c = torch.full((n,), self.initial_const, dtype=torch.float64, device=dev)
        c_lower = torch.zeros(n, dtype=torch.float64, device=dev)
        c_double = torch.ones(n, dtype=torch.bool, device=dev)
        best = _Smallest(l2=torch.full((n,), math.inf, dtype=torch.float64, device=dev), adv=x.clone())
        for _ in range(self.binary_search_steps):
            if not (c < _C_UPPER).any():
                break
            overall = self._search_step(x, x_tanh, target, c, best)
            # ART's constant update, verbatim in effect (its lower bound becomes the *new* constant on failure).
            c_double &= ~overall
            c = torch.where(overall, (c_lower + c) / 2, c)
            c = torch.where(~overall & c_double, c * 2, c)
            c = torch.where(~overall & ~c_double, c + (c - c_lower) / 2, c)
            c_lower = torch.where(~overall, c, c_lower)
        return best.adv

    def _search_step(self, x: torch.Tensor, x_tanh: torch.Tensor, target: torch.Tensor, c: torch.Tensor,
                     best: _Smallest) -> torch.Tensor:
        """One binary-search step at constants ``c`` from the clean images, ``max_iter`` line-search iterations; which
        images succeeded at any of them."""
        lr = torch.full((len(x),), self.learning_rate, dtype=torch.float64, device=x.device)
        it = _Iterate(x_adv=x.clone(), x_adv_tanh=x_tanh.clone(), lr=lr)
        it.z, it.l2, it.loss = self._loss(x, it.x_adv, target, c)
        success = it.loss - it.l2.double() <= 0
        overall = success.clone()
        for _ in range(self.max_iter):
            best.keep(success, it.l2, it.x_adv)
            active = (c < _C_UPPER) & (it.lr > 0)
            if not active.any():
                break
            if self._line_search(it, x, target, c, active):
                success = it.loss - it.l2.double() <= 0
                overall |= success
        best.keep(success, it.l2, it.x_adv)
        return overall

    def _line_search(self, it: _Iterate, x: torch.Tensor, target: torch.Tensor, c: torch.Tensor,
                     active: torch.Tensor) -> bool:
        """ART's step: halve the learning rate while the loss does not fall, then double it while it falls; move the
        ``active`` images whose best rate is positive (in place). Whether any moved. As in ART, the tries' distances
        and losses stay in ``it`` for images that do not move."""
        n, dev = len(x), x.device
        shape = (-1,) + (1,) * (x.dim() - 1)
        step = self._descent(it.z[active], target[active], x[active], it.x_adv[active], it.x_adv_tanh[active],
                             c[active])
        full_step = torch.zeros_like(x)
        full_step[active] = step
        lr, prev_loss, best_loss = it.lr, it.loss.clone(), it.loss.clone()
        best_lr = torch.zeros(n, dtype=torch.float64, device=dev)
        halving = torch.zeros(n, device=dev)

        def try_step(mask: torch.Tensor) -> None:
            candidate = self._to_original(it.x_adv_tanh[mask].double() + lr[mask].view(shape) * full_step[mask])
            _, it.l2[mask], it.loss[mask] = self._loss(x[mask], candidate, target[mask], c[mask])
            better = it.loss < best_loss
            best_lr[better] = lr[better]
            best_loss[better] = it.loss[better]

        for _ in range(self.max_halving):
            halve = active & (it.loss >= prev_loss)
            if not halve.any():
                break
            try_step(halve)
            lr[halve] /= 2
            halving[halve] += 1
        lr[active] *= 2
        for _ in range(self.max_doubling):
            double = active & (halving == 1) & (it.loss <= best_loss)
            if not double.any():
                break
            lr[double] *= 2
            try_step(double)
        lr[halving == 1] /= 2
        update = active & (best_lr > 0)
        if not update.any():
            return False
        it.x_adv_tanh[update] = (it.x_adv_tanh[update].double() + best_lr[update].view(shape) * full_step[update]).float()
        it.x_adv[update] = self._to_original(it.x_adv_tanh[update])
        it.z[update], it.l2[update], it.loss[update] = self._loss(x[update], it.x_adv[update], target[update], c[update])
        return True
