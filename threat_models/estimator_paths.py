"""How our attacks reach an ART classifier: one torch function ``x -> logits`` that autograd can differentiate.

- **Fast path**: an ART ``PyTorchClassifier`` whose preprocessing all runs in torch (none, ``preprocessing=(mean,
  std)``, PyTorch preprocessing defences): its module behind that preprocessing, in torch, on the classifier's
  device, with the gradients ART's own ``class_gradient`` takes (through each defence's ``forward``).
- **General path**: any other classifier with class gradients (scikit-learn, TensorFlow, a ``PyTorchClassifier``
  with numpy defences): its own ``predict`` and ``class_gradient`` behind a torch autograd function. Numpy round
  trips each step: slower, the same quantities ART's attacks use (what ``predict`` returns, and its gradients).

"Logits" here means what the classifier's ``predict`` returns, as in ART's C&W and JSMA.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from art.estimators.classification import PyTorchClassifier

from pdm_bench.features import LayerFeatures
from pdm_bench.models import ResNet


@dataclass(frozen=True)
class EstimatorPath:
    """``logits(x)``: the classifier's outputs for inputs ``x`` (a tensor on ``device``), differentiable in ``x``.

    On the fast path ``module`` is the torch module (after ``preprocess``); subclasses that need more than the
    logits (an embedding, for a detector's penalty) use it. On the general path it is None.
    """

    logits: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device
    module: torch.nn.Module | None = None
    preprocess: Callable[[torch.Tensor], torch.Tensor] = lambda x: x

    @property
    def fast(self) -> bool:
        return self.module is not None


def estimator_path(estimator: Any, *, frozen: bool = False) -> EstimatorPath:
    """The fast path where the estimator allows it, else the general one. ``frozen``: run a frozen copy of the
    module (:func:`frozen_copy`) instead of the module itself."""
    if isinstance(estimator, PyTorchClassifier) and estimator.all_framework_preprocessing:
        device = estimator.device
        module = estimator.model
        module.eval()
        if frozen:
            module = frozen_copy(module, device)
        operations = [op for op in estimator.preprocessing_operations if op.apply_predict]

        def preprocess(x: torch.Tensor) -> torch.Tensor:
            for operation in operations:  # as ART's class_gradient: each operation's forward, gradients through it
                x, _ = operation.forward(x, None)
            return x

        def logits(x: torch.Tensor) -> torch.Tensor:
            return module(preprocess(x))

        return EstimatorPath(logits, device, module, preprocess)
    return EstimatorPath(lambda x: _EstimatorFunction.apply(x, estimator), torch.device("cpu"))


def frozen_copy(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """A copy of ``model`` for an attack's inner loop: no weight gradients, BatchNorm folded into the convolutions
    (our ResNets) and, on the CPU, channels-last layout. The caller's model is left as it is; outputs agree to float
    rounding (the speed-up is in docs/PERFORMANCE.md)."""
    foldable = isinstance(model, (ResNet, LayerFeatures))  # a multi-layer detector's view folds the ResNet it wraps
    frozen = model.with_batch_norm_folded() if foldable else copy.deepcopy(model)
    frozen = frozen.eval().requires_grad_(False)
    return frozen.to(memory_format=torch.channels_last) if device.type == "cpu" else frozen


class _EstimatorFunction(torch.autograd.Function):
    """``estimator.predict`` forward; backward from ``estimator.class_gradient``, one call per class that the
    upstream gradient touches in some row (C&W: the label and the runner-up; JSMA: the target)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, estimator: Any) -> torch.Tensor:  # type: ignore[override]
        ctx.estimator = estimator
        ctx.save_for_backward(x)
        outputs = estimator.predict(x.detach().cpu().numpy().astype(np.float32), batch_size=max(1, len(x)))
        return torch.as_tensor(np.asarray(outputs), dtype=x.dtype)

    @staticmethod
    def backward(ctx: Any, upstream: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        images = x.detach().cpu().numpy().astype(np.float32)
        weights = upstream.detach().cpu().numpy()
        grad = np.zeros(images.shape, dtype=np.float64)
        rows = np.arange(len(images))
        remaining = weights != 0
        while remaining.any():  # each round: one class per row (the first still to do; rows with none add 0)
            labels = remaining.argmax(axis=1)
            with torch.enable_grad():  # a PyTorchClassifier's class_gradient runs autograd itself
                gradients = ctx.estimator.class_gradient(images, label=labels)[:, 0]
            scale = (weights[rows, labels] * remaining[rows, labels]).reshape((-1,) + (1,) * (images.ndim - 1))
            grad += scale * gradients
            remaining[rows, labels] = False
        return torch.as_tensor(grad, dtype=x.dtype), None
