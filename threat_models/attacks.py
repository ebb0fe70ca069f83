"""Batched torch attacks, as ART ``EvasionAttack`` subclasses, where ART's own are slow or weak; drop-ins for ART's.

- :class:`CarliniWagnerL2`: Carlini and Wagner's original L2 algorithm as cleverhans implements it (the paper made its
  attacks with cleverhans): Adam in tanh space, binary search on the constant from ``initial_const``, early abort.
  ART's ``CarliniL2Method`` is a different optimiser (a numpy line search) that is slower and, at high confidence,
  far weaker. One difference from cleverhans: early abort and the binary search act per image, so a batch gives what
  ``batch_size=1`` gives in cleverhans.
- :class:`CarliniWagnerL2LineSearch` (``cw_line_search``): ART's ``CarliniL2Method`` algorithm, ported.
- :class:`SaliencyMapTorch` (``jsma``): ART's ``SaliencyMapMethod`` algorithm, step for step, in one batch.

Each takes ART's signature (same positional order, names, defaults, ``attack_params`` and checks) with our additions
as keyword-only arguments after it, accepts any classifier with class gradients (``estimator_paths``: torch on a
``PyTorchClassifier``, preprocessing included; the classifier's own gradient calls otherwise) and, without
``clip_values``, bounds images by the data's range as ART does. Subclasses of :class:`CarliniWagnerL2` add a penalty
(e.g. a detector's) by overriding one method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from art.attacks.attack import EvasionAttack
from art.estimators.classification.classifier import ClassGradientsMixin
from art.estimators.estimator import BaseEstimator
from tqdm.auto import tqdm

from pdm_bench.threat_models.art_compat import (ART_CW_PARAMS, bounds_on, check_cw_params, class_labels, data_bounds,
                                                set_cw_params)
from pdm_bench.threat_models.cw_line_search import CarliniWagnerL2LineSearch
from pdm_bench.threat_models.estimator_paths import EstimatorPath, estimator_path, frozen_copy

__all__ = ["CarliniWagnerL2", "CarliniWagnerL2LineSearch", "carlini_wagner_objective", "frozen_copy"]


def carlini_wagner_objective(logits: torch.Tensor, labels: torch.Tensor, *, confidence: float,
                             targeted: bool) -> torch.Tensor:
    """The per-image C&W margin loss f(x'): ``max(Z_t' - Z_t + k, 0)`` (targeted) or ``max(Z_y - max_{j!=y} Z_j + k, 0)``.

    ``labels`` are class indices: the target (targeted) or the class to move away from (untargeted).
    """
    return torch.clamp(carlini_wagner_margin(logits, labels, targeted=targeted) + confidence, min=0.0)


def carlini_wagner_margin(logits: torch.Tensor, labels: torch.Tensor, *, targeted: bool) -> torch.Tensor:
    """How far each image is from its label goal in logits: ``max_{j!=t} Z_j - Z_t`` (targeted) or
    ``Z_y - max_{j!=y} Z_j`` (untargeted); the goal with confidence k is met at ``-k`` or below."""
    one_hot = torch.nn.functional.one_hot(labels, logits.shape[1]).to(logits.dtype)
    real = (one_hot * logits).sum(dim=1)
    other = ((1 - one_hot) * logits - one_hot * 10_000).max(dim=1).values
    return other - real if targeted else real - other


@dataclass(frozen=True)
class _TanhSpace:
    """C&W's change of variables: an image is ``tanh(w) * mul + plus``, so ``w`` is unbounded."""

    mul: torch.Tensor
    plus: torch.Tensor

    def to_w(self, images: torch.Tensor) -> torch.Tensor:
        return torch.atanh(((images - self.plus) / self.mul * 0.999999).clamp(-1, 1))

    def to_x(self, w: torch.Tensor) -> torch.Tensor:
        return torch.tanh(w) * self.mul + self.plus


