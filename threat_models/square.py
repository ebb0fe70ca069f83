"""A gradient-free attack on the classifier and its detector together: ART's ``SquareAttack`` (Andriushchenko et al.
2020) on the model with "reject" as an extra class, the check that the gradient attacks are not fooled by masked
gradients."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from art.attacks.evasion import SquareAttack
from art.estimators.classification import PyTorchClassifier

from pdm_bench.seeding import seeded_global_rngs
from pdm_bench.threat_models.cw_kde import DensityScore


class WithReject(torch.nn.Module):
    """The model's logits and a class K, "reject", whose logit is the top logit plus the detector's shortfall below
    ``threshold`` (divided by ``scale``): the input is rejected exactly when its score under the predicted class is
    below the threshold."""

    def __init__(self, model: torch.nn.Module, detector: DensityScore, threshold: float, scale: float) -> None:
        super().__init__()
        self.model, self.detector, self.threshold, self.scale = model, detector, threshold, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embedding, raw = self.model.embed_and_logits(x)
        logits = raw * self.model.logit_sign
        top = logits.max(dim=1)
        reject = top.values + (self.threshold - self.detector.log_density(embedding, top.indices)) / self.scale
        return torch.cat([logits, reject.unsqueeze(1)], dim=1)


class SquareWithReject:
    """ART's ``SquareAttack`` against :class:`WithReject`: success is a class other than the true one and "reject";
    the loss it lowers is the larger of the true and the reject logit minus the best other one. Seeded."""

    def __init__(self, model: torch.nn.Module, detector: DensityScore, *, threshold: float, scale: float,
                 input_shape: tuple[int, ...], nb_classes: int, clip_values: tuple[float, float], norm: float | str,
                 eps: float, max_iter: int, restarts: int, batch_size: int, verbose: bool, seed: int,
                 device: torch.device) -> None:
        self.nb_classes, self.seed = nb_classes, seed
        combined = WithReject(model, detector, threshold, scale).eval()
        self.classifier = PyTorchClassifier(combined, loss=torch.nn.CrossEntropyLoss(), input_shape=input_shape,
                                            nb_classes=nb_classes + 1, clip_values=clip_values,
                                            device_type="gpu" if device.type == "cuda" else "cpu")
        self.attack = SquareAttack(self.classifier, norm=norm, eps=eps, max_iter=max_iter, nb_restarts=restarts,
                                   batch_size=batch_size, verbose=verbose, adv_criterion=self._evades, loss=self._loss)

    def _evades(self, outputs: np.ndarray, y: np.ndarray) -> np.ndarray:
        predicted = outputs.argmax(axis=1)
        return (predicted != y.argmax(axis=1)) & (predicted != self.nb_classes)

    def _loss(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        outputs = self.classifier.predict(x, batch_size=self.attack.batch_size)
        rows, true = np.arange(len(x)), y.argmax(axis=1)
        blocked = np.maximum(outputs[rows, true], outputs[:, self.nb_classes])
        others = outputs[:, : self.nb_classes].copy()
        others[rows, true] = -np.inf
        return blocked - others.max(axis=1)

    def generate(self, x: np.ndarray, y: np.ndarray, **_: Any) -> np.ndarray:
        """Adversarial examples for ``x`` with true labels ``y`` (indices); numpy's and Python's global generators
        (ART's L2 Square draws from both) are seeded for the call and restored after it."""
        one_hot = np.eye(self.nb_classes + 1, dtype=np.float32)[np.asarray(y)]
        with seeded_global_rngs(self.seed):
            return self.attack.generate(x.astype(np.float32), y=one_hot)
