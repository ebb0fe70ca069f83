"""ART's JSMA (``SaliencyMapMethod``), step for step, on torch tensors in one batch (an ART ``EvasionAttack``)."""

from __future__ import annotations

import math

import numpy as np
import torch
from art.attacks.attack import EvasionAttack
from art.estimators.classification import PyTorchClassifier
from art.utils import check_and_transform_label_format, random_targets
from tqdm.auto import tqdm

from pdm_bench.threat_models.attacks import torch_model


class SaliencyMapTorch(EvasionAttack):
    """ART's JSMA (``SaliencyMapMethod``), the same algorithm on torch tensors: always targeted."""

    attack_params = EvasionAttack.attack_params + ["theta", "gamma", "batch_size", "verbose"]
    _estimator_requirements = (PyTorchClassifier,)

    def __init__(self, classifier: PyTorchClassifier, *, theta: float = 0.1, gamma: float = 1.0,
                 batch_size: int = 128, verbose: bool = False) -> None:
        super().__init__(estimator=classifier)
        self._targeted = True
        self.theta = theta
        self.gamma = gamma
        self.batch_size = batch_size
        self.verbose = verbose
        self._check_params()

    def _check_params(self) -> None:
        if not 0 < self.gamma <= 1:
            raise ValueError(f"expected gamma in (0, 1], got {self.gamma!r}")
        if not isinstance(self.batch_size, int) or self.batch_size <= 0:
            raise ValueError(f"expected a positive integer batch_size, got {self.batch_size!r}")
        if self.theta == 0:
            raise ValueError("expected a non-zero theta, got 0")

    def generate(self, x: np.ndarray, y: np.ndarray | None = None, **kwargs: object) -> np.ndarray:
        """Adversarial examples for ``x`` toward the targets ``y`` (random classes other than the prediction if None)."""
        self._model = torch_model(self.estimator)
        device = self.estimator.device
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
        logits = self._model(images)
        (grad,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), images)
        return grad.flatten(1)

    @torch.no_grad()
    def _predict(self, images: torch.Tensor) -> torch.Tensor:
        return self._model(images).argmax(dim=1)

    def _attack_batch(self, batch: torch.Tensor, predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        shape = batch.shape
        flat = batch.flatten(1).clone()
        features = flat.shape[1]
        clip = self.estimator.clip_values
        increase = self.theta > 0
        if clip is not None:
            clip_value = float(clip[1] if increase else clip[0])
            search_space = flat < clip_value if increase else flat > clip_value
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
            if clip is not None:
                updated = torch.clamp(updated, max=clip_value) if increase else torch.clamp(updated, min=clip_value)
                flat[rows, pair] = updated
                search_space &= flat != clip_value
            else:
                flat[rows, pair] = updated
            current = self._predict(flat.view(shape))
            active = torch.nonzero(
                (current != targets) & (used.sum(dim=1) / features <= self.gamma) & search_space.any(dim=1)
            ).flatten()
        return flat.view(shape)
