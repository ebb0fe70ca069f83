"""The one module that builds ART objects: a trained defense as an ART ``PyTorchClassifier``."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import torch
from art.attacks.attack import EvasionAttack
from art.attacks.evasion import BasicIterativeMethod, CarliniL2Method, FastGradientMethod, SaliencyMapMethod
from art.estimators.classification import PyTorchClassifier

from pdm_bench.models import ResNet

EMBEDDING_LAYER = "embedding"


def to_art_classifier(
    model: ResNet,
    *,
    input_shape: tuple[int, int, int],
    nb_classes: int,
    device: torch.device,
) -> PyTorchClassifier:
    """Wrap ``model`` (which returns the logits it predicts with, -z for RCE models) for ART.

    ``clip_values=(0, 1)`` because every dataset's pixels lie in [0, 1]. The loss is cross-entropy on those
    logits, which is what gradient attacks (FGSM, BIM) ascend.
    """
    if not isinstance(model, torch.nn.Module) or not hasattr(model, EMBEDDING_LAYER):
        raise TypeError(f"expected a model with a top-level '{EMBEDDING_LAYER}' module, got {type(model).__name__}")
    model.eval()
    return PyTorchClassifier(
        model=model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=input_shape,
        nb_classes=nb_classes,
        clip_values=(0.0, 1.0),
        device_type="gpu" if device.type == "cuda" else "cpu",
    )


def art_embeddings(classifier: PyTorchClassifier, x: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """The pre-logits embedding of ``x`` as ART returns it, by layer name (never by index: see REFERENCE.md)."""
    return np.asarray(classifier.get_activations(x, EMBEDDING_LAYER, batch_size=batch_size, framework=False))


class AttackBackend(str, Enum):
    """``torch``: our batched ports where ART's are slow or weak (C&W, JSMA); ``art``: ART's originals."""

    TORCH = "torch"
    ART = "art"


@dataclass(frozen=True, kw_only=True)
class AttackSpec:
    """An attack as data: its family and parameters (Appendix C of the paper)."""

    name: str
    family: str  # fgsm, bim, cw, jsma
    params: dict[str, Any] = field(default_factory=dict)


def build_attack(spec: AttackSpec, classifier: PyTorchClassifier, *, backend: AttackBackend, targeted: bool,
                 batch_size: int = 128) -> EvasionAttack:
    """An ART ``EvasionAttack`` for ``spec`` against ``classifier``."""
    p = spec.params
    if spec.family == "fgsm":
        return FastGradientMethod(classifier, norm=np.inf, eps=p["eps"], targeted=targeted, batch_size=batch_size)
    if spec.family == "bim":
        return BasicIterativeMethod(classifier, eps=p["eps"], eps_step=p["eps"] / 10, max_iter=p.get("max_iter", 10),
                                    targeted=targeted, batch_size=batch_size, verbose=False)
    if spec.family == "cw":
        if backend is AttackBackend.ART:
            return CarliniL2Method(classifier, confidence=p["confidence"], targeted=targeted,
                                   binary_search_steps=p["binary_search_steps"], max_iter=p["max_iter"],
                                   batch_size=batch_size, verbose=False)
        from pdm_bench.threat_models.attacks import CarliniWagnerL2

        return CarliniWagnerL2(classifier, confidence=p["confidence"], targeted=targeted,
                               binary_search_steps=p["binary_search_steps"], max_iter=p["max_iter"], batch_size=batch_size)
    if spec.family == "jsma":  # always targeted (random targets when none are given), as in ART
        if backend is AttackBackend.ART:
            return SaliencyMapMethod(classifier, theta=p["theta"], gamma=p["gamma"], batch_size=batch_size, verbose=False)
        from pdm_bench.threat_models.attacks import SaliencyMapTorch

        return SaliencyMapTorch(classifier, theta=p["theta"], gamma=p["gamma"], batch_size=batch_size)
    raise ValueError(f"expected an attack family fgsm, bim, cw or jsma, got {spec.family!r}")