@dataclass
class _Best:
    """Per image, across binary-search steps: the smallest successful image, and the best try (for images never fully
    successful: the label goal met with the margin if any try met it, else at margin 0; among those, the smallest
    penalty left)."""

    l2: torch.Tensor
    adv: torch.Tensor
    try_penalty: torch.Tensor
    try_margin: torch.Tensor
    try_adv: torch.Tensor

    @classmethod
    def start(cls, x: torch.Tensor) -> _Best:
        n = len(x)
        return cls(l2=torch.full((n,), math.inf, device=x.device), adv=x.clone(),
                   try_penalty=torch.full((n,), math.inf, device=x.device),
                   try_margin=torch.zeros(n, dtype=torch.bool, device=x.device), try_adv=x.clone())

    def result(self, *, keep_best_try: bool) -> torch.Tensor:
        """The smallest successful image; else the best try (with ``keep_best_try``); else the image unchanged."""
        if keep_best_try:
            fallback = torch.isinf(self.l2) & torch.isfinite(self.try_penalty)
            self.adv[fallback] = self.try_adv[fallback]
        return self.adv.detach()


@dataclass
class _Progress:
    """Per image: the largest margin it reached (what the confidence is measured against)."""

    best: torch.Tensor

    @classmethod
    def start(cls, x: torch.Tensor) -> _Progress:
        return cls(best=torch.full((len(x),), -math.inf, device=x.device))

    def update(self, idx: torch.Tensor, *, logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> None:
        lead = -carlini_wagner_margin(logits, labels, targeted=targeted)
        self.best[idx] = torch.maximum(self.best[idx], lead.to(self.best.dtype))


def _adam_step(modifier: torch.Tensor, first: torch.Tensor, second: torch.Tensor, *, rows: torch.Tensor,
               grad: torch.Tensor, t: int, learning_rate: float) -> None:
    """Adam (TensorFlow's and torch's defaults) on ``modifier``'s ``rows``, in place; ``t`` counts from 1."""
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    first[rows] = beta1 * first[rows] + (1 - beta1) * grad
    second[rows] = beta2 * second[rows] + (1 - beta2) * grad * grad
    step = learning_rate * math.sqrt(1 - beta2**t) / (1 - beta1**t)
    modifier[rows] -= step * first[rows] / (second[rows].sqrt() + eps)


class CarliniWagnerL2(EvasionAttack):
    """Carlini & Wagner's L2 attack (original algorithm, Adam); ART's ``CarliniL2Method`` signature and defaults.

    ``max_halving`` and ``max_doubling`` are accepted and checked as ART does (for drop-in use) but unused: Adam has
    no line search. ``abort_early`` (ours): stop an image's binary-search step once its loss stops falling.
    ``warm_start`` (ours): each binary-search step after the first starts from the image's best result so far
    instead of from the start image (cleverhans restarts; off by default).
    After ``generate``, ``closest_lead`` is the largest margin any image reached (the target's logit over every
    other one, or untargeted, the best wrong class's over the true one: what the confidence is measured against).
    """

    attack_params = EvasionAttack.attack_params + ART_CW_PARAMS + ["abort_early", "warm_start"]
    _estimator_requirements = (BaseEstimator, ClassGradientsMixin)
    # Images never fully successful come back unchanged (cleverhans); a subclass with a penalty may instead return
    # its best try: the label goal met with the smallest penalty left.
    keep_best_try = False

    def __init__(self, classifier: Any, confidence: float = 0.0, targeted: bool = False, learning_rate: float = 0.01,
                 binary_search_steps: int = 10, max_iter: int = 10, initial_const: float = 0.01, max_halving: int = 5,
                 max_doubling: int = 5, batch_size: int = 1, verbose: bool = True, *, abort_early: bool = True,
                 warm_start: bool = False) -> None:
        super().__init__(estimator=classifier)
        set_cw_params(self, locals())
        self.abort_early = abort_early
        self.warm_start = warm_start
        self._check_params()

    def _check_params(self) -> None:
        check_cw_params(self)
        for name in ("abort_early", "warm_start"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"The argument `{name}` has to be of type bool, got {getattr(self, name)!r}.")

    # The one method a subclass overrides to add a penalty (e.g. against a detector) to the objective.
    def penalty(self, x_adv: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of ``x_adv`` and an extra per-image penalty (>= 0; the attack succeeds only where it is 0)."""
        logits = self._path.logits(x_adv)
        return logits, torch.zeros(len(x_adv), dtype=logits.dtype, device=logits.device)

    def observe(self, search_step: int, running: torch.Tensor, going_on: torch.Tensor, succeeded: torch.Tensor) -> None:
        """Called once per Adam step with the indices of the images computed, which of them go on (not aborted
        early), and which had already succeeded earlier in this search step; a no-op (profilers override it)."""

    def generate(self, x: np.ndarray, y: np.ndarray | None = None, **kwargs: object) -> np.ndarray:
        """Adversarial examples for ``x``; ``y``: targets (targeted) or true labels (untargeted; default: predictions).

        ``x_init`` (keyword, optional): start the search from these images instead of ``x`` (distances stay to ``x``).
        Images the attack fails on are returned unchanged.
        """
        self._path: EstimatorPath = estimator_path(self.estimator, frozen=True)
        self.closest_lead = -math.inf  # the largest margin any image reached (see the class docstring)
        self._model = self._path.module  # a subclass's penalty may read more of it (None on the general path)
        device = self._path.device
        labels = class_labels(self, x, y)
        self._bounds = data_bounds(self.estimator, x)
        x_init = kwargs.get("x_init")
        start = np.asarray(x_init if x_init is not None else x, dtype=np.float32)
        if start.shape != x.shape:
            raise ValueError(f"expected x_init of shape {x.shape}, got {start.shape}")
        out = np.empty_like(x, dtype=np.float32)
        batches = range(0, len(x), self.batch_size)
        for lo in batches:  # the progress bar is per binary-search step, in _attack_batch
            hi = lo + self.batch_size
            out[lo:hi] = self._attack_batch(
                torch.as_tensor(x[lo:hi], dtype=torch.float32, device=device),
                torch.as_tensor(start[lo:hi], device=device),
                torch.as_tensor(labels[lo:hi], dtype=torch.long, device=device),
            ).cpu().numpy()
        return out

    def _label_goal(self, logits: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
        """cleverhans's ``compare`` without the penalty: the label test with ``margin`` applied."""
        adjusted = logits.detach().clone()
        rows = torch.arange(len(labels), device=labels.device)
        adjusted[rows, labels] += -margin if self.targeted else margin
        predicted = adjusted.argmax(dim=1)
        return predicted == labels if self.targeted else predicted != labels

    def _attack_batch(self, x: torch.Tensor, start: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        clip_min, clip_max = bounds_on(self._bounds, x.device)
        space = _TanhSpace(mul=(clip_max - clip_min) / 2, plus=(clip_max + clip_min) / 2)
        w_start = space.to_w(start)
        x_orig = space.to_x(space.to_w(x))  # cleverhans measures distances to the tanh round trip of x
        n = len(x)
        lower = torch.zeros(n, dtype=torch.float64, device=x.device)
        upper = torch.full((n,), 1e10, dtype=torch.float64, device=x.device)
        const = torch.full((n,), self.initial_const, dtype=torch.float64, device=x.device)
        best = _Best.start(x)
        progress = _Progress.start(x)
        bar = tqdm(total=self.binary_search_steps, desc=f"{type(self).__name__} on {n} images, search step",
                   leave=False, disable=not self.verbose, dynamic_ncols=True)
        for outer_step in range(self.binary_search_steps):
            if self.binary_search_steps >= 10 and outer_step == self.binary_search_steps - 1:
                const = upper.clone()  # cleverhans repeats the search once at the upper bound
            step_success = self._search_step(outer_step, space=space, x_orig=x_orig, w_start=w_start, labels=labels,
                                             c_all=const.to(x.dtype), best=best, progress=progress)
            with torch.no_grad():  # cleverhans's constant update, per image
                upper = torch.where(step_success, torch.minimum(upper, const), upper)
                lower = torch.where(step_success, lower, torch.maximum(lower, const))
                bounded = upper < 1e9
                const = torch.where(bounded, (lower + upper) / 2, torch.where(step_success, const, const * 10))
            bar.set_postfix_str(f"successful {float(torch.isfinite(best.l2).float().mean()):.2f}", refresh=False)
            bar.update()
        bar.close()
        self.closest_lead = max(self.closest_lead, float(progress.best.max())) if n else self.closest_lead
        return best.result(keep_best_try=self.keep_best_try)

    def _search_step(self, outer_step: int, *, space: _TanhSpace, x_orig: torch.Tensor, w_start: torch.Tensor,
                     labels: torch.Tensor, c_all: torch.Tensor, best: _Best, progress: _Progress) -> torch.Tensor:
        """One binary-search step: Adam in tanh space from a fresh state, only images still running computed; which
        images succeeded in it."""
        n = len(x_orig)
        modifier, first, second = torch.zeros_like(x_orig), torch.zeros_like(x_orig), torch.zeros_like(x_orig)
        if self.warm_start:
            found = torch.isfinite(best.l2)
            modifier[found] = space.to_w(best.adv[found]) - w_start[found]
        running = torch.ones(n, dtype=torch.bool, device=x_orig.device)  # not aborted early in this step
        step_success = torch.zeros(n, dtype=torch.bool, device=x_orig.device)
        previous = torch.full((n,), math.inf, device=x_orig.device)
        check_every = max(self.max_iter // 10, 1)
        for iteration in range(self.max_iter):
            idx = torch.nonzero(running).flatten()
            if not len(idx):
                break
            delta = modifier[idx].requires_grad_(True)
            x_adv = space.to_x(delta + w_start[idx])
            l2 = (x_adv - x_orig[idx]).flatten(1).pow(2).sum(dim=1)
            logits, extra = self.penalty(x_adv, labels[idx])
            c = c_all[idx]
            loss = l2 + c * carlini_wagner_objective(logits, labels[idx], confidence=self.confidence,
                                                      targeted=self.targeted) + c * extra
            progress.update(idx, logits=logits.detach(), labels=labels[idx], targeted=self.targeted)
            # Record before stepping, as cleverhans does (its loss and images are the pre-update ones).
            with torch.no_grad():
                go_on = torch.ones_like(idx, dtype=torch.bool)
                if self.abort_early and iteration % check_every == 0:
                    go_on = loss.detach() <= previous[idx] * 0.9999
                    running[idx[~go_on]] = False
                    previous[idx] = torch.where(go_on, loss.detach(), previous[idx])
                self.observe(outer_step, idx, go_on, step_success[idx])
                success = self._record(best, idx, go_on, logits=logits, labels=labels[idx], extra=extra.detach(),
                                       l2=l2.detach(), x_adv=x_adv.detach())
                step_success[idx] |= success
            (grad,) = torch.autograd.grad(loss.sum(), delta)
            with torch.no_grad():
                _adam_step(modifier, first, second, rows=idx[go_on], grad=grad[go_on], t=iteration + 1,
                           learning_rate=self.learning_rate)
        return step_success

    def _record(self, best: _Best, idx: torch.Tensor, go_on: torch.Tensor, *, logits: torch.Tensor,
                labels: torch.Tensor, extra: torch.Tensor, l2: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        """Keep each image's smallest successful ``x_adv`` (and, with ``keep_best_try``, its best try); the images of
        ``idx`` that succeeded (the label goal met with the margin, no penalty left, not aborted)."""
        met = self._label_goal(logits, labels, self.confidence) & go_on  # the margin met
        success = met & (extra <= 0)
        better = success & (l2 < best.l2[idx])
        best.l2[idx[better]] = l2[better]
        best.adv[idx[better]] = x_adv[better]
        if self.keep_best_try:
            hit = self._label_goal(logits, labels, 0.0) & go_on
            closer = hit & ((met & ~best.try_margin[idx]) | ((met == best.try_margin[idx]) & (extra < best.try_penalty[idx])))
            best.try_penalty[idx[closer]] = extra[closer]
            best.try_margin[idx[closer]] = met[closer]
            best.try_adv[idx[closer]] = x_adv[closer]
        return success

