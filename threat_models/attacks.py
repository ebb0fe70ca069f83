"""Batched torch attacks, as ART ``EvasionAttack`` subclasses, where ART's own are slow or weak.

- :class:`CarliniWagnerL2`: Carlini and Wagner's original L2 algorithm as cleverhans implements it (the paper made its
  attacks with cleverhans): Adam in tanh space, binary search on the constant from ``initial_const``, early abort.
  ART's ``CarliniL2Method`` is a different optimiser (a numpy line search) that is slower and, at high confidence,
  far weaker. One difference from cleverhans: early abort and the binary search act per image, so a batch gives what
  ``batch_size=1`` gives in cleverhans.
- :class:`SaliencyMapTorch`: ART's ``SaliencyMapMethod`` algorithm, step for step, on torch tensors in one batch.

Both run the wrapped ``torch.nn.Module`` directly (on the classifier's device), so no numpy round trip sits in
their loops. Subclasses of :class:`CarliniWagnerL2` add a penalty (e.g. a detector's) by overriding one method.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from art.attacks.attack import EvasionAttack
from art.estimators.classification import PyTorchClassifier
from art.utils import check_and_transform_label_format
from tqdm.auto import tqdm

from pdm_bench.models import ResNet


def carlini_wagner_objective(logits: torch.Tensor, labels: torch.Tensor, *, confidence: float,
                             targeted: bool) -> torch.Tensor:
    """The per-image C&W margin loss f(x'): ``max(Z_t' - Z_t + k, 0)`` (targeted) or ``max(Z_y - max_{j!=y} Z_j + k, 0)``.

    ``labels`` are class indices: the target (targeted) or the class to move away from (untargeted).
    """
    one_hot = torch.nn.functional.one_hot(labels, logits.shape[1]).to(logits.dtype)
    real = (one_hot * logits).sum(dim=1)
    other = ((1 - one_hot) * logits - one_hot * 10_000).max(dim=1).values
    margin = other - real if targeted else real - other
    return torch.clamp(margin + confidence, min=0.0)


def torch_model(classifier: PyTorchClassifier) -> torch.nn.Module:
    if not isinstance(classifier, PyTorchClassifier):
        raise TypeError(f"expected an ART PyTorchClassifier, got {type(classifier).__name__}")
    if classifier.preprocessing_defences or classifier.preprocessing is not None and not _is_identity(classifier):
        raise ValueError("expected a classifier without preprocessing (these attacks run its torch model directly)")
    model = classifier.model
    model.eval()
    return model


def frozen_copy(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """A copy of ``model`` for an attack's inner loop: no weight gradients, BatchNorm folded into the convolutions
    (our ResNets) and, on the CPU, channels-last layout.

    Together 1.8x faster per forward and backward pass on the quick ResNet-8 (MNIST, one CPU thread;
    docs/PERFORMANCE.md). The caller's model is left as it is; outputs agree to float rounding.
    """
    frozen = model.with_batch_norm_folded() if isinstance(model, ResNet) else copy.deepcopy(model)
    frozen = frozen.eval().requires_grad_(False)
    return frozen.to(memory_format=torch.channels_last) if device.type == "cpu" else frozen


def _is_identity(classifier: PyTorchClassifier) -> bool:
    preprocessing = classifier.preprocessing
    mean, std = getattr(preprocessing, "mean", 0.0), getattr(preprocessing, "std", 1.0)
    return bool(np.all(np.asarray(mean) == 0) and np.all(np.asarray(std) == 1))


class CarliniWagnerL2(EvasionAttack):
    """Carlini & Wagner's L2 attack (original algorithm) on a PyTorch classifier that returns logits."""

    attack_params = EvasionAttack.attack_params + [
        "confidence", "targeted", "learning_rate", "binary_search_steps", "max_iter", "initial_const", "abort_early",
        "batch_size", "verbose",
    ]
    _estimator_requirements = (PyTorchClassifier,)
    # Images never fully successful come back unchanged (cleverhans); a subclass with a penalty may instead return
    # its best try: the label goal met with the smallest penalty left.
    keep_best_try = False

    def __init__(self, classifier: PyTorchClassifier, *, confidence: float = 0.0, targeted: bool = False,
                 learning_rate: float = 5e-3, binary_search_steps: int = 5, max_iter: int = 1000,
                 initial_const: float = 1e-2, abort_early: bool = True, batch_size: int = 128,
                 verbose: bool = False) -> None:
        super().__init__(estimator=classifier)
        self.confidence = confidence
        self._targeted = targeted
        self.learning_rate = learning_rate
        self.binary_search_steps = binary_search_steps
        self.max_iter = max_iter
        self.initial_const = initial_const
        self.abort_early = abort_early
        self.batch_size = batch_size
        self.verbose = verbose
        self._check_params()

    def _check_params(self) -> None:
        for name in ("binary_search_steps", "max_iter", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"expected a positive integer {name}, got {value!r}")
        for name in ("learning_rate", "initial_const"):
            if not getattr(self, name) > 0:
                raise ValueError(f"expected a positive {name}, got {getattr(self, name)!r}")
        if not self.confidence >= 0:
            raise ValueError(f"expected a non-negative confidence, got {self.confidence!r}")

    # The one method a subclass overrides to add a penalty (e.g. against a detector) to the objective.
    def penalty(self, x_adv: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of ``x_adv`` and an extra per-image penalty (>= 0; the attack succeeds only where it is 0)."""
        logits = self._model(x_adv)
        return logits, torch.zeros(len(x_adv), dtype=logits.dtype, device=logits.device)

    def generate(self, x: np.ndarray, y: np.ndarray | None = None, **kwargs: object) -> np.ndarray:
        """Adversarial examples for ``x``; ``y``: targets (targeted) or true labels (untargeted; default: predictions).

        ``x_init`` (keyword, optional): start the search from these images instead of ``x`` (distances stay to ``x``).
        Images the attack fails on are returned unchanged.
        """
        device = self.estimator.device
        self._model = frozen_copy(torch_model(self.estimator), device)
        if y is None:
            if self.targeted:
                raise ValueError("expected target labels y for a targeted attack, got None")
            labels = np.argmax(self.estimator.predict(x, batch_size=self.batch_size), axis=1)
        else:
            labels = np.argmax(check_and_transform_label_format(y, nb_classes=self.estimator.nb_classes), axis=1)
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

    def _succeeded(self, logits: torch.Tensor, labels: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        """cleverhans's ``compare``: the label test with the confidence margin applied, and no penalty left."""
        adjusted = logits.detach().clone()
        rows = torch.arange(len(labels), device=labels.device)
        adjusted[rows, labels] += -self.confidence if self.targeted else self.confidence
        predicted = adjusted.argmax(dim=1)
        hit = predicted == labels if self.targeted else predicted != labels
        return hit & (extra.detach() <= 0)

    def _attack_batch(self, x: torch.Tensor, start: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        clip_min, clip_max = self.estimator.clip_values if self.estimator.clip_values is not None else (0.0, 1.0)
        mul, plus = (clip_max - clip_min) / 2, (clip_max + clip_min) / 2

        def to_tanh(images: torch.Tensor) -> torch.Tensor:
            return torch.atanh(((images - plus) / mul * 0.999999).clamp(-1, 1))

        w_start, w_orig = to_tanh(start), to_tanh(x)
        x_orig = torch.tanh(w_orig) * mul + plus  # cleverhans measures distances to the tanh round trip of x
        n = len(x)
        lower = torch.zeros(n, dtype=torch.float64, device=x.device)
        upper = torch.full((n,), 1e10, dtype=torch.float64, device=x.device)
        const = torch.full((n,), self.initial_const, dtype=torch.float64, device=x.device)
        best_l2 = torch.full((n,), math.inf, device=x.device)
        best_adv = x.clone()
        # The best try (``keep_best_try``): label goal met, smallest penalty left, for images never fully successful.
        try_penalty = torch.full((n,), math.inf, device=x.device)
        try_adv = x.clone()
        check_every = max(self.max_iter // 10, 1)
        beta1, beta2, eps = 0.9, 0.999, 1e-8  # Adam's defaults in TensorFlow and torch
        bar = tqdm(total=self.binary_search_steps, desc=f"{type(self).__name__} on {n} images, search step",
                   leave=False, disable=not self.verbose, dynamic_ncols=True)
        for outer_step in range(self.binary_search_steps):
            if self.binary_search_steps >= 10 and outer_step == self.binary_search_steps - 1:
                const = upper.clone()  # cleverhans repeats the search once at the upper bound
            # Adam state, reset each binary-search step; only images still running are computed.
            modifier, first, second = torch.zeros_like(x), torch.zeros_like(x), torch.zeros_like(x)
            running = torch.ones(n, dtype=torch.bool, device=x.device)  # not aborted early in this step
            step_success = torch.zeros(n, dtype=torch.bool, device=x.device)
            previous = torch.full((n,), math.inf, device=x.device)
            c_all = const.to(x.dtype)
            for iteration in range(self.max_iter):
                idx = torch.nonzero(running).flatten()
                if not len(idx):
                    break
                delta = modifier[idx].requires_grad_(True)
                x_adv = torch.tanh(delta + w_start[idx]) * mul + plus
                l2 = (x_adv - x_orig[idx]).flatten(1).pow(2).sum(dim=1)
                logits, extra = self.penalty(x_adv, labels[idx])
                c = c_all[idx]
                loss = l2 + c * carlini_wagner_objective(logits, labels[idx], confidence=self.confidence,
                                                          targeted=self.targeted) + c * extra
                # Record before stepping, as cleverhans does (its loss and images are the pre-update ones).
                with torch.no_grad():
                    go_on = torch.ones_like(idx, dtype=torch.bool)
                    if self.abort_early and iteration % check_every == 0:
                        go_on = loss.detach() <= previous[idx] * 0.9999
                        running[idx[~go_on]] = False
                        previous[idx] = torch.where(go_on, loss.detach(), previous[idx])
                    success = self._succeeded(logits, labels[idx], extra) & go_on
                    step_success[idx] |= success
                    better = success & (l2.detach() < best_l2[idx])
                    best_l2[idx[better]] = l2.detach()[better]
                    best_adv[idx[better]] = x_adv.detach()[better]
                    if self.keep_best_try:
                        hit = self._succeeded(logits, labels[idx], torch.zeros_like(extra)) & go_on
                        closer = hit & (extra.detach() < try_penalty[idx])
                        try_penalty[idx[closer]] = extra.detach()[closer]
                        try_adv[idx[closer]] = x_adv.detach()[closer]
                (grad,) = torch.autograd.grad(loss.sum(), delta)
                with torch.no_grad():
                    rows = idx[go_on]
                    grad = grad[go_on]
                    first[rows] = beta1 * first[rows] + (1 - beta1) * grad
                    second[rows] = beta2 * second[rows] + (1 - beta2) * grad * grad
                    t = iteration + 1
                    step = self.learning_rate * math.sqrt(1 - beta2**t) / (1 - beta1**t)
                    modifier[rows] -= step * first[rows] / (second[rows].sqrt() + eps)
            with torch.no_grad():  # cleverhans's constant update, per image
                upper = torch.where(step_success, torch.minimum(upper, const), upper)
                lower = torch.where(step_success, lower, torch.maximum(lower, const))
                bounded = upper < 1e9
                const = torch.where(bounded, (lower + upper) / 2, torch.where(step_success, const, const * 10))
            bar.set_postfix_str(f"successful {float(torch.isfinite(best_l2).float().mean()):.2f}", refresh=False)
            bar.update()
        bar.close()
        if self.keep_best_try:
            fallback = torch.isinf(best_l2) & torch.isfinite(try_penalty)
            best_adv[fallback] = try_adv[fallback]
        return best_adv.detach()


_C_UPPER = 10e10
_SMOOTHER = 0.999999


class CarliniWagnerL2LineSearch(EvasionAttack):
    """ART's ``CarliniL2Method`` algorithm (gradient steps in tanh space with a per-image line search), in torch.

    The same steps, constants and binary search as ART 1.20 (including its update of the lower bound to the new
    constant), on the whole batch at once with one backward pass per gradient. Strong at short budgets (10
    iterations), where the Adam algorithm barely moves saturated pixels; weak at high confidence.
    """

    attack_params = EvasionAttack.attack_params + [
        "confidence", "targeted", "learning_rate", "binary_search_steps", "max_iter", "initial_const", "max_halving",
        "max_doubling", "batch_size", "verbose",
    ]
    _estimator_requirements = (PyTorchClassifier,)

    def __init__(self, classifier: PyTorchClassifier, *, confidence: float = 0.0, targeted: bool = False,
                 learning_rate: float = 0.01, binary_search_steps: int = 10, max_iter: int = 10,
                 initial_const: float = 0.01, max_halving: int = 5, max_doubling: int = 5, batch_size: int = 128,
                 verbose: bool = False) -> None:
        super().__init__(estimator=classifier)
        self.confidence = confidence
        self._targeted = targeted
        self.learning_rate = learning_rate
        self.binary_search_steps = binary_search_steps
        self.max_iter = max_iter
        self.initial_const = initial_const
        self.max_halving = max_halving
        self.max_doubling = max_doubling
        self.batch_size = batch_size
        self.verbose = verbose
        CarliniWagnerL2._check_params(self)  # type: ignore[arg-type]

    def generate(self, x: np.ndarray, y: np.ndarray | None = None, **kwargs: object) -> np.ndarray:
        """Adversarial examples; ``y``: targets (targeted) or true labels (untargeted; default: predictions)."""
        self._model = torch_model(self.estimator)
        device = self.estimator.device
        if y is None:
            if self.targeted:
                raise ValueError("expected target labels y for a targeted attack, got None")
            y = np.argmax(self.estimator.predict(x, batch_size=self.batch_size), axis=1)
        one_hot = check_and_transform_label_format(y, nb_classes=self.estimator.nb_classes).astype(np.float32)
        out = np.asarray(x, dtype=np.float32).copy()
        for lo in tqdm(range(0, len(x), self.batch_size), desc="C&W", disable=not self.verbose):
            hi = lo + self.batch_size
            out[lo:hi] = self._attack_batch(torch.as_tensor(out[lo:hi], device=device),
                                            torch.as_tensor(one_hot[lo:hi], device=device)).cpu().numpy()
        return out

    def _bounds(self) -> tuple[float, float]:
        return self.estimator.clip_values if self.estimator.clip_values is not None else (0.0, 1.0)

    def _to_original(self, x_tanh: torch.Tensor) -> torch.Tensor:
        lo, hi = self._bounds()
        return (torch.tanh(x_tanh) + 1.0) / 2.0 * (hi - lo) + lo

    def _loss(self, x: torch.Tensor, x_adv: torch.Tensor, target: torch.Tensor, c: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, squared L2 distance (float32, as ART stores it) and c * margin + distance (float64)."""
        l2 = (x.to(x_adv.dtype) - x_adv).flatten(1).pow(2).sum(dim=1)
        with torch.no_grad():
            z = self._model(x_adv.float())
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
        logits = self._model(images)
        rows = torch.arange(len(images), device=images.device)
        (grad,) = torch.autograd.grad((logits[rows, add] - logits[rows, sub]).sum(), images)
        shape = (-1,) + (1,) * (x.dim() - 1)
        lo, hi = self._bounds()
        grad = (grad.double() * c.view(shape)).float() + 2 * (x_adv - x)
        grad = grad * (hi - lo) * ((1 - torch.tanh(x_tanh) ** 2) / (2 * _SMOOTHER))
        return -grad

    def _attack_batch(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        lo, hi = self._bounds()
        n, dev = len(x), x.device
        shape = (-1,) + (1,) * (x.dim() - 1)
        x_tanh = torch.atanh(((x.clamp(lo, hi) - lo) / (hi - lo) * 2 - 1) * _SMOOTHER)
        c = torch.full((n,), self.initial_const, dtype=torch.float64, device=dev)
        c_lower = torch.zeros(n, dtype=torch.float64, device=dev)
        c_double = torch.ones(n, dtype=torch.bool, device=dev)
        best_l2 = torch.full((n,), math.inf, dtype=torch.float64, device=dev)
        best_adv = x.clone()

        def keep_improved(success: torch.Tensor, l2: torch.Tensor, x_adv: torch.Tensor) -> None:
            improved = success & (l2.double() < best_l2)
            best_l2[improved] = l2[improved].double()
            best_adv[improved] = x_adv[improved]

        for _ in range(self.binary_search_steps):
            if not (c < _C_UPPER).any():
                break
            lr = torch.full((n,), self.learning_rate, dtype=torch.float64, device=dev)
            x_adv, x_adv_tanh = x.clone(), x_tanh.clone()
            z, l2, loss = self._loss(x, x_adv, target, c)
            success = loss - l2.double() <= 0
            overall = success.clone()
            for _ in range(self.max_iter):
                keep_improved(success, l2, x_adv)
                active = (c < _C_UPPER) & (lr > 0)
                if not active.any():
                    break
                step = self._descent(z[active], target[active], x[active], x_adv[active], x_adv_tanh[active], c[active])
                full_step = torch.zeros_like(x)
                full_step[active] = step
                prev_loss, best_loss = loss.clone(), loss.clone()
                best_lr = torch.zeros(n, dtype=torch.float64, device=dev)
                halving = torch.zeros(n, device=dev)

                def try_step(mask: torch.Tensor) -> None:
                    candidate = self._to_original(x_adv_tanh[mask].double() + lr[mask].view(shape) * full_step[mask])
                    _, l2[mask], loss[mask] = self._loss(x[mask], candidate, target[mask], c[mask])
                    better = loss < best_loss
                    best_lr[better] = lr[better]
                    best_loss[better] = loss[better]

                for _ in range(self.max_halving):
                    halve = active & (loss >= prev_loss)
                    if not halve.any():
                        break
                    try_step(halve)
                    lr[halve] /= 2
                    halving[halve] += 1
                lr[active] *= 2
                for _ in range(self.max_doubling):
                    double = active & (halving == 1) & (loss <= best_loss)
                    if not double.any():
                        break
                    lr[double] *= 2
                    try_step(double)
                lr[halving == 1] /= 2
                update = active & (best_lr > 0)
                if update.any():
                    x_adv_tanh[update] = (x_adv_tanh[update].double() + best_lr[update].view(shape) * full_step[update]).float()
                    x_adv[update] = self._to_original(x_adv_tanh[update])
                    z[update], l2[update], loss[update] = self._loss(x[update], x_adv[update], target[update], c[update])
                    success = loss - l2.double() <= 0
                    overall |= success
            keep_improved(success, l2, x_adv)
            # ART's constant update, verbatim in effect (its lower bound becomes the *new* constant on failure).
            c_double &= ~overall
            c = torch.where(overall, (c_lower + c) / 2, c)
            c = torch.where(~overall & c_double, c * 2, c)
            c = torch.where(~overall & ~c_double, c + (c - c_lower) / 2, c)
            c_lower = torch.where(~overall, c, c_lower)
        return best_adv
