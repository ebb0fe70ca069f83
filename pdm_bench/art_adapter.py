"""The one module that builds ART objects: a trained defense as an ART ``PyTorchClassifier``."""

from __future__ import annotations

import numpy as np
import torch
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
