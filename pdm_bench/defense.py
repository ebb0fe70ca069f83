"""The defense contract: a frozen dataclass whose fields are its options and whose :meth:`loss` trains a model.
Plugins import it as ``pdm_bench.defenses.base`` (the same names).

A subclass implements one method, ``loss``. Class attributes say how it predicts (``negate_logits``) and
describe it; dataclass fields (keyword-only, typed, with defaults) are its options, settable from the CLI
with ``--defense-option NAME=VALUE`` and part of the cached model's key.
"""

from __future__ import annotations

import math

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from pdm_bench.models import ModelSpec, build_model
from pdm_bench.options import build_options


class ClassGroups(NamedTuple):
    """Training indices grouped by class: ``order[starts[c] : starts[c] + sizes[c]]`` are class c's."""

    order: torch.Tensor
    starts: torch.Tensor
    sizes: torch.Tensor

    @classmethod
    def of(cls, labels: torch.Tensor, num_classes: int) -> "ClassGroups":
        sizes = torch.bincount(labels, minlength=num_classes)
        if (sizes == 0).any():
            missing = torch.nonzero(sizes == 0).flatten().tolist()
            raise ValueError(f"expected every class in the training labels, got none of classes {missing}")
        starts = torch.cumsum(sizes, 0) - sizes
        return cls(torch.argsort(labels, stable=True), starts, sizes)


@dataclass(frozen=True)
class TrainContext:
    """What a loss may need besides the batch: the whole training set (on the CPU) and a seeded generator."""

    num_classes: int
    train_x: torch.Tensor
    train_y: torch.Tensor
    generator: torch.Generator

    @cached_property
    def class_groups(self) -> ClassGroups:
        """Training indices grouped by class (for partners drawn from the whole set)."""
        return ClassGroups.of(self.train_y, self.num_classes)


LossTerms = Mapping[str, torch.Tensor]


@dataclass(frozen=True, kw_only=True)
class Defense(ABC):
    """Base class of every defense (built-in or plugin)."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    negate_logits: ClassVar[bool] = False  # True: the classifier predicts with -z (reverse cross-entropy)
    default_epochs: ClassVar[int | None] = None  # None: the preset's; e.g. 0 for a pretrained model used as it is
    # Option defaults for one preset on one data-set family, e.g. {("quick", "cifar10"): {"rvl_weight": 0.01}}: a
    # measured deviation (say why in docs/RESULTS.md); an option the user sets wins.
    preset_defaults: ClassVar[Mapping[tuple[str, str], Mapping[str, Any]]] = {}

    @abstractmethod
    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, context: TrainContext) -> torch.Tensor | LossTerms:
        """The training loss of one batch: a scalar, or named (already weighted) terms whose sum is minimised.

        ``model.embed_and_logits(x)`` returns the embedding and the raw logits (before the sign RCE models flip).
        """

    def build_model(self, spec: ModelSpec) -> nn.Module:
        """The network to train (seeded by the caller): our ResNet by default. Override it to bring your own
        architecture (any module with the model contract: ``pdm_bench.contract.wrap`` makes one) or to load
        pretrained weights (make the weights' file or its hash an option: options key the cache)."""
        return build_model(spec, negate_logits=self.negate_logits)

    def options(self) -> dict[str, Any]:
        """The option values, as part of the cache key and the report."""
        return dataclasses.asdict(self)

    @classmethod
    def from_options(cls, raw: Mapping[str, str], *, preset: str | None = None, family: str | None = None) -> "Defense":
        """Build from ``NAME=VALUE`` strings, converting each to its field's type; where ``raw`` does not set an
        option, ``preset_defaults`` for (``preset``, ``family``) does."""
        defaults = {name: str(value) for name, value in cls.preset_defaults.get((preset or "", family or ""), {}).items()}
        return build_options(cls, {**defaults, **raw}, owner=f"defense '{cls.name}'")


def check_non_negative(owner: object, *names: str) -> None:
    """Raise ``ValueError`` naming the first option that is negative, infinite or NaN."""
    for name in names:
        value = getattr(owner, name)
        if not 0 <= value < math.inf:
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")


def check_loss_weights(owner: object, *names: str) -> None:
    """Loss weights: each finite and >= 0, and not all 0 (a loss of 0 trains nothing)."""
    check_non_negative(owner, *names)
    if all(getattr(owner, name) == 0 for name in names):
        raise ValueError(f"{', '.join(names)} are all 0: the loss would be 0 and train nothing; give one a positive "
                         "weight")


def terms_total(terms: torch.Tensor | LossTerms) -> tuple[torch.Tensor, dict[str, float]]:
    """The scalar to minimise and a float view of the terms for logging."""
    if isinstance(terms, torch.Tensor):
        if terms.ndim != 0:
            raise ValueError(f"expected a scalar loss, got a tensor of shape {tuple(terms.shape)}")
        return terms, {"loss": float(terms.detach())}
    if not isinstance(terms, Mapping) or not terms:
        raise ValueError(f"expected a scalar tensor or a non-empty mapping of named terms, got {type(terms).__name__}")
    for name, value in terms.items():
        if not isinstance(value, torch.Tensor) or value.ndim != 0:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"expected the term {name!r} to be a scalar tensor, got {shape}")
    total = sum(terms.values())
    assert isinstance(total, torch.Tensor)
    return total, {name: float(value.detach()) for name, value in terms.items()}
