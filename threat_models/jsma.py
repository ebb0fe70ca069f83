"""ART's JSMA (``SaliencyMapMethod``), step for step, on torch tensors in one batch: a drop-in for it (ART's
signature, defaults and checks; any classifier with class gradients)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from art.attacks.attack import EvasionAttack
from art.estimators.classification.classifier import ClassGradientsMixin
from art.estimators.estimator import BaseEstimator
from art.utils import check_and_transform_label_format, random_targets
from tqdm.auto import tqdm

from pdm_bench.threat_models.estimator_paths import estimator_path


class SaliencyMapTorch(EvasionAttack):
    """ART's JSMA (``SaliencyMapMethod``), the same algorithm on torch tensors: always targeted."""

    attack_params = EvasionAttack.attack_params + ["theta", "gamma", "batch_size", "verbose"]
    _estimator_requirements = (BaseEstimator, ClassGradientsMixin)

    def __init__(self, classifier: Any, theta: float = 0.1, gamma: float = 1.0, batch_size: int = 1,
                 verbose: bool = True) -> None:
        super().__init__(estimator=classifier)
        self._targeted = True
        self.theta = theta
        self.gamma = gamma
        self.batch_size = batch_size
        self.verbose = verbose
        self._check_params()

    def _check_params(self) -> None:
        """ART 1.20's checks; ``batch_size`` must also be an integer (ART fails later on a float)."""
        if not 0 < self.gamma <= 1:
            raise ValueError(f"The total perturbation percentage `gamma` must be between 0 and 1, got {self.gamma!r}.")
        if not isinstance(self.batch_size, int) or self.batch_size <= 0:
            raise ValueError(f"The batch size `batch_size` has to be a positive integer, got {self.batch_size!r}.")
        if not isinstance(self.verbose, bool):
            raise ValueError(f"The argument `verbose` has to be of type bool, got {self.verbose!r}.")

    def generate(self, x: np.ndarray, y: np.ndarray | None = None, **kwargs: object) -> np.ndarray:
        """Adversarial examples for ``x`` toward the targets ``y`` (random classes other than the prediction if None)."""
        self._path = estimator_path(self.estimator)
        device = self._path.device
        predictions = np.argmax(self.estimator.predict(x, batch_size=self.batch_size), axis=1)
        if y is None:
            targets = np.argmax(random_targets(predictions, self.estimator.nb_classes), axis=1)
        else:
            targets = np.argmax(check_and_transform_label_format(y, nb_classes=self.estimator.nb_classes), axis=1)
        out = np.asarray(x, dtype=np.float32).copy()
        for lo in tqdm(range(0, len(x), self.batch_size), desc="JSMA", disable=not self.verbose):
            hi = lo + self.batch_size
            out[lo:hi] = self._attack_batch(
                torch.as_tensor(out[lo:hi], device=device),
                torch.as_tensor(predictions[lo:hi], device=device),
                torch.as_tensor(targets[lo:hi], device=device),
            ).cpu().numpy()
        return out

    def _target_gradients(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        images = images.detach().requires_grad_(True)
        logits = self._path.logits(images)
        (grad,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), images)
        return grad.flatten(1)

    @torch.no_grad()
    def _predict(self, images: torch.Tensor) -> torch.Tensor:
        return self._path.logits(images).argmax(dim=1)

    def _attack_batch(self, batch: torch.Tensor, predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        shape = batch.shape
        flat = batch.flatten(1).clone()
        features = flat.shape[1]
        clip = self.estimator.clip_values
        increase = self.theta > 0
        bound: torch.Tensor | None = None  # the clip value each feature moves toward (scalars or per feature, as ART)
        if clip is not None:
            value = np.asarray(clip[1] if increase else clip[0], dtype=np.float32)
            bound = torch.as_tensor(np.broadcast_to(value, shape[1:]).reshape(-1).copy(), device=flat.device)
            search_space = flat < bound if increase else flat > bound
        else:
            search_space = torch.ones_like(flat, dtype=torch.bool)
        used = torch.zeros_like(flat, dtype=torch.bool)
        active = torch.nonzero(predictions != targets).flatten()
        while active.numel():
            grads = self._target_gradients(flat[active].view(-1, *shape[1:]), targets[active])
            grads[~search_space[active]] = -math.inf if increase else math.inf
            pair = torch.topk(grads if increase else -grads, 2, dim=1).indices
            rows = active[:, None].expand(-1, 2)
            used[rows, pair] = True
            updated = flat[rows, pair] + self.theta
            if bound is not None:
                flat[rows, pair] = torch.minimum(updated, bound[pair]) if increase else torch.maximum(updated, bound[pair])
                search_space &= flat != bound
            else:
                flat[rows, pair] = updated
            current = self._predict(flat.view(shape))
            active = torch.nonzero(
                (current != targets) & (used.sum(dim=1) / features <= self.gamma) & search_space.any(dim=1)
            ).flatten()
        return flat.view(shape)
